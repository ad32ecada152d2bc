"""The placement benchmark's pure parts: the simulated fleet, the requests, figures and table."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest

from deploy.bench_placement import (
    FLAVOURS,
    RESERVED_MEMORY_MIB,
    PhaseStats,
    SizeResult,
    domain_plan,
    flavour_for,
    format_table,
    heartbeat_for,
    host_id_for,
    node_xml,
    parse_sizes,
    phase_stats,
    placement_requests,
)
from shared.models import DomainSummary


def test_host_ids_sort_like_their_indexes():
    ids = [host_id_for(i) for i in (0, 9, 10, 999, 10_000)]
    assert ids == sorted(ids)
    assert host_id_for(42) == "mock-00042"


def test_twelve_consecutive_hosts_cover_every_flavour_and_fill_level():
    combos = {(flavour_for(i).name, len(domain_plan(i))) for i in range(12)}
    assert combos == {(f.name, n) for f in FLAVOURS for n in (0, 1, 2, 4)}


def test_a_plan_never_exceeds_what_the_host_offers_and_a_full_host_has_no_ram_left():
    for i in range(24):
        flavour, plan = flavour_for(i), domain_plan(i)
        assert sum(d.vcpus for d in plan) <= flavour.vcpus
        assert sum(d.disk_gib for d in plan) <= flavour.disk_gib
        offered_mib = flavour.memory_mib - RESERVED_MEMORY_MIB
        assert sum(d.memory_mib for d in plan) <= offered_mib
        if len(plan) == 4:
            assert offered_mib - sum(d.memory_mib for d in plan) < min(r.memory_mib for r in _requests())


def test_plans_are_deterministic():
    assert [domain_plan(i) for i in range(50)] == [domain_plan(i) for i in range(50)]


def test_node_xml_describes_the_flavour_in_kib():
    root = ET.fromstring(node_xml(FLAVOURS[1]))
    assert root.findtext("cpu/active") == str(FLAVOURS[1].vcpus)
    assert root.findtext("cpu/cores") == str(FLAVOURS[1].vcpus)
    assert int(root.findtext("memory")) == FLAVOURS[1].memory_mib * 1024


def test_heartbeat_keeps_the_reserve_back_and_carries_the_domains():
    domains = [DomainSummary("vm1", "running", 2, 1024, 10)]
    beat = heartbeat_for("mock-00001", (16, 4096), domains, 500, now_s=12.5)
    assert (beat.host_id, beat.sent_at_s, beat.vcpus, beat.disk_gib) == ("mock-00001", 12.5, 16, 500)
    assert beat.memory_mib == 4096 - RESERVED_MEMORY_MIB
    assert beat.domains == tuple(domains) and beat.libvirt_ok and beat.domain_type == "qemu"
    assert heartbeat_for("h", (1, 100), [], 0, 0.0).memory_mib == 0  # never negative


def _requests():
    return placement_requests(8, "t")


def test_requests_have_distinct_ids_and_fit_a_half_full_small_host():
    requests = placement_requests(100, "1000")
    assert len({r.vm_id for r in requests}) == 100
    assert all(r.vm_id.startswith("bench-1000-") for r in requests)
    small = FLAVOURS[0]
    assert max(r.memory_mib for r in requests) <= (small.memory_mib - RESERVED_MEMORY_MIB) // 2
    assert max(r.disk_gib for r in requests) <= small.disk_gib // 2


def test_parse_sizes():
    assert parse_sizes("100,1000") == (100, 1000)
    assert parse_sizes(" 5 ") == (5,)
    for bad in ("", "0", "10,-1", "ten"):
        with pytest.raises(ValueError):
            parse_sizes(bad)


def test_phase_stats_rate_is_one_over_the_mean_and_percentiles_are_in_ms():
    stats = phase_stats([0.001, 0.002, 0.003, 0.004])
    assert stats.n == 4
    assert stats.per_s == pytest.approx(400.0)
    assert stats.p50_ms == pytest.approx(2.5)
    assert stats.p99_ms == pytest.approx(3.97)
    with pytest.raises(ValueError):
        phase_stats([])


def _result(hosts: int) -> SizeResult:
    return SizeResult(
        hosts=hosts,
        engine=PhaseStats(500, 20.5, 48.0, 61.25),
        states_p50_ms=180.0,
        service=PhaseStats(120, 3.9, 250.0, 330.5),
        echo=PhaseStats(120, 2500.0, 0.4, 0.9),
        ingest_s=2.0,
        hosts_endpoint="FAILS with internal: MaxPayloadError() in 0.37 s; reply 3.51 MB, max_payload 1.05 MB",
    )


def test_table_rows_ratio_and_target():
    result = _result(10_000)
    assert result.ratio == pytest.approx(625.0)
    assert not result.meets_target
    lines = format_table([result])
    assert lines[0].split() == ["hosts", "eng_p50", "eng_p99", "svc_p50", "svc_p99", "echo_p50/p99", "ratio",
                                "target"]
    assert lines[1].split() == ["10000", "48.00", "61.25", "250.00", "330.50", "0.40/0.90", "625.0x", "FAIL"]
    assert "  missed at 10000 hosts: svc p99 330.5 ms > 20 ms, svc p50 625.0x echo > 10x" in lines
    diagnostics = lines.index(next(line for line in lines if "n_eng" in line))
    assert lines[diagnostics + 1].split() == ["10000", "500", "20.5", "120", "3.9", "180.00", "2.00", "5000"]
    assert lines[-3:] == ["hosts endpoint at 10000:", "  FAILS with internal: MaxPayloadError() in 0.37 s",
                          "  reply 3.51 MB, max_payload 1.05 MB"]


def test_the_target_is_a_p99_and_a_ratio_to_the_echo_in_the_same_run():
    fast = replace(_result(100), service=PhaseStats(120, 300.0, 3.0, 19.5))
    assert fast.meets_target and fast.misses() == ""
    assert format_table([fast])[1].split()[-1] == "pass" and "  met at every size" in format_table([fast])
    slow_tail = replace(fast, service=PhaseStats(120, 300.0, 3.0, 20.5))
    assert slow_tail.misses() == "svc p99 20.5 ms > 20 ms"
    far_from_echo = replace(fast, service=PhaseStats(120, 300.0, 4.5, 10.0))
    assert far_from_echo.misses() == "svc p50 11.2x echo > 10x"


def test_table_fits_80_columns():
    lines = format_table([_result(100), _result(10_000)])
    assert all(len(line) < 80 for line in lines)
    assert not any("[" in line for line in lines)  # rich would read brackets as markup
