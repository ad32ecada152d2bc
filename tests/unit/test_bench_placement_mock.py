"""The benchmark's mock fleet against libvirt's test driver (in-process, no daemon): each mock
host is its own host, and its heartbeat shows what was defined on it."""

from __future__ import annotations

from pathlib import Path

from deploy.bench_placement import RESERVED_MEMORY_MIB, MockFleet, domain_plan, flavour_for, host_id_for


def test_each_mock_host_is_independent_and_reports_its_own_domains(tmp_path: Path):
    fleet = MockFleet(tmp_path, 8, say=lambda _line: None)
    try:
        beats = fleet.heartbeats(8)
    finally:
        fleet.close()
    assert list(beats) == [host_id_for(i) for i in range(8)]
    for i, beat in enumerate(beats.values()):
        flavour, plan = flavour_for(i), domain_plan(i)
        assert (beat.vcpus, beat.memory_mib) == (flavour.vcpus, flavour.memory_mib - RESERVED_MEMORY_MIB)
        assert len(beat.domains) == len(plan)  # nothing leaks from one host to another
        assert sum(d.memory_mib for d in beat.domains) == sum(d.memory_mib for d in plan)
        assert all(d.state == "running" for d in beat.domains)
    all_ids = [d.vm_id for beat in beats.values() for d in beat.domains]
    assert len(all_ids) == len(set(all_ids))


def test_a_prefix_of_the_fleet_gives_the_first_hosts(tmp_path: Path):
    fleet = MockFleet(tmp_path, 5, say=lambda _line: None)
    try:
        assert list(fleet.heartbeats(2)) == [host_id_for(0), host_id_for(1)]
    finally:
        fleet.close()
