"""Turn raw per-(method, threads) measurements into the combined metrics, the CSV rows and the per-layer table."""

from __future__ import annotations

import math

import torch

from edgequant.layers import conv_layers, conv_macs, net_macs, sqnr_db
from edgequant.registry import get_method


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
        result[m]["accuracy_drop_pp_ci95"] = drop_ci95_pp(result[m]["flips_lost"], result[m]["flips_gained"], len(labels))
    return result


def drop_ci95_pp(lost: int, gained: int, n: int) -> float:
    """Half-width of the 95 % confidence interval of the paired drop (lost - gained) / n, in points: only the
    flipped images carry information, so 3 lost and 3 gained of 10,000 is ±0.05 pp, 0 and 0 is ±0."""
    variance = (lost + gained - (lost - gained) ** 2 / n) / n**2
    return round(100.0 * 1.96 * math.sqrt(max(variance, 0.0)), 9)


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
    runs: dict[tuple[str, int], dict],
    peaks: dict[int, dict[str, float]],
    accuracy: dict[str, dict[str, float]],
    model: str,
) -> tuple[dict, list[dict]]:
    """Combine everything into nested metrics (DVC flattens to `method.threads_1.latency_ms_p50`) and CSV rows.

    Every ratio compares numbers measured in the same run on the same machine: INT8 against
    the FP32 of its own runtime (`Method.baseline`, which params validation guarantees was
    measured), and every method against FP32 eager PyTorch.
    """
    macs_per_image = sum(net_macs(model).values())
    threads = sorted({t for _, t in runs})
    metrics: dict = {
        "model": model,
        "macs_per_image": macs_per_image,
        "conv_macs_per_image": conv_macs(model),
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
            r = runs[(name, t)]
            fp32, base = runs[("fp32", t)], runs[(method.baseline, t)]
            gmacs = macs_per_image * r["throughput_ips"] / 1e9
            peak = peaks[t]["int8_gmacs" if method.precision == "int8" else "fp32_gmacs"]
            per_thread = {
                **{k: r[k] for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "throughput_ips")},
                "peak_rss_mib": r.get("peak_rss_mib"),
                "minor_faults_per_batch": r.get("minor_faults_per_batch"),
                "gmacs": gmacs,
                "peak_fraction": gmacs / peak,
                "throughput_speedup_vs_fp32_eager": r["throughput_ips"] / fp32["throughput_ips"],
                "latency_speedup_vs_fp32_eager": fp32["latency_ms_p50"] / r["latency_ms_p50"],
                "throughput_speedup_vs_runtime_fp32": r["throughput_ips"] / base["throughput_ips"],
                "latency_speedup_vs_runtime_fp32": base["latency_ms_p50"] / r["latency_ms_p50"],
            }
            entry[f"threads_{t}"] = per_thread
            rows.append({"method": name, "threads": t, **{k: v for k, v in entry.items() if not k.startswith("threads_")}, **per_thread})
        metrics["methods"][name] = entry
    return metrics, rows


def layer_rows(sqnr: dict[str, dict[str, float]], model: str) -> list[dict]:
    """One row per Conv2d/Linear layer of model `model`: its MACs, their share, and each method's SQNR there."""
    from edgequant.model import build_model

    macs, convs = net_macs(model), set(conv_layers(build_model(model)))
    total = sum(macs.values())
    rows = [
        {"layer": layer, "kind": "conv" if layer in convs else "linear", "macs": n, "macs_share_pct": 100.0 * n / total}
        for layer, n in macs.items()
    ]
    for row in rows:
        row.update({f"sqnr_db_{m}": values[row["layer"]] for m, values in sqnr.items()})
    return rows
