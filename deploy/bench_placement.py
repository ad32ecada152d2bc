"""Placement at fleet scale: the pure engine and the scheduler service, 100 to 10,000 hosts.

Hosts are libvirt test-driver hosts, one connection each, opened through the project's own
adapter (``Hypervisor``). Some of them run domains (defined and started through the same adapter),
so hosts range from empty to full. Each host's heartbeat is built from what its mock host
reports, as the host worker builds it.

For each fleet size:
- engine: ``choose_host`` over ``build_host_states`` of every heartbeat, one decision at a time;
- service: the real scheduler (``Scheduler``, ``follow_heartbeats``, ``follow_claims``,
  ``start_service``) in this process, on its own nats-server; heartbeats go through the KV bucket;
  ``place`` requests one at a time through ``SchedulerClient`` (each one's claim committed to the
  claims bucket), each claim released afterwards (untimed), so every decision sees the same fleet;
- baseline: a bare NATS echo responder on the same server, same payload size as a placement
  request, interleaved with the placements so both see the same machine noise.

The target, per size: the service's p99 at most TARGET_P99_MS and its p50 at most TARGET_RATIO
times the echo's p50, both in the same run; the table says pass or FAIL for each size.

Run: ``vmflow bench placement`` or ``python -m deploy.bench_placement --hosts 100,1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from deploy.bench import BenchError, percentile
from deploy.processes import free_port, port_open, start_process, stop_process, wait_for
from services.host_worker.domain_xml import build_domain_xml
from services.host_worker.hypervisor import Hypervisor
from services.scheduler.client import SchedulerClient
from services.scheduler.host_state import build_host_states
from services.scheduler.placement import choose_host
from services.scheduler.service import (
    claim_placer,
    follow_claims,
    follow_heartbeats,
    start_service,
)
from services.scheduler.settings import SchedulerSettings
from services.scheduler.state import Scheduler
from shared import codec
from shared.errors import VmflowError
from shared.messaging import connect, heartbeat_bucket
from shared.models import DomainSpec, DomainSummary, HostHeartbeat, PlacementRequest

DEFAULT_SIZES = (100, 1_000, 10_000)
DEFAULT_REQUESTS = 1_000
DEFAULT_BUDGET_S = 30.0  # per measured phase and fleet size
RESERVED_MEMORY_MIB = 512  # what the host worker keeps back for the host (its default)
# Hosts beat once here, not every 2 s as in production: without this the first hosts would count
# as dead before a 10,000-host run ends.
BENCH_HEARTBEAT_TIMEOUT_S = 24 * 3600.0
ECHO_SUBJECT = "bench.placement.echo"
PUT_CONCURRENCY = 256
INGEST_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 60.0
WARMUP_REQUESTS = 3
STATES_SAMPLES = 20
DOMAIN_NAMESPACE = uuid.UUID("5b0c1e2a-8d4f-4a57-9a61-3f0d2c7e9b11")
TARGET_P99_MS = 20.0  # the service's p99 over NATS, at every size
TARGET_RATIO = 10.0  # the service's p50 over the bare echo's p50, same run


# --- the simulated fleet: pure ------------------------------------------------------------------


@dataclass(frozen=True)
class HostFlavour:
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int


@dataclass(frozen=True)
class DomainSize:
    vcpus: int
    memory_mib: int
    disk_gib: int


FLAVOURS = (
    HostFlavour("small", 16, 64 * 1024, 500),
    HostFlavour("medium", 32, 128 * 1024, 1000),
    HostFlavour("large", 64, 512 * 1024, 2000),
)
# Host i runs FILL_QUARTERS[i % 4] domains of a quarter of its size: empty, 1/4, 1/2 or full.
# With 3 flavours and 4 fill levels (coprime), 12 consecutive hosts cover every combination.
FILL_QUARTERS = (0, 1, 2, 4)
# What the benchmark asks for: small VMs that fit every host that is not full.
REQUEST_SIZES = (DomainSize(1, 512, 10), DomainSize(2, 2048, 20), DomainSize(4, 4096, 40),
                 DomainSize(1, 1024, 10))


def host_id_for(index: int) -> str:
    """Ids sort like the indexes (zero-padded): placement breaks ties by host id."""
    return f"mock-{index:05d}"


def flavour_for(index: int) -> HostFlavour:
    return FLAVOURS[index % len(FLAVOURS)]


def domain_plan(index: int) -> tuple[DomainSize, ...]:
    """The domains mock host `index` runs: 0, 1, 2 or 4 quarters of what it offers guests."""
    flavour = flavour_for(index)
    quarter = DomainSize(flavour.vcpus // 4, (flavour.memory_mib - RESERVED_MEMORY_MIB) // 4,
                         flavour.disk_gib // 4)
    return (quarter,) * FILL_QUARTERS[index % len(FILL_QUARTERS)]


def node_xml(flavour: HostFlavour) -> str:
    """A test-driver node definition: a host with this many CPUs and this much memory."""
    return (
        "<node>\n"
        f"  <cpu><mhz>2400</mhz><model>x86_64</model><active>{flavour.vcpus}</active><nodes>1</nodes>"
        f"<sockets>1</sockets><cores>{flavour.vcpus}</cores><threads>1</threads></cpu>\n"
        f"  <memory>{flavour.memory_mib * 1024}</memory>\n"
        "</node>\n"
    )


def heartbeat_for(host_id: str, capacity: tuple[int, int], domains: Sequence[DomainSummary],
                  disk_gib: int, now_s: float) -> HostHeartbeat:
    """What the host worker would send for this host. A mock host has no disk of its own, so
    the disk capacity comes from its flavour (the worker measures its image directory)."""
    vcpus, memory_mib = capacity
    return HostHeartbeat(
        host_id=host_id, sent_at_s=now_s, libvirt_ok=True, domain_type="qemu", vcpus=vcpus,
        memory_mib=max(0, memory_mib - RESERVED_MEMORY_MIB), domains=tuple(domains), disk_gib=disk_gib,
    )


def placement_requests(count: int, tag: str) -> list[PlacementRequest]:
    """`count` requests with distinct VM ids, cycling through REQUEST_SIZES."""
    return [
        PlacementRequest(f"bench-{tag}-{i:05d}", size.vcpus, size.memory_mib, size.disk_gib)
        for i, size in ((i, REQUEST_SIZES[i % len(REQUEST_SIZES)]) for i in range(count))
    ]


def parse_sizes(text: str) -> tuple[int, ...]:
    """'100,1000' -> (100, 1000). ValueError for anything but positive integers."""
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 1:
        raise ValueError(f"fleet sizes must be positive integers, got {text!r}")
    return sizes


# --- figures: pure ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseStats:
    n: int
    per_s: float  # one decision (or round trip) at a time: 1 / mean latency
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class SizeResult:
    hosts: int
    engine: PhaseStats
    states_p50_ms: float  # build_host_states over every heartbeat (the service keeps its states)
    service: PhaseStats
    echo: PhaseStats
    ingest_s: float  # first heartbeat put -> the scheduler knows every host
    hosts_endpoint: str

    @property
    def ratio(self) -> float:
        return self.service.p50_ms / self.echo.p50_ms

    @property
    def meets_target(self) -> bool:
        return self.service.p99_ms <= TARGET_P99_MS and self.ratio <= TARGET_RATIO

    def misses(self) -> str:
        """What misses the target, e.g. 'svc p99 23.4 ms > 20 ms'; '' when it is met."""
        missed = []
        if self.service.p99_ms > TARGET_P99_MS:
            missed.append(f"svc p99 {self.service.p99_ms:.1f} ms > {TARGET_P99_MS:g} ms")
        if self.ratio > TARGET_RATIO:
            missed.append(f"svc p50 {self.ratio:.1f}x echo > {TARGET_RATIO:g}x")
        return ", ".join(missed)


def phase_stats(samples_s: Sequence[float]) -> PhaseStats:
    """ValueError for no samples."""
    if not samples_s:
        raise ValueError("no samples")
    return PhaseStats(len(samples_s), len(samples_s) / sum(samples_s),
                      percentile(samples_s, 50) * 1000, percentile(samples_s, 99) * 1000)


def format_table(results: Sequence[SizeResult]) -> list[str]:
    """The lines the benchmark prints, under 80 columns (rich wraps longer ones)."""
    lines = [f"{'hosts':>6} {'eng_p50':>8} {'eng_p99':>8} {'svc_p50':>8} {'svc_p99':>8}"
             f" {'echo_p50/p99':>13} {'ratio':>7} {'target':>6}"]
    for r in results:
        echo = f"{r.echo.p50_ms:.2f}/{r.echo.p99_ms:.2f}"
        lines.append(f"{r.hosts:>6} {r.engine.p50_ms:>8.2f} {r.engine.p99_ms:>8.2f} {r.service.p50_ms:>8.2f}"
                     f" {r.service.p99_ms:>8.2f} {echo:>13} {r.ratio:>6.1f}x"
                     f" {'pass' if r.meets_target else 'FAIL':>6}")
    lines += [
        "latencies in ms; eng = choose_host alone, svc = place over NATS, echo = bare",
        "  NATS request/reply, same payload size; ratio = svc p50 / echo p50;",
        f"  target: svc p99 <= {TARGET_P99_MS:g} ms and ratio <= {TARGET_RATIO:g}x",
        *([f"  missed at {r.hosts} hosts: {r.misses()}" for r in results if not r.meets_target]
          or ["  met at every size"]),
        "",
        f"{'hosts':>6} {'n_eng':>6} {'eng/s':>8} {'n_svc':>6} {'svc/s':>7} {'states_p50':>10}"
        f" {'ingest_s':>9} {'beats/s':>8}",
    ]
    for r in results:
        lines.append(f"{r.hosts:>6} {r.engine.n:>6} {r.engine.per_s:>8.1f} {r.service.n:>6}"
                     f" {r.service.per_s:>7.1f} {r.states_p50_ms:>10.2f} {r.ingest_s:>9.2f}"
                     f" {r.hosts / r.ingest_s:>8.0f}")
    lines += [
        "x/s = 1 / mean latency, one at a time; states_p50 = all host states built",
        "  anew (ms), which the service keeps between places; ingest = first KV put",
        "  until the scheduler knows every host",
    ]
    for r in results:
        lines += [f"hosts endpoint at {r.hosts}:", *(f"  {part}" for part in r.hosts_endpoint.split("; "))]
    return lines


# --- the mock fleet -----------------------------------------------------------------------------


class MockFleet:
    """`count` independent test-driver hosts in this process, populated per `domain_plan`.

    Each host is opened from a node file: every open of ``test:///path/node.xml`` is a host of its
    own, whereas every ``test:///default`` connection of a process shares one host."""

    def __init__(self, work_dir: Path, count: int, say: Callable[[str], None]) -> None:
        uris = {}
        for flavour in FLAVOURS:
            path = work_dir / f"node-{flavour.name}.xml"
            path.write_text(node_xml(flavour))
            uris[flavour.name] = f"test://{path}"
        started_s = time.perf_counter()
        self.hosts: list[Hypervisor] = []
        try:
            for i in range(count):
                hv = Hypervisor(uris[flavour_for(i).name])  # no on_lifecycle: no event registration
                hv.connection()
                self.hosts.append(hv)
            opened_s = time.perf_counter() - started_s
            domains = self._populate(work_dir)
        except BaseException:
            self.close()
            raise
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        say(f"mock fleet: {count} hosts opened in {opened_s:.2f} s; {domains} domains defined")
        say(f"  and started in {time.perf_counter() - started_s - opened_s:.2f} s; RSS {rss_mib:.0f} MiB")

    def _populate(self, work_dir: Path) -> int:
        defined = 0
        for i, hv in enumerate(self.hosts):
            for j, size in enumerate(domain_plan(i)):
                vm_id = str(uuid.uuid5(DOMAIN_NAMESPACE, f"{host_id_for(i)}/{j}"))
                spec = DomainSpec(vm_id=vm_id, vm_name=f"{host_id_for(i)}-d{j}", tenant="bench",
                                  vcpus=size.vcpus, memory_mib=size.memory_mib,
                                  disk_path=f"{work_dir}/{vm_id}.qcow2", domain_type="qemu",
                                  disk_gib=size.disk_gib)
                hv.define(build_domain_xml(spec, str(work_dir)))
                hv.start(vm_id)
                defined += 1
        return defined

    def heartbeats(self, count: int) -> dict[str, HostHeartbeat]:
        """Heartbeats of the first `count` hosts, from what each mock host reports."""
        now_s = time.time()
        return {
            host_id_for(i): heartbeat_for(host_id_for(i), hv.host_capacity(), hv.list_domains(),
                                          flavour_for(i).disk_gib, now_s)
            for i, hv in enumerate(self.hosts[:count])
        }

    def close(self) -> None:
        for hv in self.hosts:
            hv.close()


# --- the engine ---------------------------------------------------------------------------------


def measure_engine(heartbeats: Mapping[str, HostHeartbeat], requests: Sequence[PlacementRequest],
                   budget_s: float) -> tuple[PhaseStats, float]:
    """(choose_host figures, p50 ms of build_host_states). BenchError if a request finds no host."""
    policy = SchedulerSettings().placement_policy()  # what the service decides by
    states_s = []
    deadline_s = time.perf_counter() + budget_s / 4
    for _ in range(STATES_SAMPLES):
        started_s = time.perf_counter()
        states = build_host_states(heartbeats, (), time.time(), BENCH_HEARTBEAT_TIMEOUT_S)
        states_s.append(time.perf_counter() - started_s)
        if time.perf_counter() > deadline_s:
            break
    choose_host(states, requests[0], policy)  # warm-up
    samples_s = []
    deadline_s = time.perf_counter() + budget_s
    for req in requests:
        started_s = time.perf_counter()
        decision = choose_host(states, req, policy)
        samples_s.append(time.perf_counter() - started_s)
        if decision.host is None:
            raise BenchError(f"the engine found no host for {req}: {decision.explain()[:300]}")
        if time.perf_counter() > deadline_s:
            break
    return phase_stats(samples_s), percentile(states_s, 50) * 1000


# --- the service over NATS ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceFigures:
    service: PhaseStats
    echo: PhaseStats
    ingest_s: float
    hosts_endpoint: str


def start_nats(run_dir: Path, name: str) -> str:
    """A nats-server with JetStream on a free loopback port; its URL. Stop it with
    ``stop_process(run_dir, name)``."""
    port = free_port()
    store = run_dir / name
    store.mkdir(parents=True, exist_ok=True)
    start_process(name, ["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)], run_dir)
    wait_for(lambda: port_open(port), 20, "nats-server")
    return f"nats://127.0.0.1:{port}"


async def measure_service(nats_url: str, heartbeats: Mapping[str, HostHeartbeat],
                          requests: Sequence[PlacementRequest], budget_s: float) -> ServiceFigures:
    """Run the scheduler service in this process, feed it `heartbeats` through the KV bucket,
    then time `requests` (echo, place, untimed release; one at a time) for at most `budget_s`."""
    settings = SchedulerSettings(nats_url=nats_url, heartbeat_timeout_s=BENCH_HEARTBEAT_TIMEOUT_S)
    service_nc = await connect(settings, "bench-scheduler")
    client_nc = await connect(settings, "bench-client")
    echo_nc = await connect(settings, "bench-echo")
    scheduler = Scheduler(settings)
    watcher = claims_watcher = service = None
    try:
        kv = await heartbeat_bucket(client_nc.jetstream(), settings.heartbeat_bucket)
        placer = await claim_placer(service_nc, scheduler)
        watcher = asyncio.create_task(follow_heartbeats(service_nc, settings, scheduler, placer))
        claims_watcher = asyncio.create_task(follow_claims(service_nc, settings, scheduler))
        service = await start_service(service_nc, scheduler, placer)

        async def echo(msg) -> None:
            await msg.respond(msg.data)

        await echo_nc.subscribe(ECHO_SUBJECT, cb=echo)
        await echo_nc.flush()
        ingest_s = await _feed(kv, heartbeats, scheduler, watcher)
        client = SchedulerClient(client_nc, timeout_s=REQUEST_TIMEOUT_S)
        hosts_endpoint = await _probe_hosts_endpoint(client, scheduler, client_nc.max_payload)
        place_s, echo_s = await _interleave(client, client_nc, requests, budget_s)
        return ServiceFigures(phase_stats(place_s), phase_stats(echo_s), ingest_s, hosts_endpoint)
    finally:
        for task in (watcher, claims_watcher):
            if task is not None:
                task.cancel()
        if service is not None:
            await service.stop()
        for nc in (client_nc, echo_nc, service_nc):
            await nc.close()


async def _feed(kv, heartbeats: Mapping[str, HostHeartbeat], scheduler: Scheduler, watcher) -> float:
    """Put every heartbeat (fresh timestamp) into the bucket; seconds until the scheduler knows
    every host (counted in the in-process scheduler, without paging through the hosts endpoint)."""
    beats = [replace(beat, sent_at_s=time.time()) for beat in heartbeats.values()]
    started_s = time.perf_counter()
    for first in range(0, len(beats), PUT_CONCURRENCY):
        chunk = beats[first:first + PUT_CONCURRENCY]
        await asyncio.gather(*(kv.put(beat.host_id, codec.encode(beat)) for beat in chunk))
    deadline_s = started_s + INGEST_TIMEOUT_S
    while len(scheduler.heartbeats) < len(beats):
        if watcher.done():
            raise BenchError(f"the heartbeat watcher stopped: {watcher.exception()!r}")
        if time.perf_counter() > deadline_s:
            raise BenchError(f"the scheduler knows {len(scheduler.heartbeats)} of {len(beats)} hosts"
                             f" after {INGEST_TIMEOUT_S:g} s")
        await asyncio.sleep(0.01)
    return time.perf_counter() - started_s


async def _probe_hosts_endpoint(client: SchedulerClient, scheduler: Scheduler, max_payload: int) -> str:
    """Whether ``vmflow.scheduler.hosts`` answers (one page), and its size against max_payload."""
    size = f"page {len(codec.encode(scheduler.host_views())) / 1e6:.2f} MB"
    started_s = time.perf_counter()
    try:
        page = await client.hosts()
        answer = f"ok, a page of {len(page.hosts)} of {page.total} hosts"
    except VmflowError as exc:
        answer = f"FAILS with {exc.code}: {exc.message}"
    return (f"{answer} in {time.perf_counter() - started_s:.2f} s; {size},"
            f" max_payload {max_payload / 1e6:.2f} MB")


async def _interleave(client: SchedulerClient, nc, requests: Sequence[PlacementRequest],
                      budget_s: float) -> tuple[list[float], list[float]]:
    """Echo i, place i, release i (untimed), then i + 1, until done or `budget_s` is spent."""
    for req in requests[:WARMUP_REQUESTS]:  # untimed: first-use costs (adapters, subscriptions)
        await nc.request(ECHO_SUBJECT, codec.encode(replace(req, vm_id=f"{req.vm_id}-warm")))
        await client.place(replace(req, vm_id=f"{req.vm_id}-warm"))
        await client.release(f"{req.vm_id}-warm")
    place_s, echo_s = [], []
    deadline_s = time.perf_counter() + budget_s
    for req in requests:
        payload = codec.encode(req)
        started_s = time.perf_counter()
        await nc.request(ECHO_SUBJECT, payload, timeout=REQUEST_TIMEOUT_S)
        echo_s.append(time.perf_counter() - started_s)
        started_s = time.perf_counter()
        await client.place(req)  # NoValidHost would end the run: every request fits an empty host
        place_s.append(time.perf_counter() - started_s)
        await client.release(req.vm_id)
        if time.perf_counter() > deadline_s:
            break
    return place_s, echo_s


# --- the whole run ------------------------------------------------------------------------------


def run_placement_bench(sizes: Sequence[int] = DEFAULT_SIZES, request_count: int = DEFAULT_REQUESTS,
                        budget_s: float = DEFAULT_BUDGET_S,
                        say: Callable[[str], None] = print) -> list[SizeResult]:
    """Measure every fleet size in `sizes`; print the table through `say` and return the figures.
    Stops every nats-server it started and closes every mock host, also on failure."""
    run_dir = Path(tempfile.mkdtemp(prefix="vmflow-bench-placement-"))
    results: list[SizeResult] = []
    say(_load_note("start"))
    failed = True
    fleet = None
    try:
        fleet = MockFleet(run_dir, max(sizes), say)
        for size in sizes:
            results.append(_measure_size(fleet, size, request_count, budget_s, run_dir, say))
        failed = False
    finally:
        if fleet is not None:
            fleet.close()
        if failed:
            say(f"nats-server logs kept in {run_dir / 'logs'}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    say(_load_note("end"))
    for line in format_table(results):
        say(line)
    return results


def _load_note(when: str) -> str:
    """The machine's load: figures taken on a busy machine say so."""
    one, five, _ = os.getloadavg()
    return f"load average at the {when}: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _measure_size(fleet: MockFleet, size: int, request_count: int, budget_s: float, run_dir: Path,
                  say: Callable[[str], None]) -> SizeResult:
    started_s = time.perf_counter()
    heartbeats = fleet.heartbeats(size)
    say(f"{size} hosts: heartbeats built in {time.perf_counter() - started_s:.2f} s; the engine")
    requests = placement_requests(request_count, str(size))
    engine, states_p50_ms = measure_engine(heartbeats, requests, budget_s)
    say(f"{size} hosts: engine {engine.per_s:.1f} decisions/s; the service over NATS")
    name = f"nats-{size}"
    try:
        figures = asyncio.run(measure_service(start_nats(run_dir, name), heartbeats, requests, budget_s))
    finally:
        stop_process(run_dir, name)
    return SizeResult(size, engine, states_p50_ms, figures.service, figures.echo, figures.ingest_s,
                      figures.hosts_endpoint)


def main() -> None:
    from shared.logging import configure_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=parse_sizes, default=DEFAULT_SIZES,
                        help="fleet sizes, comma-separated (default 100,1000,10000)")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help="placements per size, at most")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="time limit of each measured phase per size")
    args = parser.parse_args()
    configure_logging("bench-placement", "warning")  # per-decision info logs would flood the output
    run_placement_bench(args.hosts, args.requests, args.budget_s)


if __name__ == "__main__":
    main()
