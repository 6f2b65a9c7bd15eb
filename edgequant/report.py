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
        }
        for t in threads:
            r = runs[(name, t)]
            fp32, base = runs[("fp32", t)], runs.get((method.baseline, t))
            gmacs = MACS_PER_IMAGE * r["throughput_ips"] / 1e9
            peak = peaks[t]["int8_gmacs" if method.precision == "int8" else "fp32_gmacs"]
            per_thread = {
                **{k: r[k] for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips")},
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


def markdown_table(metrics: dict) -> str:
    """The README's results table, straight from metrics/benchmark.json (never typed by hand)."""
    threads = sorted(int(k.removeprefix("threads_")) for k in metrics["peak"])
    head = ["method", "runtime", "size KB", "size vs own FP32", "top-1 %", "agree %"]
    for t in threads:
        head += [f"p50 ms b1 ({t}t)", f"img/s b256 ({t}t)", f"× FP32 eager ({t}t)", f"× own FP32 ({t}t)"]
    head.append(f"% of peak ({threads[0]}t)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics["methods"].items():
        cells = [f"`{name}`", m["runtime"], f"{m['size_bytes'] / 1024:.1f}", f"{m['size_ratio_vs_runtime_fp32'] * 100:.1f} %"]
        cells += [f"{m['accuracy_pct']:.2f}", f"{m['agreement_with_fp32_pct']:.2f}"]
        for t in threads:
            r = m[f"threads_{t}"]
            own = r["throughput_speedup_vs_runtime_fp32"]
            cells += [
                f"{r['latency_ms_p50']:.3f}",
                f"{r['throughput_ips']:.0f}",
                f"{r['throughput_speedup_vs_fp32_eager']:.1f}×",
                f"{own:.1f}×",
            ]
        cells.append(f"{m[f'threads_{threads[0]}']['peak_fraction'] * 100:.0f} % ({m['precision']})")
        lines.append("| " + " | ".join(cells) + " |")
    peak, machine = metrics["peak"], metrics["machine"]
    peaks = "; ".join(
        f"{t} thread(s): FP32 {peak[f'threads_{t}']['fp32_gmacs']:.0f}, INT8 {peak[f'threads_{t}']['int8_gmacs']:.0f} GMAC/s"
        for t in threads
    )
    flags = f"avx512_vnni={machine['flag_avx512_vnni']}, amx_int8={machine['flag_amx_int8']}"
    lines += ["", f"Measured peaks: {peaks}. Machine: {machine['cpu']}, {flags}, torch {machine['torch']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    print(markdown_table(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "metrics/benchmark.json").read_text())))
