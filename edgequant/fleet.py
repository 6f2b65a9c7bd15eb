"""Many machines side by side: each one's best INT8 method, its speed-ups and % of peak, and what to ship there.

A machine is a folder of its benchmark's outputs (`machines/<name>/benchmark.json`, from `make machine`,
an imported run, or the bench bundle's runner on a device); the workspace's own run is one more.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgequant.gate import check
from edgequant.machine import int8_dot, name_of
from edgequant.params import GateParams

SHIP_RULE = (
    "Ship the release candidate (`gate.methods`) that passes every gate check on that machine and has the highest batch "
    "throughput at 1 thread; for batch-1 latency, the candidate that passes with the lowest p50. Ranked on that machine's "
    "own measurements only."
)


def machine_name(machine: dict) -> str:
    """The probe's name; records made before the probe existed are named from their CPU flags the same way."""
    if "name" in machine:
        return machine["name"]
    flags = {key.removeprefix("flag_"): on for key, on in machine.items() if key.startswith("flag_")}
    return name_of(str(machine.get("cpu", "unknown")), flags, str(machine.get("arch", "cpu")))


def int8_isa(machine: dict) -> str:
    if "isa" in machine:
        return machine["isa"]["int8_dot"]
    return int8_dot({key.removeprefix("flag_") for key, on in machine.items() if key.startswith("flag_") and on})


def load(folder: Path, file: str = "benchmark.json") -> dict:
    path = folder / file
    try:
        metrics = json.loads(path.read_text())
        name = machine_name(metrics["machine"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an edgequant benchmark record ({exc})") from exc
    return {"name": name, "metrics": metrics, "source": path.as_posix()}


def summarize(entry: dict, gate: GateParams) -> dict:
    """One fleet row: the fastest INT8 method, the recommendation by the stated rule, and how close to the roofline."""
    metrics = entry["metrics"]
    methods = metrics["methods"]
    t = f"threads_{min(int(k.removeprefix('threads_')) for k in metrics['peak'])}"
    int8 = [m for m, r in methods.items() if r["precision"] == "int8"]
    failed = {c.method for c in check(metrics, gate) if not c.passed}
    candidates = [m for m in gate.methods if m in methods and m not in failed]
    fastest = max(int8, key=lambda m: methods[m][t]["throughput_ips"])
    quickest = min(int8, key=lambda m: methods[m][t]["latency_ms_p50"])
    peak = metrics["peak"][t]
    best = methods[fastest][t]
    return {
        "machine": entry["name"],
        "int8_dot": int8_isa(metrics["machine"]),
        "fastest_int8": fastest,
        "lowest_latency_int8": quickest,
        "speedup_vs_fp32_eager": best["throughput_speedup_vs_fp32_eager"],
        "speedup_vs_runtime_fp32": best["throughput_speedup_vs_runtime_fp32"],
        # A roofline measured with torch._int_mm alone (records made before the engine-best peak) reads
        # 0.5 GMAC/s without VNNI: a fraction of it means nothing, so it is not shown.
        "peak_fraction": best["peak_fraction"] if "int8_engine" in peak else None,
        "ship_throughput": max(candidates, key=lambda m: methods[m][t]["throughput_ips"]) if candidates else None,
        "ship_latency": min(candidates, key=lambda m: methods[m][t]["latency_ms_p50"]) if candidates else None,
        "threads": int(t.removeprefix("threads_")),
        "source": entry["source"],
    }


def markdown(rows: list[dict]) -> str:
    head = ["machine", "INT8 dot product", "fastest INT8 (batch 256)", "× FP32 eager", "× own FP32", "% of INT8 peak"]
    head += ["lowest batch-1 latency", "ship (throughput)", "ship (latency)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        peak = f"{100 * r['peak_fraction']:.0f} %" if r["peak_fraction"] is not None else "n/a¹"
        eager = r["speedup_vs_fp32_eager"]  # None on a device with no PyTorch (the bench bundle)
        cells = [f"`{r['machine']}`", r["int8_dot"], f"`{r['fastest_int8']}`", f"{eager:.1f}×" if eager is not None else "–"]
        cells += [f"{r['speedup_vs_runtime_fp32']:.1f}×", peak, f"`{r['lowest_latency_int8']}`"]
        cells += [f"`{r['ship_throughput']}`" if r["ship_throughput"] else "none passes the gate"]
        cells += [f"`{r['ship_latency']}`" if r["ship_latency"] else "none passes the gate"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"At {rows[0]['threads']} thread, batch 256 (latency: batch 1). Rule: {SHIP_RULE}"]
    if any(r["peak_fraction"] is None for r in rows):
        lines.append("¹ recorded before the engine-best roofline: its INT8 peak was `torch._int_mm` alone (no fast path without VNNI).")
    return "\n".join(lines)


def speedup_rows(entries: list[dict]) -> list[dict]:
    """Every INT8 method's batch speed-up over FP32 eager at the smallest thread count, per machine (for the chart)."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"]
        t = f"threads_{min(int(k.removeprefix('threads_')) for k in metrics['peak'])}"
        for method, r in metrics["methods"].items():
            if r["precision"] == "int8" and r[t]["throughput_speedup_vs_fp32_eager"] is not None:
                rows.append({"machine": entry["name"], "method": method, "speedup": r[t]["throughput_speedup_vs_fp32_eager"]})
    return rows


def plot(entries: list[dict], path: Path) -> None:
    """One group of bars per machine: what each INT8 method buys over FP32 eager there."""
    import pandas as pd
    import seaborn as sns

    from edgequant.plot import _save, plt

    df = pd.DataFrame(speedup_rows(entries))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 1.3 * df["machine"].nunique()))
    sns.barplot(data=df, y="machine", x="speedup", hue="method", ax=ax, orient="h")
    ax.axvline(1, color="k", lw=0.8)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f×", fontsize=7, padding=2)
    ax.set(xlabel="× FP32 eager throughput (batch 256, 1 thread; each machine against its own FP32)", ylabel="")
    ax.set_title("INT8 speed-up per machine: the ranking of runtimes changes with the CPU")
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path)


def save(files: list[Path], machine: Path, machines: Path) -> Path:
    """Copy this machine's results into `machines/<name>/`, where the fleet stage (and git) pick them up."""
    import shutil

    from edgequant.io import atomic_dir

    name = json.loads(machine.read_text())["name"]
    with atomic_dir(machines / name) as tmp:
        for f in [machine, *files]:
            shutil.copy(f, tmp / f.name)
    return machines / name


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Save this machine's results into the fleet: `make machine` runs it.")
    parser.add_argument("files", nargs="+", type=Path, help="the run's outputs to keep (benchmark.json first)")
    parser.add_argument("--machine", type=Path, required=True, help="the probe's machine record")
    parser.add_argument("--out", type=Path, required=True, help="the fleet folder")
    args = parser.parse_args(argv)
    print(save(args.files, args.machine, args.out).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
