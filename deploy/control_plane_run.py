"""Runs ``vmflow bench control-plane`` (see ``deploy.bench_control_plane``): starts its own
nats-server, Temporal dev server, scheduler, API and simulated hosts in a run dir of its own,
seeds the inventory, measures phase by phase, then stops every process it started, by pid, and
removes the run dir (its logs are kept elsewhere when the run fails)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path

import httpx
import nats
from sqlmodel import Session

from deploy.bench import BenchError
from deploy.bench_control_plane import (
    BenchArgs,
    fleet_plan,
    process_slices,
    tenant_for,
)
from deploy.control_plane_figures import (
    SCHEDULER_TIMEOUT_S,
    PhaseFigures,
    Report,
    quantiles,
)
from deploy.control_plane_probes import (
    HeartbeatWatch,
    IntakeSample,
    IntakeSampler,
    ProcessMeter,
    liveness_costs,
    measure_listing,
    measure_sse,
    scheduler_hosts_total,
)
from deploy.credentials import read_token_file
from deploy.processes import free_port, is_alive, port_open, start_process, stop_process
from deploy.stack import REPO_DIR, temporal_binary
from services.api.db import make_engine, migrate
from services.api.identity_store import IdentityStore
from services.api.models import Vm
from services.api.tenancy_models import TenantCreate
from services.scheduler.client import SchedulerClient
from services.scheduler.settings import SchedulerSettings
from shared.models import VmState

STALE_AFTER_S = SchedulerSettings().heartbeat_timeout_s  # what the scheduler calls a silent host
BENCH_IMAGE = "bench"
LOG_TAIL_CHARS = 1500


class Processes:
    """What this run started, by name; stopped by pid, last started first."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.pids: dict[str, int] = {}

    def start(self, name: str, argv: list[str], env: Mapping[str, str]) -> int:
        self.pids[name] = start_process(name, argv, self.run_dir, {"PYTHONUNBUFFERED": "1", **env}, REPO_DIR)
        return self.pids[name]

    def check(self, *names: str) -> None:
        """BenchError with the end of its log when one of ``names`` has exited."""
        for name in names:
            if not is_alive(self.pids[name]):
                log = self.run_dir / "logs" / f"{name}.log"
                tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
                raise BenchError(f"{name} exited; the end of its log:\n{tail}")

    def stop_all(self) -> None:
        """The API and the scheduler first (the scheduler would see every host go silent and
        call them failed), then the rest, last started first."""
        first = [name for name in ("api", "scheduler") if name in self.pids]
        for name in first + [n for n in reversed(list(self.pids)) if n not in first]:
            stop_process(self.run_dir, name)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str, procs: Processes,
                *watched: str, interval_s: float = 0.25) -> float:
    """Seconds until ``check()`` holds; BenchError when a watched process exits or time runs out."""
    started_s = time.perf_counter()
    while not await check():
        procs.check(*watched)
        if time.perf_counter() - started_s > timeout_s:
            raise BenchError(f"{what}: not after {timeout_s:g} s")
        await asyncio.sleep(interval_s)
    return time.perf_counter() - started_s


# --- the inventory ------------------------------------------------------------------------------


def seed_inventory(database_url: str, args: BenchArgs) -> None:
    """The schema, the tenants, and every planned VM as running on its host: one transaction."""
    engine = make_engine(database_url)
    try:
        migrate(engine)
        identities = IdentityStore(engine)
        for t in range(args.tenants):
            identities.add_tenant(TenantCreate(name=tenant_for(t), description="vmflow bench control-plane"))
        with Session(engine) as session:
            session.add_all(Vm(id=vm.vm_id, name=vm.name, tenant=vm.tenant, vcpus=vm.vcpus, memory_mib=vm.memory_mib,
                               disk_gib=vm.disk_gib, image=BENCH_IMAGE, state=VmState.RUNNING, host_id=vm.host_id)
                            for vm in fleet_plan(args.hosts, args.vms, args.tenants))
            session.commit()
    finally:
        engine.dispose()


# --- the processes ------------------------------------------------------------------------------


def start_nats(procs: Processes) -> tuple[str, int]:
    port = free_port()
    store = procs.run_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    procs.start("nats", ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)], {})
    return f"nats://127.0.0.1:{port}", port


def start_temporal(procs: Processes) -> int:
    """The dev server as ``vmflow up`` starts it; its port."""
    port = free_port()
    procs.start("temporal", [
        temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(port),
        "--ui-port", str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--db-filename", str(procs.run_dir / "temporal.db"), "--log-level", "warn",
    ], {})
    return port


def service_env(nats_url: str, temporal_address: str) -> dict[str, str]:
    return {"VMFLOW_NATS_URL": nats_url, "VMFLOW_JETSTREAM_REPLICAS": "1", "VMFLOW_TEMPORAL_ADDRESS": temporal_address,
            "VMFLOW_LOG_JSON": "true", "VMFLOW_METRICS_PORT": "0"}


def start_sim_hosts(procs: Processes, args: BenchArgs, nats_url: str) -> dict[str, Path]:
    """name -> status file of each simulated-hosts process."""
    status = {}
    for k, (first, count) in enumerate(process_slices(args.hosts, args.processes)):
        name = f"sim-hosts-{k}"
        status[name] = procs.run_dir / f"{name}.json"
        procs.start(name, [
            sys.executable, "-m", "deploy.sim_hosts", "--run-dir", str(procs.run_dir), "--status-file",
            str(status[name]), "--first", str(first), "--count", str(count), "--hosts", str(args.hosts),
            "--vms", str(args.vms), "--tenants", str(args.tenants), "--interval-s", str(args.heartbeat_interval_s),
        ], {"VMFLOW_NATS_URL": nats_url, "VMFLOW_LOG_JSON": "true"})
    return status


def read_status(files: Mapping[str, Path]) -> dict[str, dict]:
    found = {}
    for name, path in files.items():
        try:
            found[name] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return found


def beats_per_s(before: Mapping[str, dict], after: Mapping[str, dict]) -> float:
    """Heartbeats the simulated hosts published per second between two status readings."""
    total = 0.0
    for name, end in after.items():
        start = before.get(name)
        if start and end.get("at_s", 0) > start.get("at_s", 0):
            total += (end["beats"] - start["beats"]) / (end["at_s"] - start["at_s"])
    return total


# --- phases -------------------------------------------------------------------------------------


def phase_figures(name: str, wall_s: float, cpu_before: Mapping[str, float], cpu_after: Mapping[str, float],
                  samples: list[IntakeSample], published_per_s: float, carried_per_s: float) -> PhaseFigures:
    return PhaseFigures(
        name=name, wall_s=wall_s, cpu_s={k: cpu_after[k] - cpu_before.get(k, math.nan) for k in cpu_after},
        sched_age_s=quantiles([a for s in samples for a in s.sched_ages_s]),
        raw_age_s=quantiles([a for s in samples for a in s.raw_ages_s]),
        sched_not_up_max=max((s.not_up for s in samples), default=0),
        raw_stale_max=max((s.raw_stale for s in samples), default=0),
        hosts_call_ms=quantiles([s.call_ms for s in samples]),
        published_per_s=published_per_s, carried_per_s=carried_per_s,
        sched_errors=sum(1 for s in samples if s.error),
    )


class PhaseRunner:
    def __init__(self, meter: ProcessMeter, sampler: IntakeSampler, watch: HeartbeatWatch,
                 sim_status: Mapping[str, Path], say: Callable[[str], None]) -> None:
        self._meter, self._sampler, self._watch, self._sim_status, self._say = meter, sampler, watch, sim_status, say
        self.phases: list[PhaseFigures] = []
        self.failures: list[str] = []

    async def run(self, name: str, work: Awaitable):
        """``work``'s result; None when it failed (what failed goes to ``failures``: the other
        phases and this one's intake figures are still worth printing)."""
        self._say(f"phase {name}")
        self._sampler.phase = name
        cpu_before, status_before, carried_before = self._meter.cpu_s(), read_status(self._sim_status), self._watch.count
        started_s = time.perf_counter()
        result = None
        try:
            result = await work
        except (BenchError, httpx.HTTPError, OSError) as exc:
            self.failures.append(f"phase {name} failed: {type(exc).__name__}: {str(exc)[:300]}")
            self._say(self.failures[-1])
        self._sampler.samples.append(await self._sampler.sample())  # at least one per phase
        wall_s = time.perf_counter() - started_s
        self.phases.append(phase_figures(
            name, wall_s, cpu_before, self._meter.cpu_s(), self._sampler.of_phase(name),
            beats_per_s(status_before, read_status(self._sim_status)), (self._watch.count - carried_before) / wall_s))
        self._sampler.phase = f"after {name}"
        return result


# --- the whole run ------------------------------------------------------------------------------


def run(args: BenchArgs, say: Callable[[str], None]) -> Report:
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-bench-control-plane-"))
    procs = Processes(run_dir)
    succeeded = False
    try:
        report = asyncio.run(_measure(args, procs, say))
        procs.stop_all()  # before the in-process timings: they see a quiet machine
        say("timing the scheduler's liveness code in this process")
        report = replace(report, liveness=liveness_costs(args.hosts, math.ceil(args.vms / args.hosts)),
                         liveness_interval_s=SchedulerSettings().liveness_interval_s)
        succeeded = True
        return report
    finally:
        procs.stop_all()
        if (args.keep_logs or not succeeded) and (run_dir / "logs").exists():
            kept = Path(tempfile.mkdtemp(prefix="vmflow-bench-control-plane-logs-"))
            shutil.copytree(run_dir / "logs", kept, dirs_exist_ok=True)
            say(f"logs kept in {kept}")
        shutil.rmtree(run_dir, ignore_errors=True)


async def _measure(args: BenchArgs, procs: Processes, say: Callable[[str], None]) -> Report:
    run_dir, setup = procs.run_dir, {}
    notes = [_load_note("start")]
    started_s = time.perf_counter()
    nats_url, nats_port = start_nats(procs)
    temporal_port = start_temporal(procs)
    say(f"run dir {run_dir}")
    say(f"seeding the inventory with {args.vms} VMs")
    database_url = f"sqlite:///{run_dir / 'vmflow.db'}"
    await asyncio.to_thread(seed_inventory, database_url, args)
    setup["inventory seeded"] = time.perf_counter() - started_s

    async def port_ready(port: int) -> bool:
        return port_open(port)

    await until(lambda: port_ready(nats_port), 20, "nats-server", procs, "nats")
    await until(lambda: port_ready(temporal_port), 60, "Temporal dev server", procs, "temporal")
    # The scheduler needs Temporal only to start failovers: it gets an address nothing listens on.
    procs.start("scheduler", [sys.executable, "-m", "services.scheduler"],
                service_env(nats_url, f"127.0.0.1:{free_port()}"))
    api_port, token_file = free_port(), run_dir / "admin-token"
    procs.start("api", [sys.executable, "-m", "services.api"], {
        **service_env(nats_url, f"127.0.0.1:{temporal_port}"), "VMFLOW_DATABASE_URL": database_url,
        "VMFLOW_LISTEN_PORT": str(api_port), "VMFLOW_ADMIN_TOKEN_FILE": str(token_file)})
    api_url = f"http://127.0.0.1:{api_port}"
    nc = await nats.connect(nats_url, name="vmflow-bench-control-plane")
    try:
        client = SchedulerClient(nc, timeout_s=SCHEDULER_TIMEOUT_S)
        await until(lambda: _answers(scheduler_hosts_total(client)), 60, "the scheduler", procs, "scheduler")
        await until(lambda: _api_ready(api_url), 120, "the API", procs, "api")
        setup["scheduler and API ready"] = time.perf_counter() - started_s
        token = read_token_file(token_file)
        if not token:
            raise BenchError(f"the API wrote no admin token to {token_file}")
        meter = ProcessMeter({name: [procs.pids[name]] for name in ("scheduler", "api", "nats", "temporal")})
        meter.pids["bench"] = [os.getpid()]
        sched_rss_no_hosts = meter.memory_mib()["scheduler"][0]

        watch = HeartbeatWatch()
        await watch.start(nc)
        say(f"starting {args.hosts} simulated hosts in {args.processes} process(es)")
        sim_status = start_sim_hosts(procs, args, nats_url)
        meter.pids["sim hosts"] = [procs.pids[name] for name in sim_status]

        async def sims_connected() -> bool:
            status = read_status(sim_status)
            return len(status) == len(sim_status) and sum(s["connected"] for s in status.values()) == args.hosts

        async def all_known() -> bool:
            return await scheduler_hosts_total(client) == args.hosts

        boot_s = 120 + args.hosts * 0.1
        await until(sims_connected, boot_s, "simulated hosts connected", procs, *sim_status)
        setup["hosts up and connected"] = time.perf_counter() - started_s
        setup["mock hosts opened (slowest process)"] = max(s["setup_s"] for s in read_status(sim_status).values())
        await until(all_known, boot_s, "every host known to the scheduler", procs, "scheduler", *sim_status)
        setup["every host known to the scheduler"] = time.perf_counter() - started_s
        await asyncio.sleep(args.settle_s)
        hosts_known = await scheduler_hosts_total(client) or 0
        sched_rss_all_hosts = meter.memory_mib()["scheduler"][0]

        sampler = IntakeSampler(client, watch, args.hosts, args.sample_interval_s, STALE_AFTER_S)
        sampling = asyncio.create_task(sampler.run())
        phases = PhaseRunner(meter, sampler, watch, sim_status, say)
        try:
            await phases.run("idle", asyncio.sleep(args.idle_s))
            listing = await phases.run("listing", measure_listing(
                api_url, token, args.hosts, args.vms, args.list_requests, args.list_budget_s))
            procs.check("api", "scheduler")
            sse = await phases.run("sse", measure_sse(
                api_url, token, nc, args.sse_clients, args.events, args.event_rate,
                (args.hosts, args.vms, args.tenants), say))
            procs.check("api", "scheduler", *sim_status)
        finally:
            sampling.cancel()
        memory = meter.memory_mib()
        notes += phases.failures
        errors = [s.error for s in sampler.samples if s.error]
        if errors:
            notes.append(f"scheduler hosts endpoint failed {len(errors)} time(s), first: {errors[0]}")
    finally:
        await nc.close()
    notes += [_load_note("end"), *_method_notes(args)]
    return Report(args, setup, memory, sched_rss_no_hosts, sched_rss_all_hosts, hosts_known, tuple(phases.phases),
                  listing, sse, notes=tuple(notes))


async def _answers(probe: Awaitable[int | None]) -> bool:
    return await probe is not None


async def _api_ready(api_url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=3) as http:
            return (await http.get(f"{api_url}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def _load_note(when: str) -> str:
    one, five, _ = os.getloadavg()
    return f"load average at the {when}: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _method_notes(args: BenchArgs) -> list[str]:
    per_host = args.vms / args.hosts
    return [
        "hosts: libvirt test driver, one connection per host, opened from a node file",
        "  (every test:///default connection of a process is one same host); their",
        f"  ~{per_host:g} domains each defined and started through Hypervisor, none",
        "  synthesized; the worker's own heartbeat_loop, a NATS connection per host;",
        "  no peer probing (peers_reached stays empty; a real worker reports every",
        "  peer it reaches)",
        "scheduler: Temporal unreachable on purpose (failovers only); API: Temporal",
        "  dev server (it does not start without one)",
    ]
