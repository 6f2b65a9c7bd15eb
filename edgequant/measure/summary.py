"""Turn raw per-(method, threads) measurements into the combined metrics, the CSV rows and the per-layer table."""

from __future__ import annotations

import math

import torch

from edgequant.measure.intervals import combine, interval_coverage, paired
from edgequant.model.layers import conv_layers, conv_macs, net_macs, sqnr_db
from edgequant.quantize.catalog import get_method

# A run given t threads whose timed loop kept fewer than t - 0.5 cores busy (CPU time over wall time) ran on
# fewer threads than it was given: metrics/benchmark.json's `threads_unused` names it (one free core is 1.0 short).
THREAD_SLACK = 0.5
# Per (method, threads), in this order: each median's interval beside it, where the repeats give one.
FIGURES = tuple(
    f"{key}{end}"
    for key in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips")
    for end in ("", "_ci95_low", "_ci95_high")
)


def accuracy(
    methods: list[str], predictions: dict[str, torch.Tensor], logits: dict[str, torch.Tensor], labels: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Top-1 accuracy, agreement with FP32, the drop against FP32, and the logits' SQNR against FP32's, per method.

    The SQNR is measured in the runtime that ships the artifact, on this CPU: INT8 numerics depend on the
    ISA (x86 without VNNI saturates where VNNI does not), so a test machine's figure says nothing of another's."""
    result = {}
    for m in methods:
        result[m] = {
            # Counted in integers, as the gate compares them to limits: a float32 mean is off in the 7th digit.
            "accuracy_pct": 100.0 * int((predictions[m] == labels).sum()) / len(labels),
            "agreement_with_fp32_pct": 100.0 * int((predictions[m] == predictions["fp32"]).sum()) / len(labels),
            "logit_sqnr_db_vs_fp32": min(sqnr_db(logits["fp32"], logits[m]), 200.0),  # identical logits: capped, JSON has no inf
        }
    for m in methods:
        lost = int((predictions["fp32"] == labels).sum()) - int((predictions[m] == labels).sum())
        result[m]["accuracy_drop_pp"] = round(100.0 * lost / len(labels), 9)
        result[m].update(flips(predictions["fp32"] == labels, predictions[m] == labels))
        low, high = drop_interval_pp(result[m]["flips_lost"], result[m]["flips_gained"], len(labels))
        result[m]["accuracy_drop_pp_ci95_low"], result[m]["accuracy_drop_pp_ci95_high"] = low, high
    return result


def _binomial_cdf(k: int, m: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(m, p), summed in logs: C(m, i) overflows a float past m ~ 1,000."""
    if k < 0:
        return 0.0
    if k >= m:
        return 1.0
    head, log_p, log_q = math.lgamma(m + 1), math.log(p), math.log1p(-p)
    return sum(math.exp(head - math.lgamma(i + 1) - math.lgamma(m - i + 1) + i * log_p + (m - i) * log_q) for i in range(k + 1))


def _solve(f, target: float) -> float:
    """The p in (0, 1) where the decreasing function f(p) crosses target, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if f(mid) > target else (low, mid)
    return (low + high) / 2


def drop_interval_pp(lost: int, gained: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact 95 % interval of the paired drop (lost - gained) / n, in points. Only the m = lost + gained
    flipped images carry information: given m, the share of them that were losses is binomial, and its
    Clopper-Pearson interval [q_lo, q_hi] maps to m / n * (2q - 1). It excludes 0 exactly when McNemar's
    exact p < 0.05, so the interval and the test never disagree; no flips at all gives [0, 0]."""
    m = lost + gained
    if m == 0:
        return 0.0, 0.0
    # q_low: P(X >= lost) = alpha / 2, i.e. P(X <= lost - 1) = 1 - alpha / 2; q_high: P(X <= lost) = alpha / 2
    q_low = 0.0 if lost == 0 else _solve(lambda q: _binomial_cdf(lost - 1, m, q), 1 - alpha / 2)
    q_high = 1.0 if lost == m else _solve(lambda q: _binomial_cdf(lost, m, q), alpha / 2)
    scale = 100.0 * m / n
    return round(scale * (2 * q_low - 1), 9), round(scale * (2 * q_high - 1), 9)


def flips(fp32_right: torch.Tensor, right: torch.Tensor) -> dict[str, float]:
    """Test images FP32 got right and the method wrong (lost) and the other way (gained), with the exact
    two-sided McNemar p-value: the chance of a split this uneven if the method were as accurate as FP32.
    A drop is noise unless p is small; 0.00 pp from 3 lost and 3 gained is not the same as from 0 and 0."""
    lost, gained = int((fp32_right & ~right).sum()), int((~fp32_right & right).sum())
    n, k = lost + gained, min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"flips_lost": lost, "flips_gained": gained, "mcnemar_p": min(1.0, 2 * tail)}


def summarize(
    methods: list[str],
    sizes: dict[str, int],
    runs: dict[tuple[str, int], list[dict]],
    peaks: dict[int, dict[str, float]],
    accuracy: dict[str, dict[str, float]],
    model: str,
) -> tuple[dict, list[dict]]:
    """Combine everything into nested metrics (DVC flattens to `method.threads_1.latency_ms_p50`) and CSV rows.

    `runs` holds each (method, threads) pair's repeats in round order (edgequant/measure/processes.py): every
    figure is their median, with a 95 % interval where the repeats give one (edgequant/measure/intervals.py).
    Every ratio compares numbers measured in the same run on the same machine, round by round: INT8 against
    the FP32 of its own runtime (`Method.baseline`, which params validation guarantees was measured), and
    every method against FP32 eager PyTorch.
    """
    repeats = {len(r) for r in runs.values()}
    if len(repeats) != 1:
        raise ValueError(f"the measurements hold {sorted(repeats)} repeats; every (method, threads) pair is measured in every round")
    k = repeats.pop()
    combined = {key: combine(r) for key, r in runs.items()}
    macs_per_image = sum(net_macs(model).values())
    threads = sorted({t for _, t in runs})
    covered = interval_coverage(k)
    metrics: dict = {
        "model": str(model),
        "macs_per_image": macs_per_image,
        "conv_macs_per_image": conv_macs(model),
        "repeats": k,
        "interval_coverage_pct": None if covered is None else round(100 * covered, 3),
        "peak": {f"threads_{t}": peaks[t] for t in threads},
        "methods": {},
    }
    rows = []
    for name in methods:
        method = get_method(name)
        size = sizes[name]
        entry = {
            "runtime": method.runtime,
            "precision": method.precision,
            "baseline": method.baseline,
            "size_bytes": size,
            "size_ratio_vs_fp32": size / sizes["fp32"],
            "size_ratio_vs_runtime_fp32": size / sizes[method.baseline],
            **accuracy[name],
        }
        for t in threads:
            r = combined[(name, t)]
            ips, p50 = r["rounds"]["throughput_ips"], r["rounds"]["latency_ms_p50"]
            fp32, base = combined[("fp32", t)]["rounds"], combined[(method.baseline, t)]["rounds"]
            gmacs = macs_per_image * r["throughput_ips"] / 1e9
            peak = peaks[t][f"{method.precision}_gmacs"]  # the roofline measures an engine per precision
            per_thread = {
                **{key: r[key] for key in FIGURES if key in r},
                "peak_rss_mib": r["peak_rss_mib"],
                "minor_faults_per_batch": r["minor_faults_per_batch"],
                "cores_busy": r["cores_busy"],
                "gmacs": gmacs,
                "peak_fraction": gmacs / peak,
                **paired("throughput_speedup_vs_fp32_eager", ips, fp32["throughput_ips"]),
                **paired("latency_speedup_vs_fp32_eager", fp32["latency_ms_p50"], p50),
                **paired("throughput_speedup_vs_runtime_fp32", ips, base["throughput_ips"]),
                **paired("latency_speedup_vs_runtime_fp32", base["latency_ms_p50"], p50),
            }
            rows.append({"method": name, "threads": t, **{k: v for k, v in entry.items() if not k.startswith("threads_")}, **per_thread})
            # Each round's own figures, in round order: the fleet compares two candidates round by round (a paired
            # comparison: a slow minute of the machine falls on both sides of a round).
            entry[f"threads_{t}"] = {**per_thread, **{f"{key}_rounds": values for key, values in r["rounds"].items()}}
        metrics["methods"][name] = entry
    metrics["threads_unused"] = threads_unused(metrics["methods"])
    return metrics, rows


def threads_unused(methods: dict[str, dict]) -> list[str]:
    """One line per multi-thread run whose timed loop kept fewer cores busy than it was given threads (less
    THREAD_SLACK): the runtime ran on fewer threads than asked, whatever it was told."""
    lines = []
    for name, entry in methods.items():
        for key, run in entry.items():
            if key.startswith("threads_") and run.get("cores_busy") is not None:
                asked = int(key.removeprefix("threads_"))
                if asked > 1 and run["cores_busy"] < asked - THREAD_SLACK:
                    lines.append(f"{name} at {asked} threads kept {run['cores_busy']:.2f} cores busy")
    return lines


def layer_rows(sqnr: dict[str, dict[str, float]], model: str) -> list[dict]:
    """One row per Conv2d/Linear layer of model `model`: its MACs, their share, and each method's SQNR there."""
    from edgequant.model.zoo import build_model

    macs, convs = net_macs(model), set(conv_layers(build_model(model)))
    total = sum(macs.values())
    rows = [
        {"layer": layer, "kind": "conv" if layer in convs else "linear", "macs": n, "macs_share_pct": 100.0 * n / total}
        for layer, n in macs.items()
    ]
    for row in rows:
        row.update({f"sqnr_db_{m}": values[row["layer"]] for m, values in sqnr.items()})
    return rows
