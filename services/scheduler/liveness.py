"""Pure host liveness: is a host up, is only its worker silent, or has it failed?

Two channels vouch for a host, and they travel different paths:
- its own heartbeat (the worker reports its libvirt reachable), through NATS;
- its peers: each host-worker reaches the other hosts' libvirtd over the hosts' network and
  reports when it last did.

A host has failed only when its own heartbeat is silent (or says its libvirt is gone) for
``failure_timeout_s`` and its live peers report, in heartbeats they did manage to send, that
they could not reach its libvirt for that long either. A worker
that is silent while peers still reach its libvirt is a dead worker on a live host: bring the
worker back, never power the host off. When more than ``fleet_silence_fraction`` of the fleet
goes silent at once, the fault is the control plane or the network, not the hosts: nobody is
declared failed then, nor for ``grace_after_outage_s`` afterwards (oVirt's fencing guard).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from shared.models import HostHeartbeat


class Liveness(StrEnum):
    UP = "up"
    WORKER_SILENT = "worker_silent"  # peers reach its libvirt, its own heartbeat is silent
    FAILED = "failed"  # every channel silent for the failure timeout
    HELD = "held"  # would be failed, but the fleet-wide guard holds it back


@dataclass(frozen=True)
class LivenessPolicy:
    failure_timeout_s: float = 6.0
    fleet_silence_fraction: float = 0.5
    grace_after_outage_s: float = 10.0


@dataclass(frozen=True)
class HostSignals:
    host_id: str
    heartbeat_age_s: float
    libvirt_ok: bool  # what the host's last heartbeat said of its own libvirt
    # The peers' word, from their latest heartbeats: how long the peer that reached this host's
    # libvirt most recently had been unable to, when it last reported. None: no live peer
    # reports, or the host's own heartbeat vouches for it (its peers are not asked then).
    peer_silence_s: float | None
    live_peers: int  # peers whose own heartbeats are fresh: witnesses for the second channel


@dataclass(frozen=True)
class Verdict:
    host_id: str
    liveness: Liveness
    reason: str


def signals_from_heartbeats(beats: Mapping[str, HostHeartbeat], now_s: float,
                            policy: LivenessPolicy) -> list[HostSignals]:
    """Each host's channels as of ``now_s``. Only peers whose own heartbeat is fresh are
    witnesses, and a witness speaks of the moment it reported: "I had not reached it for 6 s
    when I said so" is evidence; a witness that could not report (NATS away) says nothing.

    Peers are asked only about hosts whose own heartbeat does not vouch for them (silent, or
    libvirt gone): a healthy fleet costs one look per host, not one per pair of hosts."""
    fresh = {h: b for h, b in beats.items() if now_s - b.sent_at_s <= policy.failure_timeout_s}
    reports: dict[str, dict[str, float]] | None = None  # witness -> host -> when it last reached it
    signals = []
    for host_id, beat in sorted(beats.items()):
        age_s = max(0.0, now_s - beat.sent_at_s)
        witnesses = len(fresh) - (host_id in fresh)
        if age_s <= policy.failure_timeout_s and beat.libvirt_ok:
            signals.append(HostSignals(host_id, age_s, True, None, witnesses))
            continue
        if reports is None:
            reports = {w: {p.host_id: p.reached_at_s for p in b.peers_reached} for w, b in fresh.items()}
            watching_all, watched_by = _watchers(fresh)
        witness_ids = (watching_all | watched_by.get(host_id, set())) - {host_id}
        silences = [max(0.0, fresh[w].sent_at_s - reports[w].get(host_id, fresh[w].worker_started_at_s))
                    for w in sorted(witness_ids)]
        signals.append(HostSignals(host_id, age_s, beat.libvirt_ok, min(silences) if silences else None,
                                   len(silences)))
    return signals


def _watchers(fresh: Mapping[str, HostHeartbeat]) -> tuple[set[str], dict[str, set[str]]]:
    """(the witnesses that watch every peer, host -> the witnesses that watch only some and it
    among them): a witness speaks only of the peers it watches."""
    watching_all: set[str] = set()
    watched_by: dict[str, set[str]] = {}
    for witness_id, beat in fresh.items():
        if beat.peers_watched is None:
            watching_all.add(witness_id)
        else:
            for host_id in beat.peers_watched:
                watched_by.setdefault(host_id, set()).add(witness_id)
    return watching_all, watched_by


def judge_fleet(signals: Sequence[HostSignals], policy: LivenessPolicy, now_s: float,
                quiet_until_s: float = 0.0) -> list[Verdict]:
    """One verdict per host. ``quiet_until_s``: no host is declared failed before then (the
    monitor just started, or the fleet was silent a moment ago)."""
    timeout_s = policy.failure_timeout_s
    silent = [s for s in signals if s.heartbeat_age_s > timeout_s]
    fleet_silent = len(signals) > 1 and len(silent) > policy.fleet_silence_fraction * len(signals)
    verdicts = []
    for s in signals:
        own = s.heartbeat_age_s <= timeout_s and s.libvirt_ok
        peers = s.peer_silence_s is not None and s.peer_silence_s < timeout_s
        if own:
            verdicts.append(Verdict(s.host_id, Liveness.UP, "heartbeating"))
        elif peers:
            what = "is silent" if s.heartbeat_age_s > timeout_s else "reports its libvirt unreachable"
            verdicts.append(Verdict(s.host_id, Liveness.WORKER_SILENT,
                                    f"its worker {what}, but peers reach its libvirt"))
        else:
            verdicts.append(_failed_or_held(s, policy, now_s, quiet_until_s, fleet_silent, len(silent),
                                            len(signals)))
    return verdicts


def _failed_or_held(s: HostSignals, policy: LivenessPolicy, now_s: float, quiet_until_s: float,
                    fleet_silent: bool, silent_count: int, fleet_size: int) -> Verdict:
    heard = (f"no heartbeat for {s.heartbeat_age_s:.1f} s" if s.heartbeat_age_s > policy.failure_timeout_s
             else "its libvirt is unreachable")
    if s.peer_silence_s is None:
        return Verdict(s.host_id, Liveness.HELD, f"{heard}; held: no live peer can confirm it")
    reason = f"{heard}; {s.live_peers} peer(s) cannot reach its libvirt for {s.peer_silence_s:.1f} s"
    if fleet_silent:
        return Verdict(s.host_id, Liveness.HELD,
                       f"{reason}; held: {silent_count} of {fleet_size} hosts are silent at once "
                       "(a control-plane or network outage, not host failures)")
    if now_s < quiet_until_s:
        return Verdict(s.host_id, Liveness.HELD,
                       f"{reason}; held for {quiet_until_s - now_s:.0f} s more after an outage or a restart")
    return Verdict(s.host_id, Liveness.FAILED, reason)


def fleet_is_silent(signals: Sequence[HostSignals], policy: LivenessPolicy) -> bool:
    silent = sum(1 for s in signals if s.heartbeat_age_s > policy.failure_timeout_s)
    return len(signals) > 1 and silent > policy.fleet_silence_fraction * len(signals)
