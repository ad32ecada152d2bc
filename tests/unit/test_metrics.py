"""Prometheus metrics: names and labels by the conventions, what each recorder moves, the fleet
gauges of the API's /metrics (on a real SQLite inventory, stale series dropped, admin only), the
Temporal watcher's reconnect count, placement timing and failure-detection time."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import asdict
from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from deploy import stack
from services.api.db import Inventory
from services.api.errors import install_error_handlers
from services.api.identity_store import IdentityStore
from services.api.models import Vm
from services.api.policy import authorize
from services.api.routes import metrics as metrics_route
from services.api.tenancy_models import TokenCreate
from services.scheduler.claim_store import Placer
from services.scheduler.monitor import LivenessMonitor
from services.scheduler.service import timed_place
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Scheduler
from shared import metrics
from shared.auth import Role
from shared.errors import NoValidHost, ServiceUnavailable
from shared.models import (
    HostHeartbeat,
    HostList,
    HostView,
    PeerReach,
    PlacementRequest,
    VmState,
)
from shared.temporal import watch_temporal
from tests.unit.claim_memory import MemoryClaimStore

QUICK_ARGON2 = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8 * 1024),))
MIB = 1024 * 1024
ID_LABELS = {"vm", "vm_id", "id", "op", "op_id", "operation_id", "workflow_id", "run_id", "token", "user"}


def sample(name: str, registry=REGISTRY, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _defined() -> list:
    return [value for value in vars(metrics).values() if hasattr(value, "_name") and hasattr(value, "_type")]


# -- names and labels ------------------------------------------------------------------------------


def test_every_metric_is_named_and_labelled_by_the_conventions():
    defined = _defined()
    assert len(defined) >= 20
    exposition = generate_latest(REGISTRY).decode()
    for metric in defined:
        name = metric._name
        assert name.startswith("vmflow_"), name
        assert not set(metric._labelnames) & ID_LABELS, f"{name} has an id as a label: {metric._labelnames}"
        if isinstance(metric, Histogram):
            assert name.endswith(("_seconds", "_bytes")), f"histogram {name} needs a unit suffix"
        if isinstance(metric, Counter):
            assert f"# TYPE {name}_total counter" in exposition, name


def test_the_fleet_gauges_are_only_in_the_fleet_registry():
    exported = {family.name for family in REGISTRY.collect()}
    fleet = {family.name for family in metrics.FLEET.collect()}
    assert {"vmflow_vms", "vmflow_hosts", "vmflow_host_capacity_memory_bytes"} <= fleet
    assert not fleet & exported


def test_serve_metrics_serves_nothing_without_a_port():
    assert metrics.serve_metrics("127.0.0.1", 0) is False


# -- operations ------------------------------------------------------------------------------------


def test_an_operation_end_counts_its_outcome_and_observes_its_duration():
    before = sample("vmflow_operations_failed_total", kind="DeleteVm")
    durations = sample("vmflow_operation_duration_seconds_count", kind="DeleteVm", outcome="failed")
    metrics.operation_finished("DeleteVm", metrics.Outcome.FAILED, 3.5)
    assert sample("vmflow_operations_failed_total", kind="DeleteVm") == before + 1
    assert sample("vmflow_operation_duration_seconds_count", kind="DeleteVm", outcome="failed") == durations + 1
    assert sample("vmflow_operation_duration_seconds_bucket", kind="DeleteVm", outcome="failed", le="5.0") >= 1


def test_only_a_successful_failover_is_a_recovery():
    recoveries = sample("vmflow_failover_recovery_seconds_count")
    metrics.operation_finished("HostFailover", metrics.Outcome.FAILED, 40.0)
    metrics.operation_finished("RestartVm", metrics.Outcome.SUCCEEDED, 4.0)
    assert sample("vmflow_failover_recovery_seconds_count") == recoveries
    metrics.operation_finished("HostFailover", metrics.Outcome.SUCCEEDED, 42.0)
    assert sample("vmflow_failover_recovery_seconds_count") == recoveries + 1


# -- the API's /metrics ----------------------------------------------------------------------------


def _host(host_id: str, state: str = "up") -> HostView:
    return HostView(host_id=host_id, state=state, domain_type="qemu", vcpus_total=8, memory_mib_total=4096,
                    disk_gib_total=100, vcpus_used=3, memory_mib_used=1024, disk_gib_used=10, domain_count=2,
                    last_heartbeat_at_s=0.0, last_heartbeat_age_s=0.5)


class FakeScheduler:
    """The scheduler's host listing, in pages of two, or unreachable."""

    def __init__(self, hosts: list[HostView]) -> None:
        self.hosts_known = hosts
        self.reachable = True

    async def hosts(self, offset: int = 0, limit: int = 500) -> HostList:
        if not self.reachable:
            raise ServiceUnavailable("no service answers on vmflow.scheduler.hosts")
        page = self.hosts_known[offset: offset + min(limit, 2)]
        return HostList(tuple(page), total=len(self.hosts_known))


@pytest.fixture
def fleet(engine):
    identities = IdentityStore(engine, cache_s=60, hasher=QUICK_ARGON2)
    inventory = Inventory(engine)
    scheduler = FakeScheduler([_host("h1"), _host("h2"), _host("h3", "fenced")])
    app = FastAPI(dependencies=[Depends(authorize)])
    install_error_handlers(app)
    app.include_router(metrics_route.router)
    app.state.platform = SimpleNamespace(identities=identities, inventory=inventory, scheduler=scheduler)
    tokens = {role: identities.issue(None, TokenCreate(role=role))[2] for role in (Role.ADMIN, Role.MEMBER)}
    return SimpleNamespace(client=TestClient(app), inventory=inventory, scheduler=scheduler, tokens=tokens)


def _scrape(fleet, role: Role = Role.ADMIN) -> dict[tuple[str, tuple], float]:
    response = fleet.client.get("/metrics", headers={"Authorization": f"Bearer {fleet.tokens[role]}"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _vm(inventory: Inventory, name: str, tenant: str, state: VmState) -> Vm:
    vm = inventory.add(Vm(name=name, vcpus=1, memory_mib=128, disk_gib=1, image="lab-guest", tenant=tenant))
    inventory.update(vm.id, state=state)
    return vm


def test_the_fleet_is_counted_at_scrape_time(fleet):
    for name in ("a", "b"):
        _vm(fleet.inventory, name, "acme", VmState.RUNNING)
    _vm(fleet.inventory, "c", "acme", VmState.STOPPED)
    _vm(fleet.inventory, "d", "blue", VmState.RUNNING)
    seen = _scrape(fleet)
    assert seen[("vmflow_vms", (("state", "running"), ("tenant", "acme")))] == 2
    assert seen[("vmflow_vms", (("state", "stopped"), ("tenant", "acme")))] == 1
    assert seen[("vmflow_vms", (("state", "running"), ("tenant", "blue")))] == 1
    assert seen[("vmflow_hosts", (("state", "up"),))] == 2
    assert seen[("vmflow_hosts", (("state", "fenced"),))] == 1
    assert seen[("vmflow_hosts", (("state", "maintenance"),))] == 0  # every state, none missing
    assert seen[("vmflow_host_capacity_vcpus", (("host", "h3"),))] == 8
    assert seen[("vmflow_host_allocated_vcpus", (("host", "h1"),))] == 3
    assert seen[("vmflow_host_capacity_memory_bytes", (("host", "h2"),))] == 4096 * MIB
    assert seen[("vmflow_host_allocated_memory_bytes", (("host", "h2"),))] == 1024 * MIB
    assert seen[("vmflow_host_allocated_disk_bytes", (("host", "h1"),))] == 10 * 1024 * MIB
    assert seen[("vmflow_scheduler_reachable", ())] == 1
    assert ("vmflow_temporal_reconnects_total", ()) in seen  # the process's own metrics come along
    assert not any(vm_label for _name, labels in seen for vm_label, _ in labels if vm_label in ID_LABELS)


def test_what_is_gone_leaves_no_stale_series(fleet):
    vm = _vm(fleet.inventory, "lone", "gone", VmState.RUNNING)
    assert _scrape(fleet)[("vmflow_vms", (("state", "running"), ("tenant", "gone")))] == 1
    fleet.inventory.remove(vm.id)
    fleet.scheduler.hosts_known = [_host("h1")]
    seen = _scrape(fleet)
    assert not [key for key in seen if key[0] == "vmflow_vms" and ("tenant", "gone") in key[1]]
    assert ("vmflow_host_capacity_vcpus", (("host", "h2"),)) not in seen
    assert seen[("vmflow_hosts", (("state", "up"),))] == 1


def test_without_the_scheduler_the_vms_are_still_counted_and_the_hosts_are_not_guessed(fleet):
    _vm(fleet.inventory, "a", "acme", VmState.RUNNING)
    _scrape(fleet)
    fleet.scheduler.reachable = False
    seen = _scrape(fleet)
    assert seen[("vmflow_scheduler_reachable", ())] == 0
    assert seen[("vmflow_vms", (("state", "running"), ("tenant", "acme")))] == 1
    assert not [key for key in seen if key[0].startswith(("vmflow_hosts", "vmflow_host_"))]


def test_a_tenant_reads_only_its_own_vms_and_an_admin_everything(fleet):
    assert fleet.client.get("/metrics").status_code == 401
    _vm(fleet.inventory, "mine", "default", VmState.RUNNING)  # the member token's tenant
    _vm(fleet.inventory, "theirs", "acme", VmState.RUNNING)
    assert ("vmflow_vms", (("state", "running"), ("tenant", "acme"))) in _scrape(fleet)
    own = {key: value for key, value in _scrape(fleet, Role.MEMBER).items() if not key[0].endswith("_created")}
    assert own == {("vmflow_vms", (("state", "running"), ("tenant", "default"))): 1}


# -- Temporal reconnects ---------------------------------------------------------------------------


async def test_the_temporal_watcher_counts_each_return_once():
    answers = iter([True, False, False, True, True, False, True])
    done = asyncio.Event()

    async def probe() -> bool:
        try:
            up = next(answers)
        except StopIteration:
            done.set()
            await asyncio.Event().wait()  # hold the last answer until cancelled
        return up

    reconnects = sample("vmflow_temporal_reconnects_total")
    watcher = asyncio.create_task(watch_temporal(probe, interval_s=0.001))
    await asyncio.wait_for(done.wait(), 5)
    await _stop(watcher)
    assert sample("vmflow_temporal_reconnects_total") == reconnects + 2
    assert sample("vmflow_temporal_connected") == 1


async def _stop(task: asyncio.Task) -> None:
    # Python 3.11's wait_for can swallow a cancel that lands as its inner call ends: ask again.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_failing_health_check_means_disconnected():
    async def probe() -> bool:
        raise RuntimeError("unreachable")

    watcher = asyncio.create_task(watch_temporal(probe, interval_s=0.001))
    for _ in range(100):
        await asyncio.sleep(0.005)
        if sample("vmflow_temporal_connected") == 0:
            break
    await _stop(watcher)
    assert sample("vmflow_temporal_connected") == 0


# -- the scheduler ---------------------------------------------------------------------------------


async def test_each_placement_decision_is_timed_under_its_outcome():
    scheduler = Scheduler(SchedulerSettings(), clock=lambda: 1000.0)
    scheduler.observe(HostHeartbeat("h1", 1000.0, True, "qemu", 2, 1024, disk_gib=100))
    placer = Placer(scheduler, MemoryClaimStore())
    placed = sample("vmflow_placement_duration_seconds_count", outcome="placed")
    refused = sample("vmflow_placement_duration_seconds_count", outcome="no_valid_host")
    assert (await timed_place(placer, PlacementRequest("vm-1", 1, 512, 0))).host_id == "h1"
    with pytest.raises(NoValidHost):
        await timed_place(placer, PlacementRequest("vm-2", 64, 512, 0))
    assert sample("vmflow_placement_duration_seconds_count", outcome="placed") == placed + 1
    assert sample("vmflow_placement_duration_seconds_count", outcome="no_valid_host") == refused + 1


class FakeTemporal:
    def __init__(self) -> None:
        self.started: list[str] = []

    async def start_workflow(self, workflow: str, *args, **kwargs) -> None:
        self.started.append(kwargs["id"])


class QuietPublisher:
    async def publish(self, subject: str, data: dict, event_id: str | None = None) -> None:
        pass


async def test_failure_detection_is_timed_from_the_last_good_heartbeat():
    now_s = 1000.0
    settings = SchedulerSettings(grace_after_outage_s=0.0)
    scheduler = Scheduler(settings, clock=lambda: now_s)
    # h1 went silent 12 s ago; h2 is fresh and has not reached h1's libvirt since then either.
    scheduler.observe(HostHeartbeat("h1", now_s - 12, True, "qemu", 2, 1024))
    scheduler.observe(HostHeartbeat("h2", now_s - 0.5, True, "qemu", 2, 1024,
                                    peers_reached=(PeerReach("h1", now_s - 12),)))
    temporal = FakeTemporal()

    async def connect() -> FakeTemporal:
        return temporal

    monitor = LivenessMonitor(scheduler, settings.liveness_policy(), QuietPublisher(), connect, 60.0,
                              clock=lambda: now_s)
    detections = sample("vmflow_failover_detection_seconds_count")
    total_s = sample("vmflow_failover_detection_seconds_sum")
    await monitor.tick()
    await monitor.tick()  # started once: observed once
    assert len(temporal.started) == 1
    assert sample("vmflow_failover_detection_seconds_count") == detections + 1
    assert sample("vmflow_failover_detection_seconds_sum") == pytest.approx(total_s + 12)


# -- the stack -------------------------------------------------------------------------------------


def test_the_stack_gives_each_process_its_metrics_port_and_says_where(tmp_path):
    cfg = stack.StackConfig.isolated(tmp_path, "vmtmetrics", host_count=2)
    schedulers = {"scheduler", "scheduler-2", "scheduler-3"}  # three replicas by default
    processes = {*schedulers, "storage", "orchestrator", "fencer", "host-worker-h1", "host-worker-h2"}
    assert set(cfg.metrics_ports) == processes and len(set(cfg.metrics_ports.values())) == len(processes)
    assert cfg.with_metrics_ports() is cfg
    assert stack.metrics_env(cfg, "api") == {"VMFLOW_METRICS_HOST": "127.0.0.1", "VMFLOW_METRICS_PORT": "0"}
    assert stack.metrics_env(cfg, "host-worker-h1", "127.1.0.11")["VMFLOW_METRICS_HOST"] == "127.1.0.11"
    (tmp_path / stack.STACK_FILE).write_text(json.dumps(asdict(cfg)))
    assert stack.load_config(tmp_path) == cfg
    where = stack.metrics_endpoints(cfg)  # no lab has run here: no host worker to point at
    assert where["api"].startswith(f"{cfg.api_url}/metrics")
    assert where["orchestrator"] == f"http://127.0.0.1:{cfg.metrics_ports['orchestrator']}/metrics"
    assert set(where) == {"api", *schedulers, "storage", "orchestrator", "fencer"}
