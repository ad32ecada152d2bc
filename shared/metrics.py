"""Every Prometheus metric vmflow exports, defined here and nowhere else.

Names start with ``vmflow_``, carry their unit as a suffix (``_seconds``, ``_bytes``) and counters
end in ``_total``. Labels stay few-valued: an operation's kind (its workflow type), an outcome, a
state, a tenant, a host; never a VM or operation id.

Each process exports the default registry on ``/metrics`` (``serve_metrics``); a metric shows
samples only in the process that records it: operations in the orchestrator, placement and failure
detection in the scheduler, migrations in host workers, reconnects everywhere. The fleet gauges
(VMs, hosts, capacity) live in ``FLEET``, a registry of their own that only the API fills, at
scrape time, from its inventory and the scheduler (``GET /metrics`` on the API's port).
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

# A ``*_created`` series beside every counter and histogram doubles the series for little use.
disable_created_metrics()


class Outcome(StrEnum):
    """How an operation ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# -- operations: counted by the orchestrator worker's workflow interceptor (workflows/metering.py) --

OPERATIONS_STARTED = Counter(
    "vmflow_operations_started_total", "Operations (workflow runs) started, by kind (workflow type).", ["kind"])
OPERATIONS_SUCCEEDED = Counter(
    "vmflow_operations_succeeded_total", "Operations that completed, by kind.", ["kind"])
OPERATIONS_FAILED = Counter(
    "vmflow_operations_failed_total", "Operations that failed, by kind.", ["kind"])
OPERATIONS_CANCELLED = Counter(
    "vmflow_operations_cancelled_total", "Operations that were cancelled, by kind.", ["kind"])
OPERATION_DURATION = Histogram(
    "vmflow_operation_duration_seconds",
    "From an operation's start (the workflow's start event) to its end, by kind and outcome.",
    ["kind", "outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600),
)
FAILOVER_RECOVERY = Histogram(
    "vmflow_failover_recovery_seconds",
    "From a HostFailover's start to its success: the failed host fenced and its HA VMs restarted elsewhere.",
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800, 3600),
)
_FINISHED = {Outcome.SUCCEEDED: OPERATIONS_SUCCEEDED, Outcome.FAILED: OPERATIONS_FAILED,
             Outcome.CANCELLED: OPERATIONS_CANCELLED}
FAILOVER_KIND = "HostFailover"


def operation_started(kind: str) -> None:
    OPERATIONS_STARTED.labels(kind).inc()


def operation_finished(kind: str, outcome: Outcome, duration_s: float) -> None:
    """Count the end of one operation and observe how long it took; a failover that succeeded
    is observed as a recovery time too."""
    _FINISHED[outcome].labels(kind).inc()
    OPERATION_DURATION.labels(kind, outcome.value).observe(max(0.0, duration_s))
    if kind == FAILOVER_KIND and outcome is Outcome.SUCCEEDED:
        FAILOVER_RECOVERY.observe(max(0.0, duration_s))


# -- the scheduler ----------------------------------------------------------------------------------

CLAIM_RACES_LOST = Counter(
    "vmflow_placement_claim_races_lost_total",
    "Placements that lost a compare-and-set on a host's claims to another scheduler replica and decided again.",
)
PLACEMENT_DURATION = Histogram(
    "vmflow_placement_duration_seconds",
    "Time the scheduler takes to decide a placement request, by outcome (placed, or the error code).",
    ["outcome"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
FAILOVER_DETECTION = Histogram(
    "vmflow_failover_detection_seconds",
    "From a host's last heartbeat that vouched for its libvirt to the start of its failover.",
    buckets=(1, 2, 4, 6, 8, 10, 15, 20, 30, 45, 60, 120, 300),
)

# -- host workers ---------------------------------------------------------------------------------

MIGRATION_DURATION = Histogram(
    "vmflow_migration_duration_seconds",
    "Wall time of a completed migration on its source host, by mode (live, cold).",
    ["mode"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
MIGRATION_DOWNTIME = Histogram(
    "vmflow_migration_downtime_seconds",
    "Guest pause at the end of a completed live migration, as libvirt reports it (VIR_DOMAIN_JOB_DOWNTIME).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# -- connections, in every process ---------------------------------------------------------------

NATS_DISCONNECTS = Counter("vmflow_nats_disconnects_total", "Times this process lost its NATS connection.")
NATS_RECONNECTS = Counter("vmflow_nats_reconnects_total", "Times this process got its NATS connection back.")
TEMPORAL_RECONNECTS = Counter(
    "vmflow_temporal_reconnects_total",
    "Times the Temporal frontend answered a health check again after failing one.")
TEMPORAL_CONNECTED = Gauge(
    "vmflow_temporal_connected", "1 when the latest health check of the Temporal frontend passed, else 0.")

# -- the fleet, filled by the API at scrape time --------------------------------------------------

FLEET = CollectorRegistry(auto_describe=True)
VMS_NAME, VMS_HELP = "vmflow_vms", "VMs in the inventory, by state and tenant."  # a tenant's view has its own
VMS = Gauge(VMS_NAME, VMS_HELP, ["state", "tenant"], registry=FLEET)
HOSTS = Gauge("vmflow_hosts", "Hosts known to the scheduler, by state.", ["state"], registry=FLEET)
HOST_CAPACITY_VCPUS = Gauge(
    "vmflow_host_capacity_vcpus", "vCPUs the host offers to guests.", ["host"], registry=FLEET)
HOST_ALLOCATED_VCPUS = Gauge(
    "vmflow_host_allocated_vcpus", "vCPUs of the host's guests and placement claims.", ["host"], registry=FLEET)
HOST_CAPACITY_MEMORY = Gauge(
    "vmflow_host_capacity_memory_bytes", "Memory the host offers to guests.", ["host"], registry=FLEET)
HOST_ALLOCATED_MEMORY = Gauge(
    "vmflow_host_allocated_memory_bytes", "Memory of the host's guests and placement claims.", ["host"],
    registry=FLEET)
HOST_CAPACITY_DISK = Gauge(
    "vmflow_host_capacity_disk_bytes", "The host's own disk for local volumes.", ["host"], registry=FLEET)
HOST_ALLOCATED_DISK = Gauge(
    "vmflow_host_allocated_disk_bytes", "Local disk of the host's guests and placement claims.", ["host"],
    registry=FLEET)
SCHEDULER_REACHABLE = Gauge(
    "vmflow_scheduler_reachable", "1 when the scheduler answered the API's host listing at this scrape, else 0 "
    "(the host gauges are then empty).", registry=FLEET)
HOST_GAUGES = (HOSTS, HOST_CAPACITY_VCPUS, HOST_ALLOCATED_VCPUS, HOST_CAPACITY_MEMORY, HOST_ALLOCATED_MEMORY,
               HOST_CAPACITY_DISK, HOST_ALLOCATED_DISK)


def serve_metrics(host: str, port: int) -> bool:
    """Serve the default registry on ``http://host:port/metrics`` from a daemon thread; nothing
    when ``port`` is 0. Returns whether it serves. Raises OSError when the address is taken."""
    if port <= 0:
        return False
    start_http_server(port, addr=host)
    return True
