"""The control-plane benchmark's pure parts: its arguments, the simulated fleet, the SSE
reader, /proc parsing, the figures and the printed report. No process is started here."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from deploy.bench_control_plane import (
    BenchArgs,
    fleet_plan,
    host_id_for,
    parse_args,
    process_slices,
    vms_of_host,
)
from deploy.control_plane_figures import (
    EVENT_ID_PREFIX,
    Delivery,
    ListingFigures,
    LivenessCost,
    PhaseFigures,
    Report,
    SseFigures,
    SseStream,
    cpu_seconds,
    delivery,
    event_seq,
    format_report,
    heartbeat_ages,
    hwm_kib,
    quantiles,
    rss_kib,
)

# --- arguments ----------------------------------------------------------------------------------


def test_the_issue_s_command_line_parses_and_the_rest_keeps_its_defaults():
    args = parse_args(["--hosts", "1000", "--vms", "10000", "--sse-clients", "100"])
    assert (args.hosts, args.vms, args.sse_clients) == (1000, 10_000, 100)
    assert args.heartbeat_interval_s == 1.0  # the host worker's own default
    assert args.processes == 4


def test_a_small_fleet_runs_in_one_process_and_a_request_is_capped():
    assert parse_args(["--hosts", "100"]).processes == 1
    assert BenchArgs(hosts=3, sim_processes=9).processes == 3
    assert BenchArgs(hosts=5000, sim_processes=9).processes == 4


@pytest.mark.parametrize("argv", [["--hosts", "0"], ["--vms", "-1"], ["--event-rate", "0"],
                                  ["--hosts", "many"]])
def test_bad_values_end_with_a_usage_message(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# --- the fleet ----------------------------------------------------------------------------------


def test_every_host_runs_its_share_of_the_vms_across_several_tenants():
    plan = fleet_plan(hosts=100, vms=1000, tenants=10)
    per_host = Counter(vm.host_id for vm in plan)
    assert len(per_host) == 100 and set(per_host.values()) == {10}
    assert len({vm.vm_id for vm in plan}) == 1000
    assert {len({vm.tenant for vm in plan if vm.host_id == h}) for h in per_host} == {10}
    assert len({(vm.tenant, vm.name) for vm in plan}) == 1000  # names are unique per tenant


def test_a_host_s_vms_are_what_the_plan_puts_on_it():
    plan = fleet_plan(hosts=7, vms=50, tenants=3)
    for index in range(7):
        assert vms_of_host(index, 7, 50, 3) == [vm for vm in plan if vm.host_id == host_id_for(index)]


def test_the_plan_is_the_same_in_every_process():
    assert fleet_plan(10, 20, 2) == fleet_plan(10, 20, 2)


def test_host_ids_sort_like_their_indexes():
    ids = [host_id_for(i) for i in (0, 9, 10, 999, 10_000)]
    assert ids == sorted(ids)


def test_process_slices_cover_every_host_once():
    assert process_slices(1000, 4) == [(0, 250), (250, 250), (500, 250), (750, 250)]
    assert process_slices(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert process_slices(2, 4) == [(0, 1), (1, 1)]


# --- figures ------------------------------------------------------------------------------------


def test_quantiles_and_no_samples():
    q = quantiles([float(x) for x in range(1, 101)])
    assert (q.n, q.max) == (100, 100.0)
    assert q.p50 == pytest.approx(50.5) and q.p99 == pytest.approx(99.01)
    assert quantiles([]).n == 0 and math.isnan(quantiles([]).p50)


def test_heartbeat_ages_never_go_negative():
    assert heartbeat_ages({"a": 10.0, "b": 12.5, "c": 13.0}, now_s=12.5) == [2.5, 0.0, 0.0]


def test_proc_status_and_stat():
    status = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert (rss_kib(status), hwm_kib(status)) == (102400, 204800)
    assert rss_kib("Name:\tzombie\n") == 0
    # The command may hold spaces and parentheses; utime and stime are fields 14 and 15.
    stat = "4242 (python -m (x)) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0"
    assert cpu_seconds(stat, clock_ticks=100) == pytest.approx(3.0)


def test_event_ids_of_the_benchmark_and_of_everything_else():
    assert event_seq(f"{EVENT_ID_PREFIX}42") == 42
    assert event_seq("liveness-sim-00001-up-1") is None
    assert event_seq(f"{EVENT_ID_PREFIX}x") is None


def test_delivery_counts_losses_lags_and_the_rate_up_to_the_last_receipt():
    published = {0: 100.0, 1: 100.5, 2: 101.0, 3: 101.5}
    got = delivery(published, {0: 100.010, 1: 100.530, 3: 102.0})
    assert (got.delivered, got.lost) == (3, 1)
    assert got.lags_ms == pytest.approx((10.0, 30.0, 500.0))
    assert got.per_s == pytest.approx(3 / 2.0)
    assert delivery(published, {}) == Delivery(0, 4, 0.0, ())


# --- the SSE reader -----------------------------------------------------------------------------

CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"d\r\n: connected\n\n\r\n"
           b"2b\r\nid: cpbench-0\nevent: state\ndata: {\"a\": 1}\n\n\r\n"
           b"2b\r\nid: cpbench-1\nevent: state\ndata: {\"a\": 2}\n\n\r\n"
           b"0\r\n\r\n")


def test_sse_ids_come_out_of_a_chunked_response_however_it_is_split():
    for size in (1, 2, 3, 7, 64, len(CHUNKED)):
        stream, ids = SseStream(), []
        for start in range(0, len(CHUNKED), size):
            ids += stream.feed(CHUNKED[start:start + size])
        assert ids == ["cpbench-0", "cpbench-1"], size
        assert stream.status == 200 and stream.ended


def test_sse_without_chunking_and_a_refusal():
    stream = SseStream()
    assert stream.feed(b"HTTP/1.1 200 OK\r\n\r\n: connected\n\nid: a\ndata: {}\n\nid: b") == ["a"]
    assert stream.feed(b"\ndata: {}\n\n") == ["b"]
    refused = SseStream()
    refused.feed(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\n{}")
    assert refused.status == 401


# --- the report ---------------------------------------------------------------------------------


def _report() -> Report:
    q = quantiles([0.2, 0.5, 0.9])
    phase = PhaseFigures("idle", 10.0, {"scheduler": 9.5, "api": 2.0}, q, q, 3, 0, quantiles([40.0]), 998.0, 1000.0)
    listing = ListingFigures((1.0, 2.0), (900.0, 1100.0), (20.0, 30.0), 10_000, 4_500_000, 100, 1000, (0, 0, 1),
                             '504 {"error":{"code":"timeout","message":"vmflow.scheduler.hosts did not answer"}}')
    sse = SseFigures(2, 3, 100.0, (delivery({0: 1.0, 1: 1.01, 2: 1.02}, {0: 1.1, 1: 1.2, 2: 1.3}),
                                   delivery({0: 1.0, 1: 1.01, 2: 1.02}, {0: 1.1})),
                     delivery({0: 1.0, 1: 1.01, 2: 1.02}, {0: 1.001, 1: 1.011, 2: 1.021}))
    return Report(BenchArgs(hosts=1000, vms=10_000), {"inventory seeded": 3.0},
                  {"scheduler": (300.0, 310.0), "api": (200.0, 250.0)}, 70.0, 270.0, 1000, (phase,), listing, sse,
                  liveness=(LivenessCost(1000, 0, 600.0, 1700, 0.04), LivenessCost(1000, 999, math.nan, 58000, 1.2)),
                  notes=("load average at the start: 1.00",))


def test_the_report_sets_each_figure_beside_its_baseline_under_80_columns():
    lines = format_report(_report())
    text = "\n".join(lines)
    assert max(len(line) for line in lines) < 80
    assert "limit/offset are ignored" in text
    [hosts_row] = [line for line in lines if line.startswith("GET /v1/hosts")]
    assert hosts_row.split()[-1] == "1"  # one answer that was not a 200
    assert "first refusal: 504" in text
    assert "GET /healthz" in text and "bare NATS sub" in text and "raw age" in text
    assert "clients streaming: 2 of 2; that got every event: 1;" in text
    assert "most events one lost: 2" in text
    assert "(205 KiB per host)" in text  # (270 - 70) MiB over 1000 hosts
    [scheduler_row] = [line for line in lines if line.startswith("scheduler ") and "RSS" not in line]
    assert scheduler_row.split()[-1] == "95"  # 9.5 CPU seconds in 10 s: 95 % of one core
    [untimed] = [line for line in lines if line.split()[:2] == ["1000", "999"]]
    assert untimed.split()[3] == "-"  # hosts, peers, silent, tick
    assert lines[-1] == "load average at the start: 1.00"


def test_lags_of_seconds_print_as_whole_milliseconds():
    late = SseFigures(1, 2, 100.0, (delivery({0: 1.0, 1: 1.01}, {0: 61.0, 1: 70.0}),),
                      delivery({0: 1.0, 1: 1.01}, {0: 1.001, 1: 1.011}))
    text = "\n".join(format_report(Report(BenchArgs(), sse=late)))
    assert "64495/68900/68990" in text
