"""Numerics-only fleet rows: what the shipped artifacts answer on a CPU that was emulated, with no timing at all.

A row lives in `machines/<name>/numerics.json` (edgequant.device.emulate writes it), beside the timed rows'
`benchmark.json`: an emulator's speed says nothing about the CPU it emulates, so such a row carries no
latency, throughput or peak, and this module refuses one that does. The fleet lists these rows in a table
of their own, labelled with LABEL.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from edgequant.fleet import records
from edgequant.report.markdown import code, escape

FILE = "numerics.json"
LABEL = "emulated: numerics only, no timing"
# Key names that would carry a speed figure: none may appear anywhere in a numerics-only record.
TIMING_KEY = re.compile(r"latency|throughput|_ips\b|gmacs|peak|speedup|^threads_|_ms(_|$)|_s$|seconds")
PERCENT_FIELDS = ("accuracy_pct", "agreement_with_fp32_pct")


def timing_keys(value: object, where: str = "") -> list[str]:
    """The dotted paths of every key in `value` that names a timing figure."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if TIMING_KEY.search(str(key)):
                found.append(path)
            found += timing_keys(item, path)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += timing_keys(item, f"{where}[{i}]")
    return found


def validate(record: object, source: str) -> dict:
    """The record if it is a numerics-only row; otherwise a one-line ValueError naming the file and the field."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: not a numerics-only record (a JSON object is expected)")
    if record.get("numerics_only") != LABEL:
        raise ValueError(f"{source}: field numerics_only must read {LABEL!r}; re-run `make arm-numerics`")
    machine = record.get("machine")
    if not isinstance(machine, dict) or not isinstance(machine.get("name"), str) or not machine["name"]:
        raise ValueError(f"{source}: machine.name is missing; re-run `make arm-numerics`")
    methods = record.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise ValueError(f"{source}: methods is empty: the bundle held no ONNX or ExecuTorch artifact")
    for name, entry in methods.items():
        for field in PERCENT_FIELDS:
            value = entry.get(field) if isinstance(entry, dict) else None
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or not 0 <= value <= 100:
                raise ValueError(f"{source}: methods.{name}.{field} must be a percentage, got {value!r}")
    timed = timing_keys(record)
    if timed:
        raise ValueError(f"{source}: an emulated row carries no timing, but it has {', '.join(timed)}")
    return record


def load(folder: Path) -> dict:
    """One numerics-only row: its machine's name, the record and where it came from."""
    path = folder / FILE
    record = validate(records.read_json(path), path.as_posix())  # bounded in size and depth, finite numbers only
    records.check_machine_name(record["machine"].get("name"), path.as_posix())
    return {"name": record["machine"]["name"], "record": record, "source": path.as_posix()}


def is_numerics_folder(folder: Path) -> bool:
    """A numerics-only row: its record and no benchmark (the fleet's timed table leaves it to this module's)."""
    return (folder / FILE).is_file() and not (folder / "benchmark.json").exists()


def gather(machines: Path) -> tuple[list[dict], list[str]]:
    """Every numerics-only row under `machines/`, by folder name, and one line per folder that cannot be shown."""
    entries, skipped = [], []
    for folder in sorted(machines.iterdir()):
        if folder.is_dir() and not folder.is_symlink() and is_numerics_folder(folder):
            try:
                entries.append(load(folder))
            except (ValueError, OSError) as exc:
                skipped.append(str(exc).splitlines()[0])
    return entries, skipped


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(entries: list[dict]) -> str:
    """The fleet's table of emulated rows: per method, what the Arm kernels answered; no speed column exists."""
    head = ["machine", "emulator", "method", "INT8 path seen", "accuracy %", "agreement with FP32 %", "drop vs own FP32 (pp)"]
    head += ["same top-1 as the host %"]
    lines = [f"Emulated CPUs ({LABEL}):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        record = entry["record"]
        emulator = record.get("emulator", {})
        where = f"qemu {escape(str(emulator.get('qemu', '?')))} {code('-cpu ' + str(emulator.get('cpu_model', '?')))}"
        for name, m in record["methods"].items():
            host = m.get("vs_host") or {}
            path = escape(str(m["kernel_path"])) if m.get("kernel_path") else "–"
            cells = [code(entry["name"]), where, code(str(name)), path, _pct(m["accuracy_pct"])]
            cells += [_pct(m["agreement_with_fp32_pct"]), _pct(m.get("accuracy_drop_pp")), _pct(host.get("agreement_pct"))]
            lines.append("| " + " | ".join(cells) + " |")
    if entries:
        images = ", ".join(str(i) for i in sorted({e["record"].get("images") for e in entries}, key=str))
        lines += ["", f"On the bundle's {images} test images; no speed is shown for these rows."]
    return "\n".join(lines)
