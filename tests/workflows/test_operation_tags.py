"""Operations are found in Temporal's visibility by what they touched: a failover started the
way the scheduler starts it is found by its host, and the restarts it starts as children by
their VM, their tenant and both hosts (the target added by the child once placement picked it);
each carries its summary. Registration is idempotent."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecution

from shared.names import ORCHESTRATOR_QUEUE
from shared.operation_tags import (
    HOST_IDS,
    KIND,
    SUMMARY_MEMO,
    TENANT,
    VM_ID,
    operation_summary,
    tagged,
)
from shared.temporal import ensure_search_attributes
from tests.workflows.test_failover_workflows import (
    World,
    failover,
    start_workers,
    stop_workers,
    summary,
)
from workflows.failover import HostFailover

VISIBLE_WITHIN_S = 10.0


async def visible(client: Client, query: str, count: int = 1) -> list[WorkflowExecution]:
    """The workflows ``query`` finds, once it finds ``count`` (visibility lags a little)."""
    found: list[WorkflowExecution] = []
    deadline = asyncio.get_running_loop().time() + VISIBLE_WITHIN_S
    while asyncio.get_running_loop().time() < deadline:
        found = [ex async for ex in client.list_workflows(query)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{query!r} found {len(found)} workflow(s), expected {count}")


async def test_a_failover_and_its_restarts_are_found_by_host_vm_and_tenant(env):
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    web = replace(summary("web"), tenant=tenant)
    world = World([web])
    failover_id = f"host-h1-failover-{uuid.uuid4().hex}"
    workers = await start_workers(env, world)
    try:
        await env.client.execute_workflow(
            HostFailover.run, failover(), id=failover_id, task_queue=ORCHESTRATOR_QUEUE,
            execution_timeout=timedelta(seconds=60),
            **tagged("HostFailover", operation_summary("failover of", "h1"), host_ids=("h1",)))
    finally:
        await stop_workers(workers)

    [found] = await visible(env.client, f"WorkflowId = '{failover_id}' AND VmflowHostIds = 'h1'")
    assert found.typed_search_attributes.get(KIND) == "HostFailover"
    assert await found.memo_value(SUMMARY_MEMO) == "failover of h1"
    described = await env.client.get_workflow_handle(failover_id).describe()
    assert await described.static_summary() == "failover of h1"

    [restart] = await visible(env.client, f"VmflowVmId = '{web.vm_id}' AND VmflowHostIds = 'h2'")
    tags = restart.typed_search_attributes
    assert (restart.workflow_type, tags.get(KIND), tags.get(TENANT)) == ("RestartVm", "RestartVm", tenant)
    assert tags.get(HOST_IDS) == ["h1", "h2"]  # the failed host, then where it restarted
    assert tags.get(VM_ID) == web.vm_id and restart.parent_id == failover_id
    [same] = await visible(env.client, f"VmflowTenant = '{tenant}'")
    assert same.id == restart.id
    assert await same.memo_value(SUMMARY_MEMO) == f"restart web off failed host h1 for {tenant}"


async def test_registering_the_search_attributes_again_changes_nothing(env):
    await ensure_search_attributes(env.client, env.client.namespace)
    await ensure_search_attributes(env.client, env.client.namespace)
    listed = await env.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=env.client.namespace))
    assert {name: listed.custom_attributes[name] for name in ("VmflowVmId", "VmflowHostIds", "VmflowTenant",
                                                              "VmflowKind")} == {
        "VmflowVmId": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "VmflowHostIds": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
        "VmflowTenant": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "VmflowKind": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    }
