"""Turn raw per-(method, threads) measurements into the combined metrics dict and CSV rows."""

from __future__ import annotations

from edgequant.model import LAYER_MACS
from edgequant.registry import get_method

MACS_PER_IMAGE = sum(LAYER_MACS.values())


def summarize(
    methods: list[str],
    meta: dict[str, dict],
    runs: dict[tuple[str, int], dict],
    peaks: dict[int, dict[str, float]],
    accuracy: dict[str, dict[str, float]],
) -> tuple[dict, list[dict]]:
    """Combine everything into nested metrics (DVC flattens to `method.threads_1.latency_ms_p50`) and CSV rows.

    Every ratio compares numbers measured in the same run on the same machine: INT8 against
    the FP32 of its own runtime, and every method against FP32 eager PyTorch.
    """
    threads = sorted({t for _, t in runs})
    metrics: dict = {"macs_per_image": MACS_PER_IMAGE, "peak": {f"threads_{t}": peaks[t] for t in threads}, "methods": {}}
    rows = []
    for name in methods:
        method = get_method(name)
        size = meta[name]["size_bytes"]
        entry = {
            "runtime": method.runtime,
            "precision": method.precision,
            "size_bytes": size,
            "size_ratio_vs_fp32": size / meta["fp32"]["size_bytes"],
            "size_ratio_vs_runtime_fp32": size / meta[method.baseline]["size_bytes"] if method.baseline in meta else None,
            **accuracy[name],
            "quantize_peak_rss_mib": meta[name].get("peak_rss_mib"),
        }
        for t in threads:
            r = runs[(name, t)]
            fp32, base = runs[("fp32", t)], runs.get((method.baseline, t))
            gmacs = MACS_PER_IMAGE * r["throughput_ips"] / 1e9
            peak = peaks[t]["int8_gmacs" if method.precision == "int8" else "fp32_gmacs"]
            per_thread = {
                **{k: r[k] for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips")},
                "peak_rss_mib": r.get("peak_rss_mib"),
                "minor_faults_per_batch": r.get("minor_faults_per_batch"),
                "gmacs": gmacs,
                "peak_fraction": gmacs / peak,
                "throughput_speedup_vs_fp32_eager": r["throughput_ips"] / fp32["throughput_ips"],
                "latency_speedup_vs_fp32_eager": fp32["latency_ms_p50"] / r["latency_ms_p50"],
                "throughput_speedup_vs_runtime_fp32": r["throughput_ips"] / base["throughput_ips"] if base else None,
                "latency_speedup_vs_runtime_fp32": base["latency_ms_p50"] / r["latency_ms_p50"] if base else None,
            }
            entry[f"threads_{t}"] = per_thread
            rows.append({"method": name, "runtime": method.runtime, "precision": method.precision, "threads": t, **entry, **per_thread})
        metrics["methods"][name] = entry
    for row in rows:
        for t in threads:
            row.pop(f"threads_{t}", None)
    return metrics, rows
