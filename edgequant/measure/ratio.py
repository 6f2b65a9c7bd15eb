"""The harness/tool ratio of paired throughput runs: a geometric mean with a t-interval on the log scale.

A ratio of images per second is a ratio of times, so it is averaged where ratios add: ln r. The interval is
exp(mean ± t(0.975, n-1) · sd / √n) over the n paired log-ratios; each pair ran back to back, so drift common
to both runs cancels in its ratio. [min r, max r] is reported beside it: it holds the median ratio with
probability 1 - 2/2^n whatever the distribution (96.9 % at 6 pairs).
"""

from __future__ import annotations

import math
import statistics

# Student's t, two-sided 95 % (the 0.975 quantile), by degrees of freedom 1..30: scipy is not a dependency,
# and vendor.pairs <= MAX_PAIRS (edgequant/params.py) keeps df within the table (tests/test_vendor.py checks that the two agree).
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
AGREEMENT = 0.05  # harness and tool agree when the whole interval lies within ±5 % of 1


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (1..30)."""
    if not 1 <= df <= len(T975):
        raise ValueError(f"a t-interval needs 1 to {len(T975)} degrees of freedom, got {df}")
    return T975[df - 1]


def ratio_interval(harness: list[float], tool: list[float]) -> dict[str, float]:
    """Geometric mean of the paired ratios harness[i] / tool[i] with its 95 % interval, and their range."""
    if len(harness) != len(tool) or len(harness) < 2:
        raise ValueError(f"a ratio interval needs at least 2 pairs of equal length, got {len(harness)} and {len(tool)}")
    if min(harness + tool) <= 0:
        raise ValueError(f"throughputs must be positive, got harness {harness} and tool {tool}")
    logs = [math.log(h / t) for h, t in zip(harness, tool, strict=True)]
    n, mean = len(logs), statistics.fmean(logs)
    half = t975(n - 1) * statistics.stdev(logs) / math.sqrt(n)
    ratios = [math.exp(v) for v in logs]
    return {
        "ratio": math.exp(mean),
        "ratio_ci95_low": math.exp(mean - half),
        "ratio_ci95_high": math.exp(mean + half),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "pairs": n,
    }


def agrees(interval: dict[str, float], tolerance: float = AGREEMENT) -> bool:
    """The whole 95 % interval lies within [1 - tolerance, 1 + tolerance]."""
    return 1 - tolerance <= interval["ratio_ci95_low"] and interval["ratio_ci95_high"] <= 1 + tolerance


def alternation(pairs: int, cells: list) -> list[tuple[int, object, str]]:
    """(pair, cell, "harness"|"tool") in the order they run: every cell once per pair round, harness first in even
    rounds and tool first in odd ones (so linear drift over a cell's rounds falls equally on both sides), and the
    first run of each cell is the harness's, whose batch time sizes the tool runs that have no time limit."""
    order = []
    for i in range(pairs):
        first, second = ("harness", "tool") if i % 2 == 0 else ("tool", "harness")
        for cell in cells:
            order += [(i, cell, first), (i, cell, second)]
    return order
