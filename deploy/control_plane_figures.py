"""The control-plane benchmark's figures, pure: quantiles, /proc readings, the SSE reader, what
each subscriber got of the events, and the printed report (``deploy.bench_control_plane``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deploy.bench import PERCENTILE_METHOD, percentile

if TYPE_CHECKING:
    from deploy.bench_control_plane import BenchArgs

EVENT_ID_PREFIX = "cpbench-"
SCHEDULER_TIMEOUT_S = 30.0  # the benchmark's own requests to the scheduler's hosts endpoint
SSE_DRAIN_S = 10.0  # after the last publish, how long clients may take to get every event
PAGE_LIMIT = 100


@dataclass(frozen=True)
class Quantiles:
    n: int
    p50: float
    p99: float
    max: float


NO_SAMPLES = Quantiles(0, math.nan, math.nan, math.nan)


def quantiles(samples: Sequence[float]) -> Quantiles:
    """NO_SAMPLES (NaNs) for no samples: a phase that saw nothing prints 'nan', it does not fail."""
    if not samples:
        return NO_SAMPLES
    return Quantiles(len(samples), percentile(samples, 50), percentile(samples, 99), max(samples))


def heartbeat_ages(last_sent_s: Mapping[str, float], now_s: float) -> list[float]:
    return [max(0.0, now_s - sent_s) for sent_s in last_sent_s.values()]


def rss_kib(proc_status: str) -> int:
    """VmRSS of a /proc/<pid>/status text, in KiB; 0 when absent (a zombie)."""
    return _status_kib(proc_status, "VmRSS:")


def hwm_kib(proc_status: str) -> int:
    """VmHWM (peak RSS) of a /proc/<pid>/status text, in KiB."""
    return _status_kib(proc_status, "VmHWM:")


def _status_kib(proc_status: str, key: str) -> int:
    for line in proc_status.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def cpu_seconds(proc_stat: str, clock_ticks: int) -> float:
    """utime + stime of a /proc/<pid>/stat text (the command may hold spaces and parentheses)."""
    fields = proc_stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / clock_ticks  # fields 14 and 15 of stat(5)


class SseStream:
    """Reads the raw bytes of an HTTP/1.1 response to GET /v1/events, chunked or not, and
    yields the SSE ``id:`` of each event as it completes. Pure and incremental: bytes may be
    split anywhere."""

    def __init__(self) -> None:
        self.status = 0
        self.ended = False
        self._raw = b""
        self._headers_done = False
        self._chunked = False
        self._chunk_left = 0
        self._need_crlf = False
        self._body = b""

    def feed(self, data: bytes) -> list[str]:
        self._raw += data
        if not self._headers_done and not self._read_headers():
            return []
        self._dechunk() if self._chunked else self._take(len(self._raw))
        return self._ids()

    def _read_headers(self) -> bool:
        end = self._raw.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self._raw[:end].decode("latin-1").split("\r\n")
        self.status = int(head[0].split()[1])
        self._chunked = any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in head[1:])
        self._raw = self._raw[end + 4:]
        self._headers_done = True
        return True

    def _take(self, n: int) -> None:
        self._body += self._raw[:n]
        self._raw = self._raw[n:]

    def _dechunk(self) -> None:
        while self._raw and not self.ended:
            if self._need_crlf:
                if len(self._raw) < 2:
                    return
                self._raw = self._raw[2:]
                self._need_crlf = False
            elif self._chunk_left:
                n = min(self._chunk_left, len(self._raw))
                self._take(n)
                self._chunk_left -= n
                self._need_crlf = self._chunk_left == 0
            else:
                line_end = self._raw.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(self._raw[:line_end].split(b";")[0], 16)
                self._raw = self._raw[line_end + 2:]
                self._chunk_left = size
                self.ended = size == 0

    def _ids(self) -> list[str]:
        *lines, self._body = self._body.split(b"\n")
        return [line[4:].strip().decode() for line in lines if line.startswith(b"id: ")]


def event_seq(event_id: str) -> int | None:
    """The benchmark's sequence number of an event id; None for every other event."""
    if not event_id.startswith(EVENT_ID_PREFIX):
        return None
    try:
        return int(event_id[len(EVENT_ID_PREFIX):])
    except ValueError:
        return None


@dataclass(frozen=True)
class Delivery:
    """What one subscriber (an SSE client, or the bare NATS subscriber) got of the events."""

    delivered: int
    lost: int
    per_s: float  # delivered / (its last receipt - the first publish)
    lags_ms: tuple[float, ...]


def delivery(published_s: Mapping[int, float], received_s: Mapping[int, float]) -> Delivery:
    """``published_s``: seq -> when it was published; ``received_s``: seq -> when it arrived."""
    lags = tuple((received_s[seq] - sent) * 1000 for seq, sent in published_s.items() if seq in received_s)
    if not lags:
        return Delivery(0, len(published_s), 0.0, ())
    span_s = max(received_s.values()) - min(published_s.values())
    return Delivery(len(lags), len(published_s) - len(lags), len(lags) / span_s if span_s > 0 else math.inf, lags)


@dataclass(frozen=True)
class SseFigures:
    clients: int  # asked for
    published: int
    publish_rate: float  # achieved, events/s
    sse: tuple[Delivery, ...]  # one per client that got its stream (200) in time
    bare: Delivery

    @property
    def lag_ms(self) -> Quantiles:
        return quantiles([lag for d in self.sse for lag in d.lags_ms])


@dataclass(frozen=True)
class ListingFigures:
    healthz_ms: tuple[float, ...]
    vms_ms: tuple[float, ...]
    hosts_ms: tuple[float, ...]
    vms_items: int  # what one GET /v1/vms?limit=100 returned
    vms_bytes: int
    hosts_items: int
    hosts_total: int  # X-Total-Count
    errors: tuple[int, int, int] = (0, 0, 0)  # answers other than 200, per kind (their time is in the samples)
    first_error: str = ""


@dataclass(frozen=True)
class PhaseFigures:
    name: str
    wall_s: float
    cpu_s: Mapping[str, float]  # process -> CPU seconds in the phase
    sched_age_s: Quantiles  # every host's heartbeat age, every sample, as the scheduler holds it
    raw_age_s: Quantiles  # the same, as the bare NATS subscriber saw the heartbeats
    sched_not_up_max: int  # most hosts not 'up' (or not known) in one sample
    raw_stale_max: int  # most hosts the bare subscriber had not heard for > the scheduler's timeout
    hosts_call_ms: Quantiles  # paging through the scheduler's hosts endpoint, once per sample
    published_per_s: float  # heartbeats the simulated hosts published
    carried_per_s: float  # heartbeats the bare subscriber received
    sched_errors: int = 0  # samples the scheduler's hosts endpoint did not answer

    def cpu_percent(self, process: str) -> float:
        """The process's CPU time over the phase's wall time, in % of one core (NaN: unknown)."""
        return 100 * self.cpu_s.get(process, math.nan) / self.wall_s if self.wall_s > 0 else math.nan


@dataclass(frozen=True)
class LivenessCost:
    """The scheduler's own liveness code over a fleet, timed in this process."""

    hosts: int
    peers: int  # PeerReach entries in each heartbeat
    tick_ms: float  # signals_from_heartbeats + judge_fleet: one tick of the monitor
    beat_bytes: int  # one heartbeat as published
    decode_ms: float  # one heartbeat decoded, as the scheduler and the API decode each
    ring: bool = False  # each host watches ``peers`` peers (its ring successors), not every one
    silent: int = 0  # hosts whose own heartbeat is stale: their peers are asked


@dataclass(frozen=True)
class Report:
    args: BenchArgs
    setup: Mapping[str, float] = field(default_factory=dict)  # step -> seconds
    memory_mib: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # process -> (rss, peak)
    sched_rss_no_hosts_mib: float = math.nan
    sched_rss_all_hosts_mib: float = math.nan
    hosts_known: int = 0
    phases: tuple[PhaseFigures, ...] = ()
    listing: ListingFigures | None = None
    sse: SseFigures | None = None
    liveness: tuple[LivenessCost, ...] = ()
    liveness_interval_s: float = 0.5
    notes: tuple[str, ...] = ()


def _q(q: Quantiles, fmt: str = ".1f") -> str:
    """p50/p99/max; whole numbers once they reach 1,000 (columns stay narrow)."""
    fmt = ".0f" if q.max >= 1000 else fmt
    return f"{q.p50:{fmt}}/{q.p99:{fmt}}/{q.max:{fmt}}"


def format_report(r: Report) -> list[str]:
    """The lines the benchmark prints, under 80 columns (rich wraps longer ones)."""
    a = r.args
    lines = [f"control plane: {a.hosts} hosts, {a.vms} VMs ({a.tenants} tenants), {a.sse_clients} SSE clients,",
             f"  heartbeat every {a.heartbeat_interval_s:g} s, {a.processes} simulated-host process(es)"]
    lines += [f"  {step}: {seconds:.1f} s" for step, seconds in r.setup.items()]
    lines += ["", "heartbeat intake, by phase (ages in s, p50/p99/max; 'raw' = a bare",
              "NATS subscriber on the heartbeat subjects, same moments):",
              f"{'phase':8} {'sched age':>15} {'raw age':>15} {'!up':>4} {'stale':>5}"
              f" {'pub/s':>6} {'raw/s':>6} {'hosts ms':>8} {'err':>3}"]
    for p in r.phases:
        lines.append(f"{p.name:8} {_q(p.sched_age_s, '.2f'):>15} {_q(p.raw_age_s, '.2f'):>15}"
                     f" {p.sched_not_up_max:>4} {p.raw_stale_max:>5} {p.published_per_s:>6.0f}"
                     f" {p.carried_per_s:>6.0f} {p.hosts_call_ms.p50:>8.0f} {p.sched_errors:>3}")
    lines += [f"  expected {a.hosts / a.heartbeat_interval_s:.0f} beats/s; !up = most hosts the scheduler did not",
              "  call up in one sample; stale = most the raw subscriber had not heard for",
              "  > 5 s; hosts ms = p50 of paging its hosts endpoint (500 a page);",
              f"  err = samples it did not answer ({SCHEDULER_TIMEOUT_S:g} s)"]
    if r.listing is not None:
        lines += [""] + _listing_lines(r.listing)
    if r.sse is not None:
        lines += [""] + _sse_lines(r.sse)
        sse_phase = next((p for p in r.phases if p.name == "sse"), None)
        delivered = sum(d.delivered for d in r.sse.sse)
        if sse_phase is not None and delivered:
            lines.append(f"  API CPU per SSE message delivered: {1000 * sse_phase.cpu_s.get('api', math.nan) / delivered:.2f}"
                         " ms (all its work in the phase)")
    lines += ["", "memory (RSS MiB at the end/peak) and CPU by phase (% of one core):"]
    lines.append(f"{'process':14} {'rss/peak':>11} " + " ".join(f"{p.name:>8}" for p in r.phases))
    for name, (rss, peak) in r.memory_mib.items():
        cpu = " ".join(f"{p.cpu_percent(name):>8.0f}" for p in r.phases)
        lines.append(f"{name:14} {f'{rss:.0f}/{peak:.0f}':>11} {cpu}")
    lines.append(f"{'(phase wall s)':14} {'':>11} " + " ".join(f"{p.wall_s:>8.1f}" for p in r.phases))
    lines += [f"scheduler RSS: {r.sched_rss_no_hosts_mib:.0f} MiB with no host, {r.sched_rss_all_hosts_mib:.0f} MiB"
              f" with {r.hosts_known} known"]
    if r.hosts_known and not math.isnan(r.sched_rss_all_hosts_mib):
        per_host = (r.sched_rss_all_hosts_mib - r.sched_rss_no_hosts_mib) * 1024 / r.hosts_known
        lines.append(f"  ({per_host:.0f} KiB per host)")
    if r.liveness:
        lines += ["", f"the scheduler's liveness tick (its own code, timed here; it runs every"
                      f" {r.liveness_interval_s:g} s):",
                  f"{'hosts':>7} {'peers/beat':>10} {'silent':>6} {'tick ms':>9} {'beat KB':>8} {'decode ms':>9}"]
        lines += [f"{c.hosts:>7} {f'{c.peers} ring' if c.ring else c.peers:>10} {c.silent:>6}"
                  f" {'-' if math.isnan(c.tick_ms) else f'{c.tick_ms:.1f}':>9}"
                  f" {c.beat_bytes / 1024:>8.1f} {c.decode_ms:>9.3f}" for c in r.liveness]
        lines += ["  peers/beat: the simulated hosts report none; a worker reports every peer",
                  "  (hosts - 1) up to 9 hosts, past that its 8 ring successors ('ring');",
                  "  silent: hosts with a stale heartbeat, whose peers are asked;",
                  "  '-': not timed (grows ~hosts^3)",
                  "  a tick blocks the scheduler's event loop: no heartbeat, place or hosts",
                  "  request is served meanwhile"]
    lines += [f"percentiles: {PERCENTILE_METHOD}", *r.notes]
    return lines


def _listing_lines(li: ListingFigures) -> list[str]:
    rows = (("GET /healthz", li.healthz_ms), (f"GET /v1/vms?limit={PAGE_LIMIT}", li.vms_ms),
            (f"GET /v1/hosts?limit={PAGE_LIMIT}", li.hosts_ms))
    lines = ["listing, admin token, interleaved (ms):",
             f"{'':24} {'n':>5} {'p50':>9} {'p99':>9} {'max':>9} {'!200':>5}"]
    for (label, samples), errors in zip(rows, li.errors):
        q = quantiles(samples)
        lines.append(f"{label:24} {q.n:>5} {q.p50:>9.2f} {q.p99:>9.2f} {q.max:>9.2f} {errors:>5}")
    if li.first_error:
        lines += [f"  first refusal: {li.first_error[:60]}", f"    {li.first_error[60:130]}"]
    lines.append(f"  /v1/vms answered {li.vms_items} VMs ({li.vms_bytes / 1e6:.2f} MB) per request")
    if li.vms_items > PAGE_LIMIT:
        lines.append("  (limit/offset are ignored: the route has no paging, it lists all)")
    if li.hosts_total < 0:
        lines.append("  /v1/hosts: its first request failed (no page size to show)")
    else:
        lines.append(f"  /v1/hosts answered {li.hosts_items} of {li.hosts_total} hosts per request")
    return lines


def _sse_lines(s: SseFigures) -> list[str]:
    rates = [d.per_s for d in s.sse]
    lost = [d.lost for d in s.sse]
    complete = sum(1 for d in s.sse if d.lost == 0)
    lag, bare = s.lag_ms, quantiles(s.bare.lags_ms)
    return [
        f"SSE: {s.published} events at {s.publish_rate:.0f}/s to {s.clients} clients of GET /v1/events",
        f"{'':18} {'delivered':>10} {'lost':>7} {'ev/s p50':>9} {'ev/s min':>9} {'lag p50/p99/max ms':>20}",
        f"{'SSE, all clients':18} {sum(d.delivered for d in s.sse):>10} {sum(lost):>7}"
        f" {quantiles(rates).p50 if rates else math.nan:>9.1f} {min(rates, default=math.nan):>9.1f}"
        f" {_q(lag):>20}",
        f"{'bare NATS sub':18} {s.bare.delivered:>10} {s.bare.lost:>7} {s.bare.per_s:>9.1f} {'':>9}"
        f" {_q(bare):>20}",
        f"  clients streaming: {len(s.sse)} of {s.clients}; that got every event: {complete};",
        f"  most events one lost: {max(lost, default=0)}",
        "  ev/s = delivered / (last receipt - first publish), per client; lost = not",
        f"  there {SSE_DRAIN_S:g} s after the last publish; lag = publish to receipt",
    ]
