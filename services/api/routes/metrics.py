"""/metrics: Prometheus' text format of this process's metrics plus the fleet's, computed at each
scrape: VMs by state and tenant from the inventory, hosts by state and each host's capacity and
allocation from the scheduler. Every API replica answers with the same fleet figures; aggregate
them with max, not sum.

An admin reads everything. Anyone else reads only its own tenant's series (its VMs by state):
the fleet's hosts and the processes' figures are the operators', and other tenants are labels."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import structlog
from fastapi import APIRouter, Depends, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Gauge,
    generate_latest,
)

from services.api.platform import Platform, get_platform
from services.api.policy import principal
from shared import metrics
from shared.auth import Principal
from shared.errors import VmflowError
from shared.models import HostMode, HostView, VmState
from shared.units import GIB, MIB

router = APIRouter(tags=["metrics"])
log = structlog.get_logger(__name__)

HOST_PAGE = 500
# Every state a host can be in, each exported (0 when no host is in it) so that a state's line
# does not vanish from a graph when its last host leaves it.
HOST_STATES = ("up", "down", "failed", "worker_silent", *(m.value for m in HostMode if m is not HostMode.ACTIVE))


async def _all_hosts(p: Platform) -> list[HostView]:
    """Every host the scheduler knows, page by page. Raises ServiceUnavailable or Timeout."""
    hosts: list[HostView] = []
    while True:
        page = await p.scheduler.hosts(len(hosts), HOST_PAGE)
        hosts.extend(page.hosts)
        if not page.hosts or len(hosts) >= page.total:
            return hosts


def fill_fleet(vm_counts: Iterable[tuple[str, VmState, int]], hosts: list[HostView] | None) -> None:
    """Set the fleet gauges to exactly these figures: series not among them are dropped, so a
    tenant without VMs left or a host the scheduler forgot leaves nothing stale behind.
    ``hosts`` None: the scheduler did not answer; the host gauges stay empty."""
    metrics.VMS.clear()
    for tenant, state, count in vm_counts:
        metrics.VMS.labels(state=state.value, tenant=tenant).set(count)
    for gauge in metrics.HOST_GAUGES:
        gauge.clear()
    metrics.SCHEDULER_REACHABLE.set(0 if hosts is None else 1)
    if hosts is None:
        return
    by_state = dict.fromkeys(HOST_STATES, 0)
    for h in hosts:
        by_state[h.state] = by_state.get(h.state, 0) + 1
        metrics.HOST_CAPACITY_VCPUS.labels(h.host_id).set(h.vcpus_total)
        metrics.HOST_ALLOCATED_VCPUS.labels(h.host_id).set(h.vcpus_used)
        metrics.HOST_CAPACITY_MEMORY.labels(h.host_id).set(h.memory_mib_total * MIB)
        metrics.HOST_ALLOCATED_MEMORY.labels(h.host_id).set(h.memory_mib_used * MIB)
        metrics.HOST_CAPACITY_DISK.labels(h.host_id).set(h.disk_gib_total * GIB)
        metrics.HOST_ALLOCATED_DISK.labels(h.host_id).set(h.disk_gib_used * GIB)
    for state, count in by_state.items():
        metrics.HOSTS.labels(state).set(count)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
async def scrape(p: Platform = Depends(get_platform), who: Principal = Depends(principal)) -> Response:
    """This API process's metrics and the fleet gauges (``vmflow_vms``, ``vmflow_hosts``,
    ``vmflow_host_*``), in Prometheus' text format; for a tenant's token, its ``vmflow_vms``."""
    if not who.is_admin:
        return Response(await _tenant_view(p, who.tenant), media_type=CONTENT_TYPE_LATEST)
    vm_counts = await asyncio.to_thread(p.inventory.count_by_tenant_and_state)
    try:
        hosts: list[HostView] | None = await _all_hosts(p)
    except VmflowError as exc:
        log.warning("metrics without hosts: the scheduler did not answer", error=exc.message)
        hosts = None
    # Nothing awaits from here on, so concurrent scrapes cannot interleave a clear and a refill.
    fill_fleet(vm_counts, hosts)
    return Response(generate_latest(REGISTRY) + generate_latest(metrics.FLEET), media_type=CONTENT_TYPE_LATEST)


async def _tenant_view(p: Platform, tenant: str) -> bytes:
    """The tenant's VMs by state, in a registry of their own: the shared gauges are never
    touched, so a tenant's scrape cannot race an admin's."""
    registry = CollectorRegistry()
    vms = Gauge(metrics.VMS_NAME, metrics.VMS_HELP, ["state", "tenant"], registry=registry)
    for owner, state, count in await asyncio.to_thread(p.inventory.count_by_tenant_and_state):
        if owner == tenant:
            vms.labels(state=state.value, tenant=tenant).set(count)
    return generate_latest(registry)
