"""Medians over k interleaved repeats, each with a distribution-free 95 % interval for the median.

The benchmark measures every (method, threads) pair k times, in rounds (A B C ... A B C ...), each time in a process
of its own (edgequant/measure/processes.py). What varies between two runs on one idle machine is mostly what varies
between processes: where the OS puts the threads, how the allocator lays out the arena, what the caches hold. So one
repeat is one process, and the figure is the median of the k repeats.

The interval is the order-statistic interval for the median: of k values sorted x(1) <= ... <= x(k), the pair
[x(j), x(k+1-j)] contains the median of the distribution they are drawn from with probability
1 - 2 P(B <= j-1), B ~ Binomial(k, 1/2), whatever that distribution is (only continuity and independence are
assumed). The narrowest such pair whose coverage is at least 95 % is used, and its coverage is recorded:
k = 6 gives [min, max] at 1 - 2 * 0.5^6 = 96.9 %, k = 9 [x(2), x(8)] at 96.1 %, k = 20 [x(6), x(15)] at 95.9 %.
With k < 6 no pair reaches 95 % ([min, max] of 5 covers 93.8 %), so no interval is written: the figure stands
alone, as a single run's does. Why not a t-interval: timings are skewed and have outliers (a neighbour's burst), and
a mean would follow them. Why not a bootstrap: with k = 6 its resamples take only a handful of distinct medians and
its percentile interval covers less than it claims at small k; the order-statistic interval is exact for any k.

A ratio of two methods (a speed-up) is formed per round, where the two were measured minutes apart at most, and
the median of those k paired ratios is reported with the same interval: a drift of the machine between rounds
moves both sides of a round's ratio and cancels in it, where it would widen a ratio of two separate intervals.

Latency p50 is a median per repeat (50 calls), and the repeats' p50s give its median and interval. The tail
(p90, p99) and the mean are pooled over every repeat's calls: a p99 needs many calls (one repeat's p99 of 50 is
its largest call), and pooling k x 50 calls gives it the same footing as one run of that many calls.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

LEVEL = 0.95  # the interval's least coverage
SAMPLE_KEYS = ("throughput_ips", "latency_ms_p50")  # per-repeat figures the repeats' median and interval are made of
POOLED_KEYS = {"latency_ms_p90": 90, "latency_ms_p99": 99}  # percentiles of every repeat's calls together


def coverage(k: int, j: int) -> float:
    """The chance that [x(j), x(k+1-j)] of k independent values contains their distribution's median."""
    return 1.0 - 2.0 * sum(math.comb(k, i) for i in range(j)) / 2**k


def ranks(k: int, level: float = LEVEL) -> tuple[int, int] | None:
    """The 1-based ranks (j, k+1-j) of the narrowest order-statistic interval that covers the median with at least
    `level`, or None when even [min, max] covers less (k < 6 at 95 %)."""
    best = None
    for j in range(1, k // 2 + 1):
        if coverage(k, j) < level:
            break
        best = (j, k + 1 - j)
    return best


def interval_coverage(k: int, level: float = LEVEL) -> float | None:
    """The coverage the interval of k repeats achieves (0.969 for 6), None when k repeats give no interval."""
    found = ranks(k, level)
    return coverage(k, found[0]) if found else None


def median_interval(values: list[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """The median of `values` and its order-statistic interval (None, None when too few values give one)."""
    ordered = sorted(values)
    found = ranks(len(ordered), level)
    if not found:
        return statistics.median(ordered), None, None
    return statistics.median(ordered), ordered[found[0] - 1], ordered[found[1] - 1]


def with_interval(key: str, values: list[float]) -> dict[str, float]:
    """{key: median} plus {key_ci95_low, key_ci95_high} when the values give an interval."""
    median, low, high = median_interval(values)
    return {key: median} if low is None else {key: median, f"{key}_ci95_low": low, f"{key}_ci95_high": high}


def paired(key: str, numerator: list[float], denominator: list[float]) -> dict[str, float]:
    """The ratio numerator/denominator formed within each round, as its median and interval over the rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f"{key}: {len(numerator)} rounds against {len(denominator)}; a paired ratio needs one of each per round")
    return with_interval(key, [a / b for a, b in zip(numerator, denominator, strict=True)])


def combine(repeats: list[dict]) -> dict:
    """One (method, threads) figure from its k repeats, in round order: the medians and intervals of throughput and p50,
    the pooled tail and mean, the largest peak RSS, the median cores busy, the page faults of the repeat that counted them, and each
    repeat's throughput and p50 (`rounds`) for the paired ratios."""
    if not repeats:
        raise ValueError("no repeat to combine; benchmark.repeats is at least 1")
    combined: dict = {"rounds": {key: [r[key] for r in repeats] for key in SAMPLE_KEYS}}
    for key in SAMPLE_KEYS:
        combined.update(with_interval(key, combined["rounds"][key]))
    if all("latency_ms_calls" in r for r in repeats):
        calls = np.concatenate([np.asarray(r["latency_ms_calls"], dtype=float) for r in repeats])
        combined.update({key: float(np.percentile(calls, q)) for key, q in POOLED_KEYS.items()})
        combined["latency_ms_mean"] = float(calls.mean())
    else:  # a measurement without its calls: the repeats' own figures, by their median
        for key in (*POOLED_KEYS, "latency_ms_mean"):
            if all(key in r for r in repeats):
                combined[key] = statistics.median(r[key] for r in repeats)
    rss = [r["peak_rss_mib"] for r in repeats if r.get("peak_rss_mib") is not None]
    combined["peak_rss_mib"] = max(rss) if rss else None
    busy = [r["cores_busy"] for r in repeats if "cores_busy" in r]
    combined["cores_busy"] = statistics.median(busy) if busy else None
    combined["minor_faults_per_batch"] = next((r["minor_faults_per_batch"] for r in repeats if "minor_faults_per_batch" in r), None)
    return combined
