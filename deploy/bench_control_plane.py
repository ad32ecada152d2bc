"""The control plane at fleet scale: simulated hosts and VMs against the real scheduler and API.

1,000 simulated hosts and 10,000 VMs (by default) against the real scheduler and API processes,
each figure next to a raw baseline from the same run.

What runs (all on this machine, in a run dir of its own under /tmp, removed at the end): a
nats-server with JetStream; the Temporal dev server, because the API does not start without one
(its startup connects to Temporal and exits when nothing answers); one scheduler and one API
process as ``vmflow up`` starts them (SQLite inventory; the scheduler gets an unused Temporal
address: it needs Temporal only to start failovers); and 1-4 processes of simulated hosts
(``deploy.sim_hosts``): libvirt mock-driver hosts, each with its domains, its own NATS
connection and the host worker's own heartbeat loop. The inventory gets its VMs (every one
running on the host whose mock driver runs its domain, so the API's reconciliation has nothing
to do) before the API starts.

Measured, by phase (idle: heartbeats only; listing; SSE):
- heartbeat intake: the age of every host's last heartbeat as the scheduler holds it (its
  ``hosts`` endpoint, paged), next to the same age as a bare NATS subscriber on the heartbeat
  subjects sees it; hosts the scheduler does not call up; beats published (the simulated
  hosts' count) and carried (the bare subscriber's);
- GET /v1/vms?limit=100&offset=<random> and GET /v1/hosts?limit=100&offset=<random>, with the
  admin token, interleaved with GET /healthz (the floor), in rotating order;
- SSE: ``--sse-clients`` clients on GET /v1/events, then VM events published at a fixed rate
  through ``EventPublisher``: per client delivered events/s, events lost, lag from publish to
  receipt; next to a bare NATS subscriber to the same events, in the same process;
- memory (RSS) and CPU seconds of every process: scheduler, API, nats-server, Temporal, the
  simulated hosts, this process.
Then, with every process stopped: one tick of the scheduler's liveness monitor (its own pure
code) over the fleet, without and with the peer reports a real worker sends.

Here: the arguments and the simulated fleet (pure). Figures and the report:
``deploy.control_plane_figures``; measuring: ``deploy.control_plane_probes``; the processes
and phases: ``deploy.control_plane_run``; the hosts: ``deploy.sim_hosts``.

Run: ``vmflow bench control-plane --hosts 1000 --vms 10000 --sse-clients 100`` or
``python -m deploy.bench_control_plane --hosts 100 --vms 1000 --sse-clients 10``.
"""

from __future__ import annotations

import argparse
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deploy.bench_placement import HostFlavour
from deploy.control_plane_figures import Report, format_report

HOST_FLAVOUR = HostFlavour("sim", 32, 128 * 1024, 1000)
VM_VCPUS, VM_MEMORY_MIB, VM_DISK_GIB = 1, 512, 10
HOSTS_PER_PROCESS = 250
MAX_SIM_PROCESSES = 4
VM_NAMESPACE = uuid.UUID("0c9d1f7e-2b7a-4e0b-9f64-7d3c6a1f5e21")


# --- arguments: pure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchArgs:
    hosts: int = 1000
    vms: int = 10_000
    sse_clients: int = 100
    tenants: int = 10
    list_requests: int = 200  # of each kind, at most
    list_budget_s: float = 60.0  # the listing phase stops here even if fewer requests were made
    events: int = 2000
    event_rate: float = 100.0  # events published per second
    heartbeat_interval_s: float = 1.0  # the host worker's default
    idle_s: float = 8.0
    settle_s: float = 3.0  # after every host is known, before measuring
    sim_processes: int = 0  # 0: one per HOSTS_PER_PROCESS hosts, at most MAX_SIM_PROCESSES
    sample_interval_s: float = 2.0  # how often the heartbeat ages are sampled
    keep_logs: bool = False  # copy the processes' logs out of the run dir before it is removed

    def __post_init__(self) -> None:
        for name in ("hosts", "sse_clients", "tenants", "list_requests", "events"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.vms < 0:
            raise ValueError("vms must not be negative")
        for name in ("list_budget_s", "event_rate", "heartbeat_interval_s", "sample_interval_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.idle_s < 0 or self.settle_s < 0 or self.sim_processes < 0:
            raise ValueError("idle_s, settle_s and sim_processes must not be negative")

    @property
    def processes(self) -> int:
        """Processes of simulated hosts."""
        wanted = self.sim_processes or math.ceil(self.hosts / HOSTS_PER_PROCESS)
        return max(1, min(wanted, MAX_SIM_PROCESSES, self.hosts))


def argument_parser() -> argparse.ArgumentParser:
    defaults = BenchArgs()
    parser = argparse.ArgumentParser(prog="python -m deploy.bench_control_plane",
                                     description=__doc__.splitlines()[0])
    for name, help_text in (
        ("hosts", "simulated hosts"), ("vms", "VMs in the inventory, spread evenly over the hosts"),
        ("sse_clients", "clients on GET /v1/events"), ("tenants", "tenants the VMs belong to"),
        ("list_requests", "requests of each kind in the listing phase, at most"),
        ("list_budget_s", "the listing phase's time limit"), ("events", "events published in the SSE phase"),
        ("event_rate", "events published per second"), ("heartbeat_interval_s", "each host's"),
        ("idle_s", "the idle phase (heartbeats only)"), ("settle_s", "wait after every host is known"),
        ("sim_processes", "processes of simulated hosts (0: one per 250 hosts, at most 4)"),
        ("sample_interval_s", "how often heartbeat ages are sampled"),
    ):
        default = getattr(defaults, name)
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=type(default), default=default,
                            help=f"{help_text} (default {default:g})")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the processes' logs (a failed run always keeps them)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> BenchArgs:
    """Exits with argparse's usage message (status 2) on bad values."""
    parser = argument_parser()
    namespace = parser.parse_args(argv)
    try:
        return BenchArgs(**vars(namespace))
    except ValueError as exc:
        parser.error(str(exc))
        raise  # not reached: parser.error exits


# --- the fleet: pure ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedVm:
    vm_id: str
    name: str
    tenant: str
    host_id: str
    vcpus: int = VM_VCPUS
    memory_mib: int = VM_MEMORY_MIB
    disk_gib: int = VM_DISK_GIB


def host_id_for(index: int) -> str:
    """Ids sort like the indexes (the hosts endpoint pages in id order)."""
    return f"sim-{index:05d}"


def tenant_for(index: int) -> str:
    return f"bench-t{index:02d}"


def planned_vm(index: int, hosts: int, tenants: int) -> PlannedVm:
    """VM ``index``: on host ``index % hosts`` (round robin: every host gets its share, give or
    take one), of tenant ``(index // hosts) % tenants`` (so each host runs several tenants' VMs)."""
    return PlannedVm(
        vm_id=str(uuid.uuid5(VM_NAMESPACE, f"vm-{index}")),
        name=f"vm-{index:06d}",
        tenant=tenant_for((index // hosts) % tenants),
        host_id=host_id_for(index % hosts),
    )


def fleet_plan(hosts: int, vms: int, tenants: int) -> list[PlannedVm]:
    return [planned_vm(i, hosts, tenants) for i in range(vms)]


def vms_of_host(host_index: int, hosts: int, vms: int, tenants: int) -> list[PlannedVm]:
    """What ``fleet_plan`` puts on host ``host_index``, without building the whole plan."""
    return [planned_vm(i, hosts, tenants) for i in range(host_index, vms, hosts)]


def process_slices(hosts: int, processes: int) -> list[tuple[int, int]]:
    """(first host index, host count) of each process: contiguous, sizes differing by one at most."""
    base, extra = divmod(hosts, processes)
    slices, first = [], 0
    for p in range(processes):
        count = base + (1 if p < extra else 0)
        slices.append((first, count))
        first += count
    return [s for s in slices if s[1] > 0]


def run_control_plane_bench(args: BenchArgs, say: Callable[[str], None] = print) -> Report:
    """Run the benchmark (``deploy.control_plane_run``), print its report through ``say`` and
    return it. BenchError when a process fails to start or dies; every process it started is
    stopped, and its run dir removed, whatever happens."""
    from deploy.control_plane_run import run

    report = run(args, say)
    for line in format_report(report):
        say(line)
    return report


def main() -> None:
    from shared.logging import configure_logging

    args = parse_args()
    configure_logging("bench-control-plane", "warning")
    run_control_plane_bench(args)


if __name__ == "__main__":
    main()
