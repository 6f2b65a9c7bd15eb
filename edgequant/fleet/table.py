"""Many machines side by side: each one's best INT8 method, its speed-ups and % of peak, and what to ship there.

A machine is a folder of its benchmark's outputs (`machines/<name>/benchmark.json`, from `make machine`,
an imported run, or the bench bundle's runner on a device); the workspace's own run is one more.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from edgequant.fleet import numerics, records
from edgequant.gate import check
from edgequant.measure.machine import int8_dot
from edgequant.params import GateParams
from edgequant.report.markdown import code, escape

# Within one run, a candidate whose round-by-round ratio to the best (median over the rounds) is within this margin is
# named with it. On the AVX2 EPYC single rounds spread +-25 % and one pair's paired median went from 1.09 in favour of
# `onnx_qdq_int8` to 1.16 in favour of `openvino_int8` between back-to-back runs: a test of "ahead in every round"
# named different ship sets in both of two back-to-back pairs of runs, this margin the same sets in one (docs/machines.md).
TIE_MARGIN = 0.2
SHIP_RULE = (
    "Ship the release candidate (`gate.methods`) that passes every gate check on that machine and has the highest batch "
    "throughput at 1 thread; for batch-1 latency, the candidate that passes with the lowest p50. Every passing candidate "
    f"within {TIE_MARGIN * 100:.0f} % of the best is named with it (`best` ≈ `tied`), by the median of their "
    "round-by-round ratio (a record without rounds: overlapping 95 % intervals): closer than back-to-back runs "
    "reproduce, so choose on other grounds. "
    "Ranked on that machine's own measurements only."
)
SINGLE_RUN = "² measured without a 95 % interval (one run, or fewer than 6 repeats): a tie cannot be seen, so one name is shown."
# This checkout's run as `make machine` keeps it in machines/<name>/ (each under its own file name): the machine's
# measurements and what they were measured on. The gate's verdict is left out: the fleet judges each machine anew.
RUN_FILES = (
    "metrics/benchmark.json",
    "metrics/machine.json",
    "metrics/sqnr.json",
    "metrics/train.json",
    "plots/benchmark.csv",
    "plots/ops.csv",
    "plots/layers.csv",
)


def machine_name(machine: dict) -> str:
    """The probe's name, computed from the record (records made before the probe are named from their CPU flags)."""
    return records.machine_name(machine, "machine record")


def int8_isa(machine: dict) -> str:
    """The INT8 dot product by today's rules (edgequant.measure.machine.int8_dot) from the CPU flags the record holds, as its
    name is: a record made before a rule was refined (AMX named apart from VNNI) reads as a new one would."""
    return int8_dot({flag for flag, on in records.read_flags(machine).items() if on})


def load(folder: Path, file: str = "benchmark.json") -> dict:
    """A machine's benchmark record, checked (edgequant/fleet/records.py); a bad one is refused in one line naming the field."""
    path = folder / file
    metrics = records.read_json(path)
    return {"name": records.check_benchmark(metrics, str(path)), "metrics": metrics, "source": path.as_posix()}


def gather(machines: Path) -> tuple[list[dict], list[str]]:
    """Every machine folder under `machines`, and one line per folder that cannot be shown (the fleet goes on without it)."""
    entries: list[dict] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    for folder in sorted(machines.iterdir()):
        where = f"{machines.as_posix()}/{folder.name if folder.name.isprintable() else ascii(folder.name)}"
        if folder.name.startswith("."):  # the atomic writers' temporaries
            continue
        if folder.is_symlink():
            skipped.append(f"{where}: a symlink; a machine's folder is a folder of its own")
        elif not folder.is_dir():
            continue  # machines/README.md
        elif not records.is_machine_name(folder.name):
            skipped.append(f"{where}: not a machine's name; re-import it with `python -m edgequant.fleet.table import {where}`")
        elif numerics.is_numerics_folder(folder):
            continue  # an emulated CPU: numerics only, shown in a table of its own (edgequant/fleet/numerics.py)
        elif not (folder / "benchmark.json").exists():
            skipped.append(f"{where}: no benchmark.json")
        else:
            try:
                entry = load(folder)
            except (records.RecordError, OSError) as exc:
                skipped.append(str(exc))
                continue
            if entry["name"] in seen:
                skipped.append(f"{where}: the same machine ({entry['name']}) as {seen[entry['name']]}")
                continue
            seen[entry["name"]] = where
            entries.append(entry)
    return entries, skipped


def summarize(entry: dict, gate: GateParams) -> dict:
    """One fleet row: the fastest INT8 method, the recommendation by the stated rule, and how close to the roofline."""
    metrics = entry["metrics"]
    methods = metrics["methods"]
    t = records.smallest_threads(metrics)
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
        **ship("throughput", tied(candidates, {m: methods[m][t] for m in candidates}, "throughput_ips", highest=True)),
        **ship("latency", tied(candidates, {m: methods[m][t] for m in candidates}, "latency_ms_p50", highest=False)),
        "intervals": all(interval(methods[m][t], key) for m in candidates for key in ("throughput_ips", "latency_ms_p50")),
        "threads": int(t.removeprefix("threads_")),
        "source": entry["source"],
    }


def interval(run: dict, key: str) -> tuple[float, float] | None:
    """A figure's 95 % interval over the benchmark's repeats, or None for a record of one run (no interval)."""
    low, high = run.get(f"{key}_ci95_low"), run.get(f"{key}_ci95_high")
    return (low, high) if low is not None and high is not None else None


def tied(candidates: list[str], runs: dict[str, dict], key: str, highest: bool) -> list[str]:
    """The best candidate by `key`, then every other the measurements cannot rank apart from it, best first then by value.

    Where both hold their rounds (one benchmark run, interleaved), the best one's advantage is formed round by round
    (best/other for throughput, other/best for latency), and the other is tied when the median of those ratios is
    within TIE_MARGIN of 1. Without rounds, a tie is two overlapping intervals; a record without intervals names
    the best alone: one run shows no tie."""
    if not candidates:
        return []
    ranked = sorted(candidates, key=lambda m: runs[m][key], reverse=highest)
    best = runs[ranked[0]]
    if interval(best, key) is None:
        return ranked[:1]
    return [ranked[0], *(m for m in ranked[1:] if indistinguishable(best, runs[m], key, highest))]


def indistinguishable(best: dict, other: dict, key: str, highest: bool) -> bool:
    """Whether `other` ranks with `best` by `key`: by the paired median over their rounds when both have them, else by overlap."""
    a, b = best.get(f"{key}_rounds"), other.get(f"{key}_rounds")
    if a and b and len(a) == len(b) and min(a) > 0 and min(b) > 0:  # an imported record's rounds are checked finite only
        ratios = [x / y if highest else y / x for x, y in zip(a, b, strict=True)]  # > 1: best ahead in that round
        return statistics.median(ratios) <= 1.0 + TIE_MARGIN
    mine, theirs = interval(best, key), interval(other, key)
    return theirs is not None and theirs[0] <= mine[1] and mine[0] <= theirs[1]


def ship(column: str, names: list[str]) -> dict:
    """A ship column: the best candidate (None when none passes) and the candidates tied with it."""
    return {f"ship_{column}": names[0] if names else None, f"ship_{column}_tied": names[1:]}


def ship_cell(row: dict, column: str) -> str:
    """A tie as "`a` ≈ `b`", a clear winner as one name, marked ² where the record has no interval to show a tie."""
    best = row[f"ship_{column}"]
    if not best:
        return "none passes the gate"
    names = " ≈ ".join(code(m) for m in [best, *row.get(f"ship_{column}_tied", [])])
    return names if row.get("intervals") else f"{names}²"


def markdown(rows: list[dict], skipped: list[str] = ()) -> str:
    """The fleet table; every string from a record is escaped, and each folder left out is named below it."""
    head = ["machine", "INT8 dot product", "fastest INT8 (batch 256)", "× FP32 eager", "× own FP32", "% of INT8 peak"]
    head += ["lowest batch-1 latency", "ship (throughput)", "ship (latency)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        peak = f"{100 * r['peak_fraction']:.0f} %" if r["peak_fraction"] is not None else "n/a¹"
        eager, own = r["speedup_vs_fp32_eager"], r["speedup_vs_runtime_fp32"]  # None on a device with no PyTorch (the bench bundle)
        cells = [code(r["machine"]), escape(r["int8_dot"]), code(r["fastest_int8"]), f"{eager:.1f}×" if eager is not None else "–"]
        cells += [f"{own:.1f}×" if own is not None else "–", peak, code(r["lowest_latency_int8"])]
        cells += [ship_cell(r, "throughput"), ship_cell(r, "latency")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"At {rows[0]['threads']} thread, batch 256 (latency: batch 1). Rule: {SHIP_RULE}"]
    if any(r["peak_fraction"] is None for r in rows):
        lines.append("¹ recorded before the engine-best roofline: its INT8 peak was `torch._int_mm` alone (no fast path without VNNI).")
    if any(not r.get("intervals") and (r["ship_throughput"] or r["ship_latency"]) for r in rows):
        lines.append(SINGLE_RUN)
    lines += [f"Not shown: {escape(line)}" for line in skipped]
    return "\n".join(lines)


def speedup_rows(entries: list[dict]) -> list[dict]:
    """Every INT8 method's batch speed-up over FP32 eager at the smallest thread count, per machine (for the chart)."""
    rows = []
    for entry in entries:
        metrics = entry["metrics"]
        t = records.smallest_threads(metrics)
        for method, r in metrics["methods"].items():
            if r["precision"] == "int8" and r[t]["throughput_speedup_vs_fp32_eager"] is not None:
                rows.append({"machine": entry["name"], "method": method, "speedup": r[t]["throughput_speedup_vs_fp32_eager"]})
    return rows


def plot(entries: list[dict], path: Path, numerics_only: tuple[str, ...] = ()) -> None:
    """One group of bars per machine: what each INT8 method buys over FP32 eager there; machines measured for
    numerics only (emulated CPUs) are named under the chart, never drawn as bars."""
    import pandas as pd
    import seaborn as sns

    from edgequant.report.charts import _save, plt

    df = pd.DataFrame(speedup_rows(entries))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 1.3 * df["machine"].nunique()))
    sns.barplot(data=df, y="machine", x="speedup", hue="method", ax=ax, orient="h")
    ax.axvline(1, color="k", lw=0.8)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f×", fontsize=7, padding=2)
    ax.set(xlabel="× FP32 eager throughput (batch 256, 1 thread; each machine against its own FP32)", ylabel="")
    ax.set_title("INT8 speed-up per machine: the ranking of runtimes changes with the CPU")
    ax.legend(fontsize=8, loc="lower right")
    if numerics_only:
        fig.text(0.01, 0.005, f"also in the fleet, numerics only (emulated, no timing): {', '.join(numerics_only)}", fontsize=7)
    _save(fig, path)


def import_files(files: list[Path], machines: Path, replace: bool = True) -> Path:
    """Copy a machine's files, checked, into `machines/<name>/`, the name computed from its benchmark records.

    Nothing but that one folder is replaced, and only when it holds a machine's record already; without
    `replace`, only when it holds the same files (a later import of the same source is a plain copy again)."""
    from edgequant.files import atomic_dir

    data = records.read_files(files)
    where = {f.name: f for f in files}
    if "benchmark.json" not in data:
        raise records.RecordError(f"{files[0].parent}: no benchmark.json among {sorted(data)}; a machine's folder holds its benchmark")
    parsed = {n: records.parse_json(b, where[n]) for n, b in data.items() if n.endswith(".json")}
    name = records.check_benchmark(parsed["benchmark.json"], str(where["benchmark.json"]))
    probed = records.machine_name(parsed["machine.json"], str(where["machine.json"])) if "machine.json" in parsed else name
    if probed != name:
        raise records.RecordError(f"{where['machine.json']}: names the machine {probed}, but benchmark.json was measured on {name}")
    target = machines / name
    if target.is_symlink() or (target.exists() and not (target / "benchmark.json").is_file()):
        raise records.RecordError(f"{target}: exists and is not a machine's folder; move it away, the import would replace it whole")
    if not replace and target.exists() and {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} != data:
        raise records.RecordError(
            f"{target}: holds another run of this machine than {files[0].parent}; keep it, or replace it with `import --replace`"
        )
    with atomic_dir(target) as tmp:
        for file, content in data.items():
            (tmp / file).write_bytes(content)
    return target


def import_folder(folder: Path, machines: Path, replace: bool = False) -> Path:
    """A machine's folder (another checkout's machines/<name>/, a device's bench output) copied as it is."""
    if folder.is_symlink() or not folder.is_dir():
        raise records.RecordError(f"{folder}: not a folder; import a machine's folder (its benchmark.json and the files beside it)")
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return import_files(entries, machines, replace)


def save(files: list[Path], machine: Path, machines: Path) -> Path:
    """A run's outputs and the probe's record into `machines/<name>/` (the bench bundle's import; `save_run` for this checkout)."""
    return import_files([*files, machine], machines)


def save_run(machines: Path, root: Path = Path(".")) -> Path:
    """This checkout's run (RUN_FILES) into `machines/<name>/`, where the fleet stage and git keep it: `make machine`."""
    missing = [f for f in RUN_FILES if not (root / f).is_file()]
    if missing:
        raise records.RecordError(f"{missing[0]}: missing; run `dvc repro` first, then save the run")
    return import_files([root / f for f in RUN_FILES], machines)


def unsaved(read: Callable[[str], bytes | None], machines: str = "machines") -> list[str]:
    """The files of the run in metrics/ that have no identical copy in machines/<its name>/, as `read` sees them
    (the workspace, or a commit): empty when the fleet keeps the machine whose results are committed."""
    benchmark = read(RUN_FILES[0])
    if benchmark is None:
        return [RUN_FILES[0]]
    name = records.check_benchmark(records.parse_json(benchmark, RUN_FILES[0]), RUN_FILES[0])
    return [f for f in RUN_FILES if read(f) is None or read(f) != read(f"{machines}/{name}/{Path(f).name}")]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="python -m edgequant.fleet.table",
        description="Put a machine's results into the fleet (machines/<name>/, named by the probe's record).",
        epilog="`import FOLDER...` copies machines' folders as they are; `save` keeps this checkout's run (`make machine`); "
        "`FILE... --machine machine.json` imports a device's bench-bundle output.",
    )
    parser.add_argument("--out", type=Path, default=Path("machines"), help="the fleet folder (machines)")
    if argv[:1] == ["import"]:
        parser.add_argument("folders", nargs="+", type=Path, help="machines' folders, e.g. ../shared/machines/intel-xeon-amx")
        parser.add_argument("--replace", action="store_true", help="replace a machine's folder that holds another run of it")
        args = parser.parse_args(argv[1:])
        work = [lambda f=f: import_folder(f, args.out, args.replace) for f in args.folders]
    elif argv[:1] == ["save"]:
        args = parser.parse_args(argv[1:])
        work = [lambda: save_run(args.out)]
    else:
        parser.add_argument("files", nargs="+", type=Path, help="a run's outputs to keep (benchmark.json among them)")
        parser.add_argument("--machine", type=Path, required=True, help="the probe's machine record")
        args = parser.parse_args(argv)
        work = [lambda: save(args.files, args.machine, args.out)]
    for step in work:
        try:
            print(step().name)
        except (ValueError, OSError) as exc:
            print(f"fleet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
