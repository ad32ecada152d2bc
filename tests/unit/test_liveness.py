"""Host liveness from two channels: a dead host is told from a dead worker and from a blip."""

from __future__ import annotations

from services.scheduler.liveness import (
    HostSignals,
    Liveness,
    LivenessPolicy,
    judge_fleet,
    signals_from_heartbeats,
)
from shared.models import HostHeartbeat, PeerReach

POLICY = LivenessPolicy(failure_timeout_s=5, fleet_silence_fraction=0.5, grace_after_outage_s=10)
NOW = 1000.0


def beat(host: str, age_s: float, libvirt_ok: bool = True, reached: dict[str, float] | None = None) -> HostHeartbeat:
    peers = tuple(PeerReach(h, NOW - a) for h, a in (reached or {}).items())
    return HostHeartbeat(host, NOW - age_s, libvirt_ok, "qemu", 2, 1024, peers_reached=peers)


def verdicts(beats: list[HostHeartbeat], quiet_until_s: float = 0.0) -> dict[str, Liveness]:
    signals = signals_from_heartbeats({b.host_id: b for b in beats}, NOW, POLICY)
    return {v.host_id: v.liveness for v in judge_fleet(signals, POLICY, NOW, quiet_until_s)}


def test_a_heartbeating_fleet_is_up():
    fleet = [beat(h, 1, reached={p: 1 for p in ("h1", "h2", "h3") if p != h}) for h in ("h1", "h2", "h3")]
    assert verdicts(fleet) == {"h1": Liveness.UP, "h2": Liveness.UP, "h3": Liveness.UP}


def test_a_host_silent_on_every_channel_has_failed():
    fleet = [beat("h1", 9), beat("h2", 1, reached={"h1": 9, "h3": 1}), beat("h3", 1, reached={"h1": 8, "h2": 1})]
    assert verdicts(fleet)["h1"] is Liveness.FAILED


def test_a_silent_worker_on_a_host_its_peers_still_reach_is_not_a_dead_host():
    fleet = [beat("h1", 9), beat("h2", 1, reached={"h1": 1}), beat("h3", 1, reached={"h1": 2})]
    assert verdicts(fleet)["h1"] is Liveness.WORKER_SILENT


def test_a_worker_that_says_its_libvirt_is_gone_is_believed_only_with_its_peers():
    reached = {"h2": 1, "h3": 1}
    down = [beat("h1", 1, libvirt_ok=False), beat("h2", 1, reached={"h1": 9}), beat("h3", 1, reached={"h1": 9})]
    assert verdicts(down)["h1"] is Liveness.FAILED
    seen = [beat("h1", 1, libvirt_ok=False), beat("h2", 1, reached={"h1": 1}), beat("h3", 1, reached=reached)]
    assert verdicts(seen)["h1"] is Liveness.WORKER_SILENT


def test_a_silent_peer_is_no_witness():
    # h2 last reached h1 a second before h2 itself went silent: that says nothing about now.
    fleet = [beat("h1", 9), beat("h2", 9, reached={"h1": 9.5}), beat("h3", 1), beat("h4", 1), beat("h5", 1)]
    assert verdicts(fleet)["h1"] is Liveness.FAILED


def test_most_of_the_fleet_silent_at_once_fails_no_one():
    fleet = [beat("h1", 9), beat("h2", 9), beat("h3", 1)]
    assert set(verdicts(fleet).values()) == {Liveness.HELD, Liveness.UP}
    assert verdicts(fleet)["h1"] is Liveness.HELD


def test_nobody_fails_during_the_grace_after_an_outage():
    fleet = [beat("h1", 9), beat("h2", 1), beat("h3", 1)]
    assert verdicts(fleet, quiet_until_s=NOW + 3)["h1"] is Liveness.HELD
    assert verdicts(fleet, quiet_until_s=NOW - 1)["h1"] is Liveness.FAILED


def test_a_lone_host_is_never_declared_failed_without_a_witness():
    signals = [HostSignals("h1", 30, True, None, live_peers=0)]
    (verdict,) = judge_fleet(signals, POLICY, NOW)
    assert verdict.liveness is Liveness.HELD and "no live peer" in verdict.reason


def test_one_of_two_hosts_failing_is_a_failure_not_an_outage():
    fleet = [beat("h1", 9), beat("h2", 1, reached={"h1": 9})]
    assert verdicts(fleet)["h1"] is Liveness.FAILED


def test_a_control_plane_outage_seen_from_staggered_heartbeats_fails_no_one():
    # NATS went away 5.6 s ago. h1's last beat is just past the timeout, h2's and h3's not yet:
    # the fleet guard cannot see an outage, but the witnesses' last words were that they had
    # just reached h1. Their silence since is theirs, not evidence about h1.
    fleet = [beat("h1", 5.6, reached={"h2": 5.7, "h3": 5.7}),
             beat("h2", 4.9, reached={"h1": 5.0, "h3": 5.0}),
             beat("h3", 4.7, reached={"h1": 4.8, "h2": 4.8})]
    assert verdicts(fleet)["h1"] is Liveness.WORKER_SILENT


def test_peers_must_have_watched_the_host_fail_for_the_whole_timeout():
    fleet = [beat("h1", 9), beat("h2", 1, reached={"h1": 4}), beat("h3", 1, reached={"h1": 4})]
    assert verdicts(fleet)["h1"] is Liveness.WORKER_SILENT  # they last reached it 3 s before reporting
    fleet = [beat("h1", 9), beat("h2", 1, reached={"h1": 7}), beat("h3", 1, reached={"h1": 7})]
    assert verdicts(fleet)["h1"] is Liveness.FAILED


def watching(host: str, age_s: float, watched: tuple[str, ...], reached: dict[str, float],
             started_age_s: float = 60) -> HostHeartbeat:
    """A beat of a worker in a large fleet: it probes only ``watched``."""
    peers = tuple(PeerReach(h, NOW - a) for h, a in reached.items())
    return HostHeartbeat(host, NOW - age_s, True, "qemu", 2, 1024, peers_reached=peers,
                         worker_started_at_s=NOW - started_age_s, peers_watched=watched)


def test_only_the_peers_that_watch_a_host_speak_of_it():
    # h1 is watched by h2 alone, which still reaches it: its worker is silent, the host lives.
    # h3 watches others only; its silence about h1 (and its fresh start) is no evidence.
    fleet = [beat("h1", 9), watching("h2", 1, ("h1",), {"h1": 1}),
             watching("h3", 1, ("h4",), {"h4": 1}, started_age_s=2), watching("h4", 1, ("h2",), {"h2": 1})]
    signals = {s.host_id: s for s in signals_from_heartbeats({b.host_id: b for b in fleet}, NOW, POLICY)}
    assert signals["h1"].live_peers == 1
    assert verdicts(fleet)["h1"] is Liveness.WORKER_SILENT
    # Its one watcher lost it too: failed, though a peer that does not watch it started 2 s ago.
    fleet[1] = watching("h2", 1, ("h1",), {"h1": 9})
    assert verdicts(fleet)["h1"] is Liveness.FAILED


def test_a_host_nobody_watches_is_held_not_failed():
    fleet = [beat("h1", 9), watching("h2", 1, ("h3",), {"h3": 1}), watching("h3", 1, ("h2",), {"h2": 1})]
    assert verdicts(fleet)["h1"] is Liveness.HELD
