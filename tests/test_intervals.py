"""Medians over interleaved repeats: the order-statistic interval's coverage, the paired ratios, the round-robin order
of the benchmark's runs, and the tables showing an interval only where the record has one."""

from __future__ import annotations

import numpy as np
import pytest

from edgequant.measure import intervals, processes
from edgequant.measure.intervals import combine, coverage, median_interval, paired, ranks
from edgequant.measure.summary import summarize
from edgequant.params import BenchmarkParams, ParamsError, parse
from edgequant.report.tables import spread, summary_table

TRIALS = 20_000  # simulated runs of 6 repeats: the coverage estimate's standard error is 0.12 %
COVERAGE_TOLERANCE = 0.006  # about 5 standard errors


def test_six_repeats_give_min_to_max_at_96_9_percent_and_five_give_no_interval():
    assert coverage(6, 1) == 1 - 2 * 0.5**6 == 0.96875
    assert ranks(6) == (1, 6) and ranks(5) is None and ranks(1) is None
    assert median_interval([5.0, 1.0, 4.0, 2.0, 6.0, 3.0]) == (3.5, 1.0, 6.0)
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, None, None)  # 93.8 % < 95 %: the median stands alone


@pytest.mark.parametrize(("k", "expected"), [(6, (1, 6)), (8, (1, 8)), (9, (2, 8)), (10, (2, 9)), (20, (6, 15)), (30, (10, 21))])
def test_the_ranks_are_the_narrowest_pair_that_covers_95_percent(k, expected):
    """The published table of distribution-free confidence intervals for the median (e.g. n = 20: x(6), x(15))."""
    assert ranks(k) == expected
    j = expected[0]
    assert coverage(k, j) >= 0.95 > coverage(k, j + 1)


def test_the_interval_covers_a_skewed_distributions_median_as_often_as_stated():
    """Timings are skewed: draw 6 repeats from a log-normal (median 1) many times; [min, max] holds 1 in 96.9 %."""
    rng = np.random.default_rng(0)
    draws = rng.lognormal(mean=0.0, sigma=0.5, size=(TRIALS, 6))
    held = np.mean([low <= 1.0 <= high for _, low, high in map(median_interval, draws.tolist())])
    assert held == pytest.approx(coverage(6, 1), abs=COVERAGE_TOLERANCE)


def test_a_ratio_is_paired_within_each_round_so_a_drifting_machine_cancels():
    """The machine runs at full speed in odd rounds and half speed in even ones: both methods slow alike."""
    method = [200.0, 100.0, 200.0, 100.0, 200.0, 100.0]
    base = [100.0, 50.0, 100.0, 50.0, 100.0, 50.0]
    assert paired("speedup", method, base) == {"speedup": 2.0, "speedup_ci95_low": 2.0, "speedup_ci95_high": 2.0}
    with pytest.raises(ValueError, match="5 rounds against 6"):
        paired("speedup", method[:5], base)


def repeat(ips: float, p50: float, calls: list[float] | None = None, **extra) -> dict:
    return {"throughput_ips": ips, "latency_ms_p50": p50, "latency_ms_calls": calls or [p50] * 4, "peak_rss_mib": 100.0, **extra}


def test_the_tail_is_pooled_over_every_repeats_calls():
    """One call in 50 takes 10 ms, the rest 1 ms: 2 % of calls are slow, so the p99 is 10 ms. The 300 calls of six
    repeats pooled say so; each repeat's own p99 of 50 calls interpolates to 5.59 ms, and so would their median."""
    calls = [[1.0] * 49 + [10.0] for _ in range(6)]
    combined = combine([repeat(1000.0, 1.0, c, **({"minor_faults_per_batch": 7.0} if i == 0 else {})) for i, c in enumerate(calls)])
    assert combined["latency_ms_p99"] == 10.0 and combined["latency_ms_p90"] == 1.0
    assert combined["latency_ms_mean"] == pytest.approx(1.18)
    assert np.percentile(calls[0], 99) == pytest.approx(5.59)
    assert combined["minor_faults_per_batch"] == 7.0 and combined["peak_rss_mib"] == 100.0


def test_summarize_reports_medians_intervals_and_paired_speedups_under_the_old_keys():
    eager = [1000.0, 900.0, 1100.0, 950.0, 1050.0, 1000.0]
    runs = {
        ("fp32", 1): [repeat(ips, 2.0 + i / 10) for i, ips in enumerate(eager)],
        ("dynamic_int8", 1): [repeat(2 * ips, 1.0 + i / 10) for i, ips in enumerate(eager)],
    }
    acc = {m: {"accuracy_pct": 99.0} for m in ("fp32", "dynamic_int8")}
    peaks = {1: {"fp32_gmacs": 1.0, "int8_gmacs": 1.0}}
    metrics, rows = summarize(["fp32", "dynamic_int8"], {"fp32": 4, "dynamic_int8": 1}, runs, peaks, acc, "cnn")
    r = metrics["methods"]["dynamic_int8"]["threads_1"]
    assert metrics["repeats"] == 6 and metrics["interval_coverage_pct"] == 96.875
    assert (r["throughput_ips"], r["throughput_ips_ci95_low"], r["throughput_ips_ci95_high"]) == (2000.0, 1800.0, 2200.0)
    assert (r["latency_ms_p50"], r["latency_ms_p50_ci95_low"], r["latency_ms_p50_ci95_high"]) == pytest.approx((1.25, 1.0, 1.5))
    # every round is exactly twice as fast as its FP32: the ratio and its interval are 2, though both throughputs spread 20 %
    assert (r["throughput_speedup_vs_fp32_eager"], r["throughput_speedup_vs_runtime_fp32_ci95_low"]) == (2.0, 2.0)
    assert r["throughput_speedup_vs_runtime_fp32_ci95_high"] == 2.0
    assert rows[1]["throughput_ips_ci95_low"] == 1800.0 and "rounds" not in r


def test_repeats_default_to_one_and_must_be_at_least_one():
    raw = {
        "threads": [1],
        "latency_batch": 1,
        "throughput_batch": 8,
        "warmup_runs": 0,
        "latency_runs": 10,
        "min_run_time_s": 0.1,
        "peak_gemm_size": 64,
        "keep_freed_memory": False,
        "profile_runs": 0,
    }
    assert parse(BenchmarkParams, raw, "benchmark").repeats == 1  # a params file written before the field
    with pytest.raises(ParamsError, match=r"benchmark.repeats must be in \[1, 100\]"):
        parse(BenchmarkParams, {**raw, "repeats": 0}, "benchmark")


def test_measure_all_runs_every_job_once_per_round_in_the_same_order_each_round_from_a_fresh_server(monkeypatch, tmp_path):
    """A B C ... A B C ...: round by round, each (method, threads) in its own call of `measure`, every round after the
    first forked from a new server; predictions, the profile and the page-fault count only in the first round (at the
    largest and smallest thread counts)."""
    asked, servers = [], []

    def fake_measure(context, request):
        asked.append(request)
        if isinstance(request, processes.PeakRequest):
            return {"fp32_gmacs": 1.0, "int8_gmacs": 2.0}
        out = repeat(100.0 + len(asked), 1.0)
        if request.predict:
            out.update(predictions=[0, 1], logits=[[0.0, 1.0]])
        if request.profile_runs:
            out["ops_ms"] = {"conv": 1.0}
        return out

    monkeypatch.setattr(processes, "measure", fake_measure)
    monkeypatch.setattr(processes, "start_method", lambda: None)
    monkeypatch.setattr(processes, "fresh_server", lambda context: servers.append(len(asked)))
    p = BenchmarkParams([1, 2], 1, 8, 0, 10, 0.1, 64, False, 3, repeats=3)
    peaks, runs, predictions, logits, ops = processes.measure_all(p, ["a", "b", "c"], [1, 2], tmp_path, "test.pt")
    jobs = [(m, t) for t in (1, 2) for m in ("a", "b", "c")]
    assert servers == [2 + 6, 2 + 12]  # after the two peaks and each full round of six
    method_requests = [r for r in asked if isinstance(r, processes.MethodRequest)]
    assert [type(r).__name__ for r in asked[:2]] == ["PeakRequest", "PeakRequest"] and set(peaks) == {1, 2}
    assert [(r.method, r.threads) for r in method_requests] == jobs * 3
    first, later = method_requests[:6], method_requests[6:]
    assert [(r.method, r.threads) for r in first if r.predict] == [("a", 2), ("b", 2), ("c", 2)]
    assert [(r.method, r.threads) for r in first if r.profile_runs == 3] == [("a", 1), ("b", 1), ("c", 1)]
    assert all(r.count_faults for r in first) and not any(r.predict or r.profile_runs or r.count_faults for r in later)
    # each pair's repeats in round order: the throughputs were numbered by call
    assert [r["throughput_ips"] for r in runs[("b", 1)]] == [100.0 + 4, 100.0 + 10, 100.0 + 16]
    assert set(predictions) == set(logits) == set(ops) == {"a", "b", "c"}


def test_a_table_shows_the_interval_where_the_record_has_one_and_the_figure_alone_where_not():
    with_ci = {"throughput_ips": 4368.2, "throughput_ips_ci95_low": 4301.0, "throughput_ips_ci95_high": 4420.4}
    assert spread(with_ci, "throughput_ips", ".0f") == "4368 [4301–4420]"
    assert spread({"throughput_ips": 4368.2}, "throughput_ips", ".0f") == "4368"
    run = {
        "throughput_ips": 2000.0,
        "throughput_speedup_vs_fp32_eager": 2.0,
        "throughput_speedup_vs_runtime_fp32": 2.0,
        "throughput_speedup_vs_runtime_fp32_ci95_low": 1.9,
        "throughput_speedup_vs_runtime_fp32_ci95_high": 2.1,
        "latency_ms_p50": 1.0,
    }
    metrics = {
        "repeats": 6,
        "interval_coverage_pct": intervals.coverage(6, 1) * 100,
        "peak": {"threads_1": {}},
        "machine": {"name": "m", "cpu": "c", "cores": 2, "isa": {"int8_dot": "vnni"}},
        "methods": {"x_int8": {"runtime": "r", "size_ratio_vs_runtime_fp32": 0.25, "accuracy_pct": 99.0, "threads_1": run}},
    }
    table = summary_table(metrics, {"latency_batch": 1, "throughput_batch": 256})
    assert "| 2000 | 2.0× | 2.0× [1.9–2.1] | 1.000 |" in table
    assert "95 % interval of the median over 6 interleaved repeats (order statistics, 96.9 % coverage)" in table
    metrics.pop("interval_coverage_pct")
    assert "interleaved" not in summary_table(metrics, {"latency_batch": 1, "throughput_batch": 256})
