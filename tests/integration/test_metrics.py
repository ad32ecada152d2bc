"""Prometheus metrics of the running stack: one VM provisioned moves the orchestrator's operation
counters, the scheduler's placement histogram and the API's fleet gauges by exactly one; its
deletion leaves no stale series; every service answers on the port the stack gave it."""

from __future__ import annotations

import uuid

import pytest

from tests.integration.metrics_scrape import (
    scrape,
    scrape_api,
    scrape_host_worker,
    scrape_schedulers,
    total,
    value,
)

TENANT = "metrics-it"

def test_one_vm_moves_each_count_by_exactly_one(stack_cfg, api, tenant_client):
    member = tenant_client(TENANT, "member")
    fleet, operations, placements = scrape_api(api), scrape(stack_cfg, "orchestrator"), scrape_schedulers(stack_cfg)

    accepted = member.create_vm(f"metrics-{uuid.uuid4().hex[:6]}", 1, 128, 1, "lab-guest")
    vm_id = accepted["vm"]["id"]
    try:
        assert member.wait_operation(accepted["operation_id"], timeout_s=240)["state"] == "succeeded"
        host_id = member.call("GET", f"/v1/vms/{vm_id}")["host_id"]

        fleet_after = scrape_api(api)
        operations_after = scrape(stack_cfg, "orchestrator")
        placements_after = scrape_schedulers(stack_cfg)
        for name in ("vmflow_operations_started_total", "vmflow_operations_succeeded_total"):
            assert value(operations_after, name, kind="ProvisionVm") == value(operations, name, kind="ProvisionVm") + 1
        assert value(operations_after, "vmflow_operations_failed_total", kind="ProvisionVm") == value(
            operations, "vmflow_operations_failed_total", kind="ProvisionVm")
        duration = ("vmflow_operation_duration_seconds_count", {"kind": "ProvisionVm", "outcome": "succeeded"})
        assert value(operations_after, duration[0], **duration[1]) == value(operations, duration[0], **duration[1]) + 1
        assert total(placements_after, "vmflow_placement_duration_seconds_count", outcome="placed") == total(
            placements, "vmflow_placement_duration_seconds_count", outcome="placed") + 1
        assert value(fleet_after, "vmflow_vms", state="running", tenant=TENANT) == value(
            fleet, "vmflow_vms", state="running", tenant=TENANT) + 1
        allocated = ("vmflow_host_allocated_memory_bytes", {"host": host_id})
        assert value(fleet_after, allocated[0], **allocated[1]) >= value(fleet, allocated[0], **allocated[1]) + 128 * 2**20
        assert value(fleet_after, "vmflow_hosts", state="up") == stack_cfg.host_count
        assert value(fleet_after, "vmflow_scheduler_reachable") == 1
        for host in stack_cfg.host_ids():
            assert value(fleet_after, "vmflow_host_capacity_vcpus", host=host) >= 1
    finally:
        member.wait_operation(member.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"], timeout_s=120)

    # The tenant has no VM left: its series are gone, not stuck at their last value.
    gone = scrape_api(api)
    assert not [key for key in gone if key[0] == "vmflow_vms" and ("tenant", TENANT) in key[1]]


def test_a_tenant_reads_only_its_own_vms_series(api, tenant_client):
    member = tenant_client(TENANT, "member")
    accepted = member.create_vm(f"metrics-own-{uuid.uuid4().hex[:6]}", 1, 96, 1, "lab-guest")
    try:
        assert member.wait_operation(accepted["operation_id"], timeout_s=240)["state"] == "succeeded"
        own = scrape_api(tenant_client(TENANT, "reader"))
        fleet = scrape_api(api)
    finally:
        member.wait_operation(member.call("DELETE", f"/v1/vms/{accepted['vm']['id']}")["operation_id"], timeout_s=120)
    assert value(own, "vmflow_vms", state="running", tenant=TENANT) == value(
        fleet, "vmflow_vms", state="running", tenant=TENANT) >= 1
    # Nothing of the fleet's (hosts, the processes' own figures) nor of another tenant.
    assert own and all(name == "vmflow_vms" and dict(labels)["tenant"] == TENANT for name, labels in own)
    assert any(name.startswith("vmflow_host") for name, _ in fleet)


@pytest.mark.parametrize("process", ["scheduler", "storage", "orchestrator", "fencer"])
def test_every_service_serves_its_metrics(stack_cfg, process):
    samples = scrape(stack_cfg, process)
    assert ("vmflow_nats_reconnects_total", ()) in samples
    assert ("vmflow_temporal_reconnects_total", ()) in samples


def test_a_host_worker_serves_its_metrics_inside_its_namespace(stack_cfg):
    samples = scrape_host_worker(stack_cfg, stack_cfg.host_ids()[0])
    assert value(samples, "vmflow_temporal_connected") == 1
    assert ("vmflow_migration_downtime_seconds_count", ()) in samples


def test_a_live_migration_is_timed_by_its_source_host(stack_cfg, api, tenant_client):
    member = tenant_client(TENANT, "member")
    accepted = member.create_vm(f"metrics-mig-{uuid.uuid4().hex[:6]}", 1, 128, 1, "lab-guest")
    vm_id = accepted["vm"]["id"]
    try:
        assert member.wait_operation(accepted["operation_id"], timeout_s=240)["state"] == "succeeded"
        source = member.call("GET", f"/v1/vms/{vm_id}")["host_id"]
        before = scrape_host_worker(stack_cfg, source)
        op = api.wait_operation(api.call("POST", f"/v1/vms/{vm_id}/migrate", json={})["operation_id"], timeout_s=240)
        assert op["state"] == "succeeded", op
        after = scrape_host_worker(stack_cfg, source)
        count = "vmflow_migration_duration_seconds_count"
        assert value(after, count, mode="live") == value(before, count, mode="live") + 1
        took_s = value(after, "vmflow_migration_duration_seconds_sum", mode="live") - value(
            before, "vmflow_migration_duration_seconds_sum", mode="live")
        assert 0 < took_s < 240
        assert value(after, "vmflow_migration_downtime_seconds_count") == value(
            before, "vmflow_migration_downtime_seconds_count") + 1
    finally:
        member.wait_operation(member.call("DELETE", f"/v1/vms/{vm_id}")["operation_id"], timeout_s=120)
