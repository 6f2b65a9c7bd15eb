"""Every machine's reduced-precision float methods (BF16 today) against their own runtime's FP32, one row each.

The fleet table ranks INT8; a float format between FP32 and INT8 (every precision of edgequant/quantize/precisions.py
but the baseline and INT8) is a choice of its own, with its own accuracy cost. Each row is read from that machine's
benchmark record, in one run: accuracy and the images that flipped against FP32, and the batch-256 throughput and
batch-1 p50 as ratios to the same runtime's FP32 with their 95 % intervals. A machine with no row for a precision is
named with the reason: the probe's (its CPU lacks the instructions, from the flags its record holds) or, where the
CPU has them, that the record was made without such a method.
"""

from __future__ import annotations

from edgequant.fleet import records
from edgequant.quantize.precisions import PRECISIONS, lacking
from edgequant.report.markdown import code, escape

RANKED = "int8"  # the precision the fleet table ranks; every other non-baseline precision is shown here
HEAD = ["machine", "method", "own FP32", "accuracy %", "drop vs FP32 pp [95 % CI]", "images lost / gained"]
HEAD += ["× own FP32, batch 256 [95 % CI]", "× own FP32, batch-1 p50 [95 % CI]"]


def list_precisions() -> list[str]:
    """The precisions this table covers, in the order of the precision table."""
    return [name for name, p in PRECISIONS.items() if not p.baseline and name != RANKED]


def is_number(value: object) -> bool:
    """An imported record's field is shown only where it holds a number (records.py checks some fields, not all)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def format_ratio(run: dict, key: str) -> str:
    """ "4.91× [4.80–5.02]"; the figure alone for a record without an interval, "–" where the record has no such ratio."""
    value, low, high = run.get(key), run.get(f"{key}_ci95_low"), run.get(f"{key}_ci95_high")
    if not is_number(value):
        return "–"
    return f"{value:.2f}× [{low:.2f}–{high:.2f}]" if is_number(low) and is_number(high) else f"{value:.2f}×"


def format_figure(record: dict, key: str, fmt: str = ".2f") -> str:
    """A number of an imported record, or "–" where that record has none (the fleet shows what it can)."""
    value = record.get(key)
    return f"{value:{fmt}}" if is_number(value) else "–"


def format_drop(record: dict) -> str:
    """ "+0.01 [-0.01, +0.01]": the accuracy drop against FP32 in pp, with its interval where the record has it."""
    low, high = record.get("accuracy_drop_pp_ci95_low"), record.get("accuracy_drop_pp_ci95_high")
    value = format_figure(record, "accuracy_drop_pp", "+.2f")
    return f"{value} [{low:+.2f}, {high:+.2f}]" if is_number(low) and is_number(high) else value


def collect(entries: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows of every machine (`entries` as edgequant.fleet.table.load gives them), and one line for each
    machine and precision without a row, saying why."""
    rows: list[dict] = []
    missing: list[str] = []
    for entry in entries:
        metrics = entry["metrics"]
        t = records.smallest_threads(metrics)
        for precision in list_precisions():
            methods = {m: r for m, r in metrics["methods"].items() if r["precision"] == precision}
            for method, r in methods.items():
                rows.append({**r, "machine": entry["name"], "method": method, "run": r.get(t) if isinstance(r.get(t), dict) else {}})
            if not methods:
                machine = metrics.get("machine", {})
                onednn = machine["isa"].get("onednn") if isinstance(machine.get("isa"), dict) else None
                label = PRECISIONS[precision].label
                why = lacking(precision, records.read_flags(machine), onednn)
                why = why or f"this CPU has {label} instructions, but its record holds no {label} method"
                missing.append(f"No {label} row for {code(entry['name'])}: {escape(why)}")
    return rows, missing


def markdown(rows: list[dict], missing: list[str], threads: int) -> str:
    """The table, its reading, and the machines without a row; empty when the fleet has neither."""
    if not rows and not missing:
        return ""
    labels = " and ".join(PRECISIONS[p].label for p in list_precisions())
    lines = [f"{labels} beside FP32, per machine:", ""]
    if rows:
        lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        for r in rows:
            cells = [
                code(r["machine"]),
                code(r["method"]),
                code(r["baseline"]) if r.get("baseline") else "–",
                format_figure(r, "accuracy_pct"),
            ]
            cells += [format_drop(r), f"{format_figure(r, 'flips_lost', '.0f')} / {format_figure(r, 'flips_gained', '.0f')}"]
            cells += [
                format_ratio(r["run"], "throughput_speedup_vs_runtime_fp32"),
                format_ratio(r["run"], "latency_speedup_vs_runtime_fp32"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines += [
            "",
            f"At each machine's smallest thread count ({threads} here), one benchmark run per machine: each method against the FP32 of its "
            "own runtime (`own FP32`), as the median of the round-by-round ratios where the record keeps its rounds; the accuracy "
            "drop against FP32 with its interval from the images that flipped.",
        ]
    lines += ([""] if rows and missing else []) + missing
    return "\n".join(lines)
