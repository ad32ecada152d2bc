"""Two API processes on one PostgreSQL inventory, as the design runs N replicas: what one
replica accepts, the other sees at once; two creates of one name, one at each replica, make one
VM; a burst of creates spread over both never takes a tenant past its quota.

Runs on a stack whose inventory is PostgreSQL:

    VMFLOW_TEST_DATABASE=postgres .venv/bin/pytest -q tests/integration/test_postgres.py
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import pytest

from deploy import stack
from deploy.client import ApiError, VmflowClient
from tests.integration.cleanup import delete_all

pytestmark = pytest.mark.integration

REPLICA_INDEX = 2  # the second API process: api-2


@pytest.fixture(scope="module")
def replica_url(stack_cfg) -> str:
    """Where the second API process answers: same PostgreSQL, NATS and Temporal as the first."""
    if stack_cfg.database != "postgres":
        pytest.skip("the test stack's inventory is SQLite, which serves one API process: "
                    "run with VMFLOW_TEST_DATABASE=postgres")
    return stack.start_api_replica(stack_cfg, REPLICA_INDEX)


@pytest.fixture
def member_of(stack_cfg, tenant_client, replica_url):
    """``member_of(quota=None)``: a new tenant's member, as a client of each replica (same token)."""
    opened: list[VmflowClient] = []

    def make(quota: dict | None = None) -> tuple[VmflowClient, VmflowClient]:
        first = tenant_client(f"pg-{uuid.uuid4().hex[:8]}", "member", quota)
        second = VmflowClient(replica_url, first.token, timeout_s=120)
        opened.append(second)
        return first, second

    yield make
    for client in opened:
        client.close()


def _together(calls: list[Callable[[], object]]) -> list[object]:
    """Each call in a thread of its own, let go at once: (status, body) of each, 202 or the
    refusal's status with its error code and message."""
    start = threading.Barrier(len(calls))
    answers: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        start.wait()
        try:
            answers[i] = (202, calls[i]())
        except ApiError as exc:
            answers[i] = (exc.status, {"code": exc.code, "message": exc.message})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def _create(client: VmflowClient, name: str) -> Callable[[], dict]:
    return lambda: client.call("POST", "/v1/vms", json={
        "name": name, "vcpus": 1, "memory_mib": 96, "disk_gib": 1, "image": "lab-guest"})


def test_what_one_replica_accepts_the_other_sees(member_of, cleanup):
    first, second = member_of()
    assert first.base_url != second.base_url
    assert second.call("GET", "/v1/whoami") == first.call("GET", "/v1/whoami")
    accepted = first.call("POST", "/v1/vms", json={
        "name": "seen", "vcpus": 1, "memory_mib": 96, "disk_gib": 1, "image": "lab-guest"})
    cleanup.append(accepted["vm"]["id"])
    assert second.call("GET", f"/v1/vms/{accepted['vm']['id']}")["name"] == "seen"
    op = second.wait_operation(accepted["operation_id"], timeout_s=300, interval_s=0.5)
    assert op["state"] == "succeeded", op


def test_one_name_created_at_both_replicas_at_once_makes_one_vm(member_of, cleanup):
    first, second = member_of()
    for round_ in range(3):
        name = f"twin-{round_}"
        answers = _together([_create(first, name), _create(second, name)])
        accepted = [body for status, body in answers if status == 202]
        refused = [(status, body) for status, body in answers if status != 202]
        cleanup.extend(a["vm"]["id"] for a in accepted)
        assert len(accepted) == 1 and len(refused) == 1, answers
        [(status, body)] = refused
        assert status == 409 and body["code"] == "conflict" and f"'{name}' already exists" in body["message"], body
    names = [vm["name"] for vm in second.call("GET", "/v1/vms")]
    assert sorted(names) == ["twin-0", "twin-1", "twin-2"]


def test_a_burst_spread_over_both_replicas_never_overshoots_the_quota(api, member_of):
    fits = 3
    first, second = member_of({"vms": fits})
    tenant = first.call("GET", "/v1/whoami")["tenant"]
    replicas = (first, second)
    answers = _together([_create(replicas[i % 2], f"q-{i}") for i in range(4 * fits)])
    accepted = [body for status, body in answers if status == 202]
    refused = [(status, body) for status, body in answers if status != 202]
    try:
        assert len(accepted) == fits, refused[:3]
        assert all(status == 409 and body["code"] == "quota_exceeded" and "vms: asked 1" in body["message"]
                   for status, body in refused), refused[:3]
        ops = [first.wait_operation(a["operation_id"], timeout_s=600, interval_s=1.0) for a in accepted]
        assert [op["state"] for op in ops] == ["succeeded"] * fits
        usage = api.call("GET", f"/v1/tenants/{tenant}/quota")["resources"]["vms"]
        assert (usage["used"], usage["reserved"], usage["available"]) == (fits, 0, 0), usage
    finally:
        delete_all(second, [a["vm"]["id"] for a in accepted])
    after = api.call("GET", f"/v1/tenants/{tenant}/quota")["resources"]
    assert all(r["used"] == 0 and r["reserved"] == 0 for r in after.values()), after
