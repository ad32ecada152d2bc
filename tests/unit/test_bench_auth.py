"""The auth benchmark's figures on plain values: the interleaving and the printed table."""

from __future__ import annotations

import pytest

from deploy.bench_auth import (
    AuthFigures,
    format_auth_table,
    quantiles,
    time_interleaved,
)


def test_each_round_makes_every_call_once_in_a_rotating_order():
    order: list[str] = []
    calls = [lambda name=name: order.append(name) for name in "abc"]
    samples = time_interleaved(calls, rounds=3, clock=iter(range(100)).__next__)
    assert order == list("abc" + "bca" + "cab")
    assert [len(s) for s in samples] == [3, 3, 3]
    # Each call took one tick of the fake clock: 1000 ms.
    assert {ms for s in samples for ms in s} == {1000.0}


def test_quantiles_in_milliseconds():
    q = quantiles([float(ms) for ms in range(1, 101)])
    assert (q.n, q.min_ms, q.max_ms) == (100, 1.0, 100.0)
    assert q.p50_ms == pytest.approx(50.5)
    assert q.p99_ms == pytest.approx(99.01)


def test_the_table_sets_the_authenticated_requests_next_to_the_public_one():
    figures = AuthFigures(public_ms=(1.0, 1.0, 1.0), whoami_ms=(1.5, 1.5, 1.5), vms_ms=(3.0, 3.0, 3.0),
                          fresh_first_ms=80.0, fresh_second_ms=3.2, role="admin", vm_count=4)
    lines = format_auth_table(figures)
    assert lines[0].split() == ["n", "p50_ms", "p99_ms", "min_ms", "max_ms"]
    assert lines[1].split()[-5:] == ["3", "1.000", "1.000", "1.000", "1.000"]
    assert lines[3].startswith("GET /v1/vms, token")
    text = "\n".join(lines)
    assert "(whoami - healthz): p50 +0.500 ms, p99 +0.500 ms" in text
    assert "healthz:             p50 +2.000 ms" in text
    assert "1st GET /v1/vms:      80.000 ms (Argon2" in text and "2nd GET /v1/vms:      3.200 ms" in text
    assert "lists 4 VM(s)" in text
    assert max(len(line) for line in lines) < 80
