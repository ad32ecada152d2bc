"""What ``vmflow bench control-plane`` measures with, against running processes: their CPU and
memory, heartbeats as a bare NATS subscriber and as the scheduler see them, the API's listings
and its SSE fan-out."""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from deploy.bench import BenchError
from deploy.bench_control_plane import (
    HOST_FLAVOUR,
    host_id_for,
    planned_vm,
)
from deploy.client import bearer_headers
from deploy.control_plane_figures import (
    EVENT_ID_PREFIX,
    PAGE_LIMIT,
    SSE_DRAIN_S,
    Delivery,
    ListingFigures,
    LivenessCost,
    SseFigures,
    SseStream,
    cpu_seconds,
    delivery,
    event_seq,
    heartbeat_ages,
    hwm_kib,
    rss_kib,
)
from services.host_worker.peers import ring_successors
from services.host_worker.settings import HostWorkerSettings
from services.scheduler.client import SchedulerClient
from services.scheduler.liveness import judge_fleet, signals_from_heartbeats
from services.scheduler.settings import SchedulerSettings
from shared import codec, events, subjects
from shared.errors import VmflowError
from shared.messaging import EventPublisher
from shared.models import DomainSummary, HostHeartbeat, PeerReach

HOSTS_PAGE = 500  # the scheduler's own page size (HostQuery's default)
LISTING_WARMUP_ROUNDS = 1  # a round of 10,000 VMs takes seconds
SSE_CONNECT_TIMEOUT_S = 60.0


# --- processes ----------------------------------------------------------------------------------


class ProcessMeter:
    """CPU seconds and memory of named processes (several pids may share a name)."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        self.pids = {name: list(p) for name, p in pids.items()}
        self._ticks = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> dict[str, float]:
        return {name: sum(self._read(pid, "stat", lambda t: cpu_seconds(t, self._ticks)) for pid in pids)
                for name, pids in self.pids.items()}

    def memory_mib(self) -> dict[str, tuple[float, float]]:
        """name -> (RSS, peak RSS), summed over its pids."""
        return {name: (sum(self._read(pid, "status", rss_kib) for pid in pids) / 1024,
                       sum(self._read(pid, "status", hwm_kib) for pid in pids) / 1024)
                for name, pids in self.pids.items()}

    @staticmethod
    def _read(pid: int, what: str, parse: Callable[[str], float]) -> float:
        try:
            return parse(Path(f"/proc/{pid}/{what}").read_text())
        except (OSError, IndexError, ValueError):
            return float("nan")


# --- heartbeats ---------------------------------------------------------------------------------


class HeartbeatWatch:
    """A bare NATS subscriber on every host's heartbeat subject: the raw baseline of intake."""

    def __init__(self) -> None:
        self.last_sent_s: dict[str, float] = {}
        self.count = 0

    async def start(self, nc) -> None:
        await nc.subscribe(f"{subjects.HEARTBEATS}.*", cb=self._on_beat)
        await nc.flush()

    async def _on_beat(self, msg) -> None:
        self.count += 1
        sent_s = json.loads(msg.data)["sent_at_s"]
        host_id = msg.subject.rsplit(".", 1)[1]
        if sent_s > self.last_sent_s.get(host_id, 0.0):
            self.last_sent_s[host_id] = sent_s


@dataclass(frozen=True)
class IntakeSample:
    phase: str
    sched_ages_s: tuple[float, ...]
    not_up: int  # hosts the scheduler does not call up, or does not know
    raw_ages_s: tuple[float, ...]
    raw_stale: int  # hosts the bare subscriber has not heard from for longer than stale_after_s
    call_ms: float  # paging through the scheduler's hosts endpoint
    error: str = ""


class IntakeSampler:
    """Every ``interval_s``: every host's heartbeat age as the scheduler holds it (its hosts
    endpoint, paged) next to the bare subscriber's, tagged with the current phase."""

    def __init__(self, client: SchedulerClient, watch: HeartbeatWatch, hosts: int, interval_s: float,
                 stale_after_s: float) -> None:
        self._client = client
        self._watch = watch
        self._hosts = hosts
        self._interval_s = interval_s
        self._stale_after_s = stale_after_s
        self.phase = "setup"
        self.samples: list[IntakeSample] = []

    async def run(self) -> None:
        while True:
            self.samples.append(await self.sample())
            await asyncio.sleep(self._interval_s)

    async def sample(self) -> IntakeSample:
        phase = self.phase
        started_s = time.perf_counter()
        views = []
        try:
            while True:
                page = await self._client.hosts(len(views), HOSTS_PAGE)
                views.extend(page.hosts)
                if not page.hosts or len(views) >= page.total:
                    break
        except VmflowError as exc:
            call_ms = (time.perf_counter() - started_s) * 1000
            return IntakeSample(phase, (), self._hosts, (), self._hosts, call_ms, f"{exc.code}: {exc.message}")
        call_ms = (time.perf_counter() - started_s) * 1000
        raw = heartbeat_ages(self._watch.last_sent_s, time.time())
        stale = self._hosts - sum(1 for age in raw if age <= self._stale_after_s)
        up = sum(1 for v in views if v.state == "up")
        return IntakeSample(phase, tuple(v.last_heartbeat_age_s for v in views), self._hosts - up, tuple(raw),
                            stale, call_ms)

    def of_phase(self, phase: str) -> list[IntakeSample]:
        return [s for s in self.samples if s.phase == phase]


async def scheduler_hosts_total(client: SchedulerClient) -> int | None:
    """How many hosts the scheduler knows; None while it does not answer."""
    try:
        return (await client.hosts(0, 1)).total
    except VmflowError:
        return None


def liveness_costs(hosts: int, domains: int) -> tuple[LivenessCost, ...]:
    """As simulated (no peer reports), then with every peer reported: timed at 100 and 200 hosts
    (the growth shows), sized at the fleet's size; then as workers report in a fleet that size
    (their ring successors), with every host fresh and with 10 silent."""
    costs = [liveness_cost(hosts, 0, domains)]
    costs += [liveness_cost(n, n - 1, domains) for n in (100, 200) if n < hosts]
    costs.append(liveness_cost(hosts, hosts - 1, domains, tick=hosts <= 200))
    watch = HostWorkerSettings().peer_watch_count
    if hosts - 1 > watch:
        costs += [liveness_cost(hosts, watch, domains, ring=True, silent=n) for n in (0, 10)]
    return tuple(costs)


def liveness_cost(hosts: int, peers: int, domains: int, tick: bool = True, ring: bool = False,
                  silent: int = 0) -> LivenessCost:
    """One tick of the scheduler's liveness monitor over ``hosts`` heartbeats (``silent`` of them
    stale), each with ``domains`` domains and ``peers`` peer reports: the first ``peers`` other
    hosts, or with ``ring`` the ring successors a worker watches; and one such heartbeat's size
    and decoding time. Without ``tick``, the tick is not timed (NaN): with every peer reported
    it grows like hosts**3."""
    now_s = time.time()
    ids = [host_id_for(i) for i in range(hosts)]
    running = tuple(DomainSummary(f"{i:08d}-0000-4000-8000-000000000000", "running", 1, 512) for i in range(domains))
    stale = set(random.sample(ids, silent))

    def beat(host_id: str) -> HostHeartbeat:
        watched = ring_successors(host_id, ids, peers) if ring else None
        reached = tuple(PeerReach(p, now_s - 0.5) for p in (watched or [p for p in ids if p != host_id][:peers]))
        sent_at_s = now_s - (600 if host_id in stale else 0.5)
        return HostHeartbeat(host_id, sent_at_s, True, "qemu", HOST_FLAVOUR.vcpus, HOST_FLAVOUR.memory_mib,
                             running, HOST_FLAVOUR.disk_gib, peers_reached=reached, worker_started_at_s=now_s - 60,
                             peers_watched=watched)

    tick_ms = float("nan")
    if tick:
        beats = {h: beat(h) for h in ids}
        policy = SchedulerSettings().liveness_policy()
        started_s = time.perf_counter()
        judge_fleet(signals_from_heartbeats(beats, now_s, policy), policy, now_s)
        tick_ms = (time.perf_counter() - started_s) * 1000
    data = codec.encode(beat(ids[0]))
    decodes = 20
    started_s = time.perf_counter()
    for _ in range(decodes):
        codec.decode(HostHeartbeat, data)
    return LivenessCost(hosts, peers, tick_ms, len(data), (time.perf_counter() - started_s) * 1000 / decodes,
                        ring, silent)


# --- the API's listings -------------------------------------------------------------------------


async def measure_listing(api_url: str, token: str, hosts: int, vms: int, rounds: int,
                          budget_s: float) -> ListingFigures:
    """``rounds`` rounds (or as many as ``budget_s`` allows) of GET /healthz, GET /v1/vms and
    GET /v1/hosts, each page at a random offset, in an order rotated by one each round. A
    refusal (a 504 when the scheduler does not answer in time) is counted, its time kept."""
    paths = (lambda: "/healthz", lambda: f"/v1/vms?limit={PAGE_LIMIT}&offset={random.randrange(max(1, vms))}",
             lambda: f"/v1/hosts?limit={PAGE_LIMIT}&offset={random.randrange(max(1, hosts))}")
    samples: list[list[float]] = [[] for _ in paths]
    errors: list[list[str]] = [[] for _ in paths]
    async with httpx.AsyncClient(base_url=api_url, headers=bearer_headers(token), timeout=300) as client:
        first_vms = await client.get(f"/v1/vms?limit={PAGE_LIMIT}&offset=0")
        first_hosts = await client.get(f"/v1/hosts?limit={PAGE_LIMIT}&offset=0")
        deadline_s = time.perf_counter() + budget_s
        for round_index in range(-LISTING_WARMUP_ROUNDS, rounds):
            for k in range(len(paths)):
                i = (round_index + k) % len(paths)
                path = paths[i]()
                started_s = time.perf_counter()
                response = await client.get(path)
                elapsed_ms = (time.perf_counter() - started_s) * 1000
                if round_index < 0:
                    continue
                samples[i].append(elapsed_ms)
                if response.status_code != 200:
                    errors[i].append(f"{response.status_code} {response.text[:160]}")
            if time.perf_counter() > deadline_s:
                break
    if first_vms.status_code != 200:
        raise BenchError(f"GET /v1/vms: {first_vms.status_code} {first_vms.text[:200]}")
    hosts_ok = first_hosts.status_code == 200
    return ListingFigures(
        tuple(samples[0]), tuple(samples[1]), tuple(samples[2]), len(first_vms.json()), len(first_vms.content),
        len(first_hosts.json()) if hosts_ok else 0, int(first_hosts.headers.get("x-total-count", -1)),
        errors=tuple(len(e) for e in errors), first_error=next((e[0] for e in errors if e), ""),
    )


# --- SSE fan-out --------------------------------------------------------------------------------


class SseClient:
    """One GET /v1/events over a raw HTTP/1.1 connection: when each of the benchmark's events
    arrived (its receipt stamped when the bytes carrying it were read)."""

    def __init__(self, api_url: str, token: str) -> None:
        parts = urlsplit(api_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._token = token
        self.connected = asyncio.Event()
        self.received_s: dict[int, float] = {}
        self.status = 0

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        writer.write((f"GET /v1/events HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                      f"Authorization: Bearer {self._token}\r\nAccept: text/event-stream\r\n\r\n").encode())
        stream = SseStream()
        try:
            while not stream.ended:
                data = await reader.read(65536)
                if not data:
                    break
                now_s = time.time()
                for event_id in stream.feed(data):
                    seq = event_seq(event_id)
                    if seq is not None:
                        self.received_s.setdefault(seq, now_s)
                if stream.status:
                    self.status = stream.status
                    self.connected.set()
        finally:
            writer.close()


class BareEventSubscriber:
    """A core NATS subscriber to the same events: the raw baseline of fan-out."""

    def __init__(self) -> None:
        self.received_s: dict[int, float] = {}

    async def start(self, nc, subject: str) -> None:
        await nc.subscribe(subject, cb=self._on_event)
        await nc.flush()

    async def _on_event(self, msg) -> None:
        seq = event_seq((msg.headers or {}).get("Nats-Msg-Id", ""))
        if seq is not None:
            self.received_s.setdefault(seq, time.time())


async def measure_sse(api_url: str, token: str, nc, clients: int, count: int, rate: float,
                      fleet: tuple[int, int, int], say: Callable[[str], None]) -> SseFigures:
    """Connect ``clients`` SSE clients, publish ``count`` VM state events at ``rate`` per second,
    wait for them to arrive (at most SSE_DRAIN_S after the last), then disconnect. ``fleet``:
    (hosts, VMs, tenants); each event is about one of its VMs."""
    sse = [SseClient(api_url, token) for _ in range(clients)]
    tasks = [asyncio.create_task(c.run()) for c in sse]
    bare = BareEventSubscriber()
    await bare.start(nc, f"{subjects.EVENTS_ROOT}.vm.>")
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.connected.wait() for c in sse)), SSE_CONNECT_TIMEOUT_S)
        except TimeoutError:
            say(f"SSE: {sum(not c.connected.is_set() for c in sse)} of {clients} clients not connected after"
                f" {SSE_CONNECT_TIMEOUT_S:g} s; going on with the others")
        streaming = [c for c in sse if c.status == 200]
        if not streaming:
            failed = [t.exception() for t in tasks if t.done() and not t.cancelled() and t.exception()]
            raise BenchError(f"no SSE client got a stream (statuses {sorted({c.status for c in sse})})"
                             f"{f': {failed[0]!r}' if failed else ''}")
        await asyncio.sleep(1.0)  # each client's NATS subscription reaches the server
        say(f"SSE: {len(streaming)} clients connected; publishing {count} events at {rate:g}/s")
        published_s = await _publish_events(EventPublisher(nc.jetstream(), "bench"), count, rate, fleet)
        deadline_s = time.monotonic() + SSE_DRAIN_S
        while time.monotonic() < deadline_s and not all(len(c.received_s) >= count for c in streaming):
            await asyncio.sleep(0.2)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    span_s = max(published_s.values()) - min(published_s.values())
    deliveries: tuple[Delivery, ...] = tuple(delivery(published_s, c.received_s) for c in streaming)
    return SseFigures(clients, count, (count - 1) / span_s if span_s > 0 else float("inf"), deliveries,
                      delivery(published_s, bare.received_s))


async def _publish_events(publisher: EventPublisher, count: int, rate: float,
                          fleet: tuple[int, int, int]) -> dict[int, float]:
    """seq -> when its publish began; one at a time, paced to ``rate``."""
    published_s: dict[int, float] = {}
    started_s = time.monotonic()
    for seq in range(count):
        delay_s = started_s + seq / rate - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        hosts, vms, tenants = fleet
        vm = planned_vm(seq % max(1, vms), hosts, tenants)
        fact = events.VmStateChanged(vm.vm_id, vm.tenant, "running", vm.host_id, None, "vmflow bench control-plane")
        published_s[seq] = time.time()
        await events.publish(publisher, fact, f"{EVENT_ID_PREFIX}{seq}")
    return published_s
