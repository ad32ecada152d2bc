"""Pure host liveness: is a host up, is only its worker silent, or has it failed?

Two channels vouch for a host, and they travel different paths:
- its own heartbeat (the worker reports its libvirt reachable), through NATS;
- its peers: each host-worker reaches the other hosts' libvirtd over the hosts' network and
  reports when it last did.

A host has failed only when neither channel has vouched for ``failure_timeout_s``. A worker
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
    peer_reach_age_s: float | None  # freshest report by a live peer of reaching its libvirt
    live_peers: int  # peers whose own heartbeats are fresh: witnesses for the second channel


@dataclass(frozen=True)
class Verdict:
    host_id: str
    liveness: Liveness
    reason: str


def signals_from_heartbeats(beats: Mapping[str, HostHeartbeat], now_s: float,
                            policy: LivenessPolicy) -> list[HostSignals]:
    """Each host's channels as of ``now_s``. Only peers whose own heartbeat is fresh count as
    witnesses: a silent peer's last word says nothing about now."""
    fresh = {h for h, b in beats.items() if now_s - b.sent_at_s <= policy.failure_timeout_s}
    reached: dict[str, float] = {}
    for witness in fresh:
        for peer in beats[witness].peers_reached:
            if peer.host_id != witness:
                reached[peer.host_id] = max(reached.get(peer.host_id, 0.0), peer.reached_at_s)
    signals = []
    for host_id, beat in sorted(beats.items()):
        peer_at = reached.get(host_id)
        signals.append(HostSignals(
            host_id=host_id,
            heartbeat_age_s=max(0.0, now_s - beat.sent_at_s),
            libvirt_ok=beat.libvirt_ok,
            peer_reach_age_s=None if peer_at is None else max(0.0, now_s - peer_at),
            live_peers=len(fresh - {host_id}),
        ))
    return signals


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
        peers = s.peer_reach_age_s is not None and s.peer_reach_age_s <= timeout_s
        if own:
            verdicts.append(Verdict(s.host_id, Liveness.UP, "heartbeating"))
        elif peers:
            what = "silent" if s.heartbeat_age_s > timeout_s else "reports its libvirt unreachable"
            verdicts.append(Verdict(s.host_id, Liveness.WORKER_SILENT,
                                    f"its worker is {what}, but peers reach its libvirt "
                                    f"({s.peer_reach_age_s:.1f} s ago)"))
        else:
            verdicts.append(_failed_or_held(s, policy, now_s, quiet_until_s, fleet_silent, len(silent),
                                            len(signals)))
    return verdicts


def _failed_or_held(s: HostSignals, policy: LivenessPolicy, now_s: float, quiet_until_s: float,
                    fleet_silent: bool, silent_count: int, fleet_size: int) -> Verdict:
    peer_seen = "never" if s.peer_reach_age_s is None else f"{s.peer_reach_age_s:.1f} s ago"
    heard = (f"no heartbeat for {s.heartbeat_age_s:.1f} s" if s.heartbeat_age_s > policy.failure_timeout_s
             else "its libvirt is unreachable")
    reason = f"{heard}; peers last reached its libvirt {peer_seen}"
    if fleet_silent:
        return Verdict(s.host_id, Liveness.HELD,
                       f"{reason}; held: {silent_count} of {fleet_size} hosts are silent at once "
                       "(a control-plane or network outage, not host failures)")
    if now_s < quiet_until_s:
        return Verdict(s.host_id, Liveness.HELD,
                       f"{reason}; held for {quiet_until_s - now_s:.0f} s more after an outage or a restart")
    if s.live_peers == 0:
        return Verdict(s.host_id, Liveness.HELD, f"{reason}; held: no live peer can confirm it")
    return Verdict(s.host_id, Liveness.FAILED, reason)


def fleet_is_silent(signals: Sequence[HostSignals], policy: LivenessPolicy) -> bool:
    silent = sum(1 for s in signals if s.heartbeat_age_s > policy.failure_timeout_s)
    return len(signals) > 1 and silent > policy.fleet_silence_fraction * len(signals)
