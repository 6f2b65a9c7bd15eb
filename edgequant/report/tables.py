"""The tables the README and docs/ show, each built from one pipeline output (never typed by hand): the reference
beside this run, every method's results, the short summary, per-operator times, Ethos-U estimates, each workload's accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgequant.measure.ops import KIND_ORDER, conv_gmacs, ms_by_kind
from edgequant.quantize.precisions import BASELINE, PRECISIONS
from edgequant.report.markdown import code, escape
from edgequant.report.reference import REFERENCE


def reference_table(train: dict, metrics: dict) -> str:
    """The reference result (edgequant/report/reference.py) beside this run's, row by row."""
    ref, m = REFERENCE, metrics["methods"]
    t = f"threads_{thread_counts(metrics)[0]}"
    fp32, dyn = m["fp32"], m.get("dynamic_int8")
    int8 = {name: r for name, r in m.items() if r["precision"] == "int8" and name != "dynamic_int8"}
    best = max(int8, key=lambda name: int8[name][t]["throughput_ips"]) if int8 else None
    losses = " / ".join(f"{v:.4f}" for v in train["train_loss_per_epoch"])
    rows = [
        ("per-epoch mean training loss", " / ".join(f"{v:.4f}" for v in ref["train_loss_per_epoch"]), f"{losses} (train mode, dropout on)"),
        ("FP32 test accuracy", f"{ref['fp32_accuracy_pct']:.2f} %", f"**{fp32['accuracy_pct']:.2f} %**"),
    ]
    ref_ratio = ref["dynamic_int8_size_bytes"] / ref["fp32_size_bytes"]
    sizes = f"{ref['fp32_size_bytes'] / 1024:.2f} KB → {ref['dynamic_int8_size_bytes'] / 1024:.2f} KB ({100 * ref_ratio:.1f} %)"
    speed = f"none ({ref['fp32_eval_s']:.2f} s vs {ref['dynamic_int8_eval_s']:.2f} s)"
    if dyn is not None:
        agree = f"({dyn['agreement_with_fp32_pct']:.2f} % top-1 agreement with FP32)"
        rows.append(("dynamic INT8 accuracy", f"{ref['dynamic_int8_accuracy_pct']:.2f} %", f"**{dyn['accuracy_pct']:.2f} %** {agree}"))
        ours = f"**{fp32['size_bytes'] / 1024:.1f} KB → {dyn['size_bytes'] / 1024:.1f} KB** ({100 * dyn['size_ratio_vs_fp32']:.1f} %)"
        rows.append(("FP32 → dynamic INT8 state dict", sizes, ours))
        measured = f"dynamic: {dyn[t]['throughput_speedup_vs_fp32_eager']:.1f}× at batch 256, 1 thread"
        if best:
            measured += f"; **static INT8 ({code(best)}): {int8[best][t]['throughput_speedup_vs_fp32_eager']:.1f}×**"
        rows.append(("INT8 speed-up on CPU", speed, measured))
    lines = ["| | reference | edgequant |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def npu_table(npu: dict) -> str:
    """Vela's Ethos-U figures (metrics/npu.json), labelled as the compiler estimates they are."""
    head = ["accelerator", "system config / memory mode", "clock MHz", "est. cycles per image", "est. latency ms", "est. images/s"]
    head += ["SRAM KiB", "weights in", "NPU / CPU ops"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, a in npu["accelerators"].items():
        weights = f"{escape(a['weights_storage'])} ({max(a['flash_used_kib'], a['dram_used_kib']):.0f} KiB)"
        cells = [
            code(name),
            f"{escape(a['system_config'])} / {escape(a['memory_mode'])}",
            f"{a['clock_mhz']:.0f}",
            f"{a['est_cycles_per_inference']:,.0f}",
        ]
        cells += [f"{a['est_latency_ms']:.2f}", f"{a['est_inferences_per_s']:,.0f}", f"{a['sram_used_kib']:.1f}", weights]
        cells.append(f"{a['npu_operators']} / {a['cpu_operators']}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Vela on {code(npu['model'])} of `litert_int8`: {escape(npu['kind'])}."]
    return "\n".join(lines)


def spread(r: dict, key: str, fmt: str, unit: str = "") -> str:
    """A figure, with its 95 % interval over the benchmark's repeats in brackets where the record has one:
    "4368 [4301–4420]"; a record of one run (or one made before the repeats) shows the figure alone."""
    value = f"{r[key]:{fmt}}{unit}"
    low, high = r.get(f"{key}_ci95_low"), r.get(f"{key}_ci95_high")
    return value if low is None or high is None else f"{value} [{low:{fmt}}–{high:{fmt}}]"


def interval_note(metrics: dict) -> str:
    """What the brackets are, for a run that has them (edgequant/measure/intervals.py); empty otherwise."""
    covered = metrics.get("interval_coverage_pct")
    if covered is None:
        return ""
    return (
        f" In brackets: the 95 % interval of the median over {metrics['repeats']} interleaved repeats"
        f" (order statistics, {covered:.1f} % coverage)."
    )


def thread_counts(metrics: dict) -> list[int]:
    """The thread counts the benchmark measured, smallest first."""
    return sorted(int(k.removeprefix("threads_")) for k in metrics["peak"])


def markdown_table(metrics: dict) -> str:
    """The README's results table, straight from metrics/benchmark.json (never typed by hand)."""
    threads = thread_counts(metrics)
    head = ["method", "runtime", "size KB", "size vs own FP32", "top-1 %", "agree %", "logit SQNR dB"]
    for t in threads:
        head += [f"p50 ms b1 ({t}t)", f"img/s b256 ({t}t)", f"× FP32 eager ({t}t)", f"× own FP32 ({t}t)"]
    head.append(f"% of peak ({threads[0]}t)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics["methods"].items():
        cells = [code(name), escape(m["runtime"]), f"{m['size_bytes'] / 1024:.1f}", f"{m['size_ratio_vs_runtime_fp32'] * 100:.1f} %"]
        sqnr = m.get("logit_sqnr_db_vs_fp32")  # measured on this CPU, in the shipping runtime
        cells += [f"{m['accuracy_pct']:.2f}", f"{m['agreement_with_fp32_pct']:.2f}", "–" if sqnr is None or sqnr >= 200 else f"{sqnr:.1f}"]
        for t in threads:
            r = m[f"threads_{t}"]
            cells += [
                spread(r, "latency_ms_p50", ".3f"),
                spread(r, "throughput_ips", ".0f"),
                f"{r['throughput_speedup_vs_fp32_eager']:.1f}×",
                spread(r, "throughput_speedup_vs_runtime_fp32", ".1f", "×"),
            ]
        cells.append(f"{m[f'threads_{threads[0]}']['peak_fraction'] * 100:.0f} % ({m['precision']})")
        lines.append("| " + " | ".join(cells) + " |")
    peak, machine = metrics["peak"], metrics["machine"]
    peaks = "; ".join(f"{t} thread(s): {engine_peaks(peak[f'threads_{t}'])} GMAC/s" for t in threads)
    isa = machine["isa"]
    where = f"{code(machine['name'])} ({escape(machine['cpu'])}; torch {escape(isa['torch_cpu_capability'])}"
    where += f", oneDNN {escape(isa['onednn'])}, INT8 dot: {escape(isa['int8_dot'])})"
    lines += ["", f"Measured peaks, the best GEMM engine of each precision: {peaks}. Machine: {where}.{interval_note(metrics)}"]
    lines += ["", ceiling(metrics)]
    return "\n".join(lines)


def summary_table(metrics: dict, benchmark: dict) -> str:
    """The README's short results table: every method at the smallest thread count measured, and the machine."""
    t = thread_counts(metrics)[0]
    lat, batch = benchmark["latency_batch"], benchmark["throughput_batch"]
    head = ["method", "runtime", "size vs own FP32", "top-1 %", f"img/s (batch {batch})", "× FP32 eager", "× own FP32"]
    head.append(f"p50 ms (batch {lat})")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics["methods"].items():
        r = m[f"threads_{t}"]
        cells = [code(name), escape(m["runtime"]), f"{m['size_ratio_vs_runtime_fp32'] * 100:.1f} %", f"{m['accuracy_pct']:.2f}"]
        cells += [spread(r, "throughput_ips", ".0f"), f"{r['throughput_speedup_vs_fp32_eager']:.1f}×"]
        cells += [spread(r, "throughput_speedup_vs_runtime_fp32", ".1f", "×"), spread(r, "latency_ms_p50", ".3f")]
        lines.append("| " + " | ".join(cells) + " |")
    machine, isa = metrics["machine"], metrics["machine"]["isa"]
    where = f"{code(machine['name'])} ({escape(machine['cpu'])}, {escape(machine['cores'])} cores; INT8 dot: {escape(isa['int8_dot'])})"
    lines += ["", f"{t} thread{'s' * (t != 1)}, on {where}.{interval_note(metrics)}"]
    return "\n".join(lines)


def engine_peaks(roof: dict) -> str:
    """A roofline's peaks: each precision it measured, with the engine that set it."""
    measured = [(p.label, roof[f"{n}_gmacs"], roof[f"{n}_engine"]) for n, p in PRECISIONS.items() if f"{n}_gmacs" in roof]
    return ", ".join(f"{label} {gmacs:.0f} ({escape(engine)})" for label, gmacs, engine in measured)


def ceiling(metrics: dict) -> str:
    """The most any INT8 method could gain over FP32 eager in this run: every MAC at the INT8 GEMM peak."""
    int8 = [m for m, r in metrics["methods"].items() if r["precision"] == "int8"]
    if not int8:  # quantize.methods may hold FP32 methods only
        return "INT8 ceiling: no INT8 method was measured."
    parts = []
    for t in thread_counts(metrics):
        key = f"threads_{t}"
        bound_ips = metrics["peak"][key]["int8_gmacs"] * 1e9 / metrics["macs_per_image"]
        eager = metrics["methods"]["fp32"][key]["throughput_ips"]
        ips = {m: metrics["methods"][m][key]["throughput_ips"] for m in int8}
        best = max(ips, key=ips.get)
        parts.append(
            f"{t} thread(s): {bound_ips:,.0f} img/s = {bound_ips / eager:.1f}× FP32 eager"
            f" (best: {code(best)}, {ips[best] / eager:.1f}×, {100 * ips[best] / bound_ips:.0f} % of that bound)"
        )
    return "INT8 ceiling, every MAC of the network at the measured INT8 GEMM peak: " + "; ".join(parts) + "."


def ops_table(rows: list[dict]) -> str:
    """Milliseconds per batch by kind of operator, per method (plots/ops.csv), slowest method first."""
    ms = ms_by_kind(rows)
    if not ms:
        return "(no per-operator profile: benchmark.profile_runs is 0)"
    batch, threads = rows[0]["batch"], rows[0]["threads"]
    head = ["method", *KIND_ORDER, "total ms", "conv GMAC/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, by_kind in ms.items():
        gmacs = conv_gmacs(int(batch), by_kind["conv"], int(rows[0]["conv_macs_per_image"]))
        cells = [code(method), *(f"{by_kind[k]:.2f}" for k in KIND_ORDER), f"**{sum(by_kind.values()):.1f}**"]
        cells.append(f"{gmacs:.0f}" if gmacs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    where = f"Milliseconds per batch-{escape(batch)} call on {escape(threads)} thread"
    lines += ["", f"{where}, from each runtime's own profiler (`plots/ops.csv`)."]
    return "\n".join(lines)


def gate_verdicts(gate: dict) -> dict[str, str]:
    """Per gated method: "pass", or the limits it missed (from the gate stage's metrics/gate.json)."""
    missed: dict[str, list[str]] = {}
    for c in gate["checks"]:
        missed.setdefault(c["method"], [])
        what = "refused" if c.get("refused") else c["param"].removeprefix("gate.").removeprefix("max_").removeprefix("min_").split("_")[0]
        if not c["passed"] and what not in missed[c["method"]]:
            missed[c["method"]].append(what)
    return {m: "pass" if not what else "misses " + ", ".join(what) for m, what in missed.items()}


def workload_table(name: str, metrics: dict, params: dict, settings: dict, gate: dict) -> str:
    """One workload's accuracy side (its run under workloads/<name>/): per method, the drop against FP32 with
    its exact 95 % interval, the test images that flipped each way and McNemar's p, beside what the method buys."""
    m = metrics["methods"]
    t = f"threads_{thread_counts(metrics)[0]}"
    fp32 = m["fp32"]
    head = [
        "method",
        "top-1 %",
        "drop pp [95 % interval]",
        "flips lost / gained",
        "McNemar p",
        "size vs own FP32",
        "speed vs own FP32",
        "layers kept FP32 (validation drop)",
        "gate",
    ]
    verdicts = gate_verdicts(gate)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, r in sorted(m.items(), key=lambda kv: (kv[1]["precision"] != BASELINE, -kv[1]["accuracy_pct"])):
        cells = [code(method), f"{r['accuracy_pct']:.2f}"]
        significant = r["precision"] != BASELINE and r["mcnemar_p"] < 0.05
        if r["precision"] == BASELINE:
            cells += ["–", "–", "–", "1.00", "1.00", "–", "–"]
        else:
            drop = f"**{r['accuracy_drop_pp']:+.2f}**" if significant else f"{r['accuracy_drop_pp']:+.2f}"
            interval = f"[{r['accuracy_drop_pp_ci95_low']:+.2f}, {r['accuracy_drop_pp_ci95_high']:+.2f}]"
            cells += [f"{drop} {interval}", f"{r['flips_lost']} / {r['flips_gained']}", f"{r['mcnemar_p']:.3g}"]
            cells += [f"{r['size_ratio_vs_runtime_fp32']:.2f}", spread(r[t], "throughput_speedup_vs_runtime_fp32", ".2f", "×")]
            search = settings.get(method) or {}
            kept = ", ".join(code(layer) for layer in search.get("fp32_layers", [])) or "none"
            cells.append(f"{kept} ({search['validation_drop_pp']:+.2f} pp)" if "fp32_layers" in search else "–")
            cells.append(escape(verdicts.get(method, "–")))
        lines.append("| " + " | ".join(cells) + " |")
    for method, why in metrics.get("refused", {}).items():  # its runtime could not take the model: nothing measured
        lines.append(f"| {code(method)} | – | {escape(why)} | – | – | – | – | – | {escape(verdicts.get(method, '–'))} |")
    from edgequant.fleet.table import machine_name

    p, g, batch = params["train"], params["gate"], params["benchmark"]["throughput_batch"]
    machine = metrics["machine"].get("name") or machine_name(metrics["machine"])  # this checkout's own probe named it
    epochs = f"{p['epochs']} epoch{'s' * (p['epochs'] != 1)}"
    lines += [
        "",
        f"{code(params['download']['dataset'])} × {code(p['model'])}, {epochs} ({escape(p['optimizer'])}, lr {escape(p['lr'])}):"
        f" FP32 {fp32['accuracy_pct']:.2f} %; {escape(params['prepare']['calib_size'])} training images calibrate."
        " A difference in bold is significant (McNemar's exact test on the flipped test images: p < 0.05); a negative drop is a gain."
        f" Speed: batch {escape(batch)}, {t.split('_')[1]} thread{'s' * (t != 'threads_1')}, on {code(machine)}."
        f" Gate: `gate.methods` against {escape(g['max_accuracy_drop_pp'])} pp, speed-up ≥ {escape(g['min_speedup'])},"
        f" size ≤ {escape(g['max_size_ratio'])}"
        f" ({'enforced' if g['enforce'] else 'recorded, not enforced'}).{interval_note(metrics)}"
        f" From {code(f'workloads/{name}/')} (`params.yaml`, `metrics/benchmark.json`, `metrics/settings.json`, `metrics/gate.json`).",
    ]
    return "\n".join(lines)


def workload_tables(root: Path) -> str:
    """Every workload under `root` (workloads/) that has run, one table each."""
    import yaml

    tables = []
    for folder in sorted(p for p in root.iterdir() if (p / "metrics/benchmark.json").is_file()) if root.is_dir() else []:
        metrics, settings, gate = (
            json.loads((folder / "metrics" / f).read_text()) for f in ("benchmark.json", "settings.json", "gate.json")
        )
        params = yaml.safe_load((folder / "params.yaml").read_text())
        tables.append(f"#### {escape(folder.name)}\n\n" + workload_table(folder.name, metrics, params, settings, gate))
    return "\n\n".join(tables) or "(no workload under workloads/ has run: `dvc repro -P`)"
