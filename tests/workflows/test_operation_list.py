"""GET /v1/operations against the real dev server's visibility: operations started with their
tags (on a queue no worker serves, so they stay as started unless ended here) are listed by VM,
host, kind and state, newest first, with their summary and (for admins) UI link; a tenant's
caller sees its own tenant's only, by the same rule as for one operation."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
from fastapi import Response
from temporalio.client import Client

from services.api.db import Inventory, make_engine, migrate
from services.api.models import Vm
from services.api.routes.operations import list_operations
from services.api.settings import ApiSettings
from shared.auth import Principal, Role
from shared.errors import InvalidRequest
from shared.names import operation_memo
from shared.operation_tags import operation_summary, tagged

IDLE_QUEUE = "operation-list-test"  # no worker: what starts here stays running
VISIBLE_WITHIN_S = 10.0


@dataclass
class ListingPlatform:
    """What the list route uses of the API's platform."""

    temporal: Client
    settings: ApiSettings
    inventory: Inventory


async def listed(p: ListingPlatform, who: Principal, count: int, **filters) -> list[dict]:
    """The route's answer once it has ``count`` items (visibility lags a little)."""
    items: list = []
    deadline = asyncio.get_running_loop().time() + VISIBLE_WITHIN_S
    while asyncio.get_running_loop().time() < deadline:
        items = await list_operations(Response(), **{"vm_id": None, "host_id": None, "tenant": None, "kind": None,
                                                     "state": None, "limit": 50, "page_token": None, **filters},
                                      p=p, who=who)
        if len(items) >= count:
            break
        await asyncio.sleep(0.2)
    return [item.model_dump() for item in items]


async def test_operations_are_listed_by_what_they_touched(env, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'inv.db'}")
    migrate(engine)
    tenant, host = f"t{uuid.uuid4().hex[:8]}", f"h-{uuid.uuid4().hex[:6]}"
    inventory = Inventory(engine)
    web = inventory.add(Vm(name="web-1", vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant=tenant))
    gone = str(uuid.uuid4())  # a VM no longer in the inventory
    p = ListingPlatform(env.client, ApiSettings(temporal_ui_url="http://ui.example:8233"), inventory)
    admin = Principal("a", "admin", "fleet", Role.ADMIN)
    reader = Principal("r", "reader", tenant, Role.READER)

    async def start(workflow_id: str, kind: str, summary: str, **tags) -> None:
        await env.client.start_workflow(kind, id=workflow_id, task_queue=IDLE_QUEUE,
                                        **tagged(kind, summary, **tags))

    migrate_id = f"vm-{web.id}-migrate-{uuid.uuid4().hex[:8]}"
    await start(f"vm-{web.id}-provision", "ProvisionVm", operation_summary("provision", "web-1", tenant=tenant),
                vm_id=web.id, tenant=tenant, host_ids=(host,), memo=operation_memo(tenant, False))
    await start(migrate_id, "LiveMigrate", operation_summary("live-migrate", "web-1", f"{host} -> h9"),
                vm_id=web.id, tenant=tenant, host_ids=(host, "h9"))  # the fleet's, on the tenant's VM
    await start(f"vm-{gone}-recover-x", "RestartVm", "restart", vm_id=gone, tenant=tenant, host_ids=(host,))
    await start(f"host-{host}-maintenance", "HostMaintenance", f"maintenance of {host}", host_ids=(host,))
    await env.client.get_workflow_handle(f"vm-{web.id}-provision").terminate("test")

    everything = await listed(p, admin, 4, host_id=host)
    assert [op["kind"] for op in everything] == ["HostMaintenance", "RestartVm", "LiveMigrate", "ProvisionVm"]
    move = everything[2]
    assert move == {
        "id": migrate_id, "kind": "LiveMigrate", "state": "running", "done": False, "vm_id": web.id,
        "host_ids": [host, "h9"], "tenant": tenant, "summary": f"live-migrate web-1 {host} -> h9",
        "started_at": move["started_at"], "closed_at": None,
        "temporal_url": f"http://ui.example:8233/namespaces/default/workflows/{migrate_id}",
        "cancellable": True,  # an admin cancels anything running
    }
    assert (everything[0]["tenant"], everything[0]["vm_id"]) == (None, None)  # the fleet's

    assert [op["kind"] for op in await listed(p, admin, 1, host_id="h9")] == ["LiveMigrate"]
    [ended] = await listed(p, admin, 1, vm_id=web.id, state="terminated")
    assert (ended["kind"], ended["done"], ended["summary"]) == ("ProvisionVm", True, f"provision web-1 for {tenant}")
    assert [op["id"] for op in await listed(p, admin, 1, host_id=host, kind="HostMaintenance")] == [
        f"host-{host}-maintenance"]

    # The tenant sees what is its own: its VM's operations, not the fleet's, not a gone VM's.
    own = await listed(p, reader, 2, host_id=host)
    assert [op["kind"] for op in own] == ["LiveMigrate", "ProvisionVm"]
    assert [op["temporal_url"] for op in own] == [None, None]  # the UI is the operators'
    assert await listed(p, reader, 0, tenant="other-tenant") == []
    assert [op["cancellable"] for op in own] == [False, False]  # a reader cancels nothing

    # A member may cancel what its tenant started itself, not the fleet's move of its VM.
    stop_id = f"vm-{web.id}-stop-{uuid.uuid4().hex[:8]}"
    await start(stop_id, "VmPowerAction", "stop web-1", vm_id=web.id, tenant=tenant, memo=operation_memo(tenant, False))
    member = Principal("m", "member", tenant, Role.MEMBER)
    running = {op["id"]: op["cancellable"] for op in await listed(p, member, 2, vm_id=web.id, state="running")}
    assert running == {stop_id: True, migrate_id: False}

    # Page by page: every one of the host's operations once, the last page naming no next one.
    pages, token = [], None
    while True:
        answer = Response()
        page = await list_operations(answer, host_id=host, tenant=None, vm_id=None, kind=None, state=None,
                                     limit=2, page_token=token, p=p, who=admin)
        pages.append([op.id for op in page])
        token = answer.headers.get("x-next-page-token")
        if token is None:
            break
    ids = sum(pages, [])
    assert len(pages[0]) == 2 and len(ids) == len(set(ids)) == 4
    with pytest.raises(InvalidRequest):
        await list_operations(Response(), host_id=host, tenant=None, vm_id=None, kind=None, state=None, limit=2,
                              page_token="not%base64", p=p, who=admin)
    engine.dispose()
