"""The benchmark's figures on plain values: percentiles, summaries, ratios and the printed table."""

from __future__ import annotations

import pytest

from deploy.bench import build_result, format_table, percentile, summarize


def test_median_of_an_even_count_lies_halfway_between_the_middle_samples():
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)


def test_median_of_an_odd_count_is_the_middle_sample():
    assert percentile([3.0, 1.0, 2.0], 50) == pytest.approx(2.0)


def test_p95_interpolates_between_the_two_largest_of_five():
    # rank 0.95 * 4 = 3.8: 80 % of the way from 4.0 to 5.0
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 95) == pytest.approx(4.8)


def test_p0_and_p100_are_min_and_max():
    samples = [2.5, 0.5, 9.0, 3.0]
    assert percentile(samples, 0) == 0.5
    assert percentile(samples, 100) == 9.0


def test_a_single_sample_is_every_percentile():
    assert percentile([1.25], 50) == 1.25
    assert percentile([1.25], 95) == 1.25


def test_no_samples_or_a_percentile_out_of_range_is_refused():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


def test_summary_and_ratios_of_platform_over_baseline():
    result = build_result([4.0, 6.0, 5.0], [2.0, 2.5, 3.0], memory_mib=128)
    assert result.platform_samples_s == (4.0, 6.0, 5.0)
    assert result.platform == summarize([4.0, 5.0, 6.0])
    assert (result.platform.n, result.platform.min_s, result.platform.max_s) == (3, 4.0, 6.0)
    assert result.baseline.p50_s == pytest.approx(2.5)
    assert result.p50_ratio == pytest.approx(5.0 / 2.5)
    assert result.p95_ratio == pytest.approx(5.9 / 2.95)


def test_table_rows_show_seconds_with_three_decimals():
    lines = format_table(build_result([4.0, 6.0, 5.0], [2.0, 2.5, 3.0], memory_mib=128))
    assert lines[1].split() == ["platform", "3", "5.000", "5.900", "4.000", "6.000"]
    assert lines[2].split() == ["baseline", "3", "2.500", "2.950", "2.000", "3.000"]
    assert "p50 2.00x, p95 2.00x" in lines[3]
    assert all(len(line) < 80 for line in lines)  # the CLI's console wraps longer lines
