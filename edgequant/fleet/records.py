"""A machine's benchmark record, checked before the fleet reads it: a file made on another device is untrusted input.

Every refusal is one line naming the file and the field. The machine's name is computed from what the
probe recorded (`edgequant.measure.machine.slug`), never read from the record, and must be a plain slug: it
becomes a folder under `machines/`.
"""

from __future__ import annotations

import json
import math
import re
import stat
from pathlib import Path

from edgequant.measure.machine import name_of, slug
from edgequant.params import MAX_REPEATS
from edgequant.params import NAME as METHOD_NAME
from edgequant.quantize.precisions import PRECISIONS

MAX_FILE_BYTES = 4 * 2**20  # the largest real record is 23 KB (12 methods, 2 thread counts)
MAX_FOLDER_BYTES = 16 * 2**20
MAX_FILES = 32
MAX_DEPTH = 16  # a benchmark record nests 4 levels deep (methods.<m>.threads_1.<metric>)
MAX_NAME_CHARS = 64  # a machine's folder, experiment and fleet row
MAX_TEXT_CHARS = 200  # a CPU model name, an engine name
MAX_METHODS = 256
MAX_THREADS = 4096
# No CPU multiplies 10^15 pairs per second (the fastest measured here: ~10^12): beyond it a figure is not a measurement.
MAX_GMACS = 1e6
MAX_RATIO = 1e6  # a speed-up, size ratio or fraction of peak
MAX_LATENCY_MS = 1e7
REQUIRED_PEAKS = ("fp32", "int8")  # the precisions every record's roofline has (a BF16 engine came later)
# The figures a record may give a 95 % interval (edgequant/measure/intervals.py), with their largest value; throughput's
# is the record's own (MAX_GMACS over its MACs per image).
INTERVALS = {
    "throughput_ips": None,
    "latency_ms_p50": MAX_LATENCY_MS,
    "throughput_speedup_vs_fp32_eager": MAX_RATIO,
    "throughput_speedup_vs_runtime_fp32": MAX_RATIO,
}
MACHINE_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
FILE_SUFFIXES = (".json", ".csv", ".md", ".txt")  # records, tables and their notes; nothing executable or binary


class RecordError(ValueError):
    """An imported file cannot be a machine's record; the message is one line naming the file and field."""


def field(*keys: object) -> str:
    """A dotted path to a field, each key shown as it is when it is a plain name and quoted (bounded) otherwise."""
    return ".".join(k if isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,64}", k) else ascii(k)[:40] for k in keys)


def shown(value: object) -> str:
    """A value in a refusal: its type and a bounded, one-line picture of it."""
    return f"{type(value).__name__} {ascii(value)[:40]}"


def read_bytes(path: Path) -> bytes:
    """A regular file's bytes, its size bounded before anything is read (a symlink or device is refused)."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        raise RecordError(f"{path}: not a regular file (a symlink, folder or device); copy the file itself")
    if info.st_size > MAX_FILE_BYTES:
        raise RecordError(f"{path}: {info.st_size:,} bytes, more than a record holds (at most {MAX_FILE_BYTES:,})")
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise RecordError(f"{path}: more than {MAX_FILE_BYTES:,} bytes")
    return data


def depth(text: str) -> int:
    """How deeply a JSON text nests, counted without parsing it (the parser itself recurses)."""
    deepest = level = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', "", text)):
        level += 1 if bracket in "[{" else -1
        deepest = max(deepest, level)
    return deepest


def read_json(path: Path) -> object:
    """A bounded JSON file: size, nesting depth, and no NaN or Infinity literals."""
    return parse_json(read_bytes(path), path)


def parse_json(data: bytes, where: object) -> object:
    try:
        text = data.decode("utf-8")
        if depth(text) > MAX_DEPTH:
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        parsed = json.loads(text)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise RecordError(f"{where}: not a JSON record ({str(exc).splitlines()[0][:120]})") from exc
    check_finite(parsed, where)
    return parsed


def check_finite(parsed: object, where: object) -> None:
    """Python's JSON reader takes NaN and Infinity, which no measurement is: refused wherever they stand, by field."""
    stack: list[tuple[tuple, object]] = [((), parsed)]
    while stack:
        keys, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise RecordError(f"{where}: {field(*keys)} is {value}; a measurement is a finite number")
        if isinstance(value, dict):
            stack += [((*keys, k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [((*keys, i), v) for i, v in enumerate(value)]


def text(value: object, where: str, *keys: object, limit: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise RecordError(f"{where}: {field(*keys)} must be printable text of 1 to {limit} characters, got {shown(value)}")
    return value


def number(value: object, where: str, *keys: object, low: float = 0.0, high: float = MAX_RATIO, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and low <= value <= high
    if not ok or (positive and value <= 0):
        bound = f"{'>' if positive else '>='} {low:g} and <= {high:g}"
        raise RecordError(f"{where}: {field(*keys)} must be a finite number {bound}, got {shown(value)}")
    return float(value)


def optional(value: object, where: str, *keys: object, low: float = 0.0, high: float = MAX_RATIO) -> None:
    if value is not None:
        number(value, where, *keys, low=low, high=high)


def table(value: object, where: str, *keys: object) -> dict:
    if not isinstance(value, dict):
        raise RecordError(f"{where}: {field(*keys) or 'the record'} must be a JSON object, got {shown(value)}")
    return value


def check_machine_name(name: object, where: str, what: str = "the machine's name") -> str:
    """A machine's name is a folder under machines/: lower-case letters and digits joined by single '-', bounded."""
    if not is_machine_name(name):
        raise RecordError(
            f"{where}: {what} {shown(name)} is not a plain name"
            f" (lower-case letters and digits joined by '-', at most {MAX_NAME_CHARS} characters)"
        )
    return name


def is_machine_name(name: object) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME_CHARS and MACHINE_NAME.fullmatch(name) is not None


def read_flags(machine: dict) -> dict:
    """The CPU flags a machine record holds: the probe's `flags`, or the `flag_*` fields of records made before it."""
    if isinstance(machine.get("flags"), dict):
        return machine["flags"]
    return {key.removeprefix("flag_"): on for key, on in machine.items() if key.startswith("flag_")}


def smallest_threads(metrics: dict) -> str:
    """The key of the smallest thread count a benchmark record measured ("threads_1"): the count the fleet compares at."""
    return f"threads_{min(int(k.removeprefix('threads_')) for k in metrics['peak'])}"


def machine_name(machine: object, where: str) -> str:
    """The probe's name for the machine, computed from what it recorded (CPU, flags, arch, caps), never read
    from the record's `name`; records made before the probe carry `flag_*` fields and are named the same way."""
    machine = table(machine, where, "machine")
    if "name" in machine:  # ignored (an older probe may have named the CPU otherwise), but never a path
        check_machine_name(machine["name"], where, "machine.name")
    cpu = text(machine.get("cpu"), where, "machine", "cpu")
    if "flags" in machine:
        flags = table(machine["flags"], where, "machine", "flags")
        for flag, on in flags.items():
            if not isinstance(on, bool):
                raise RecordError(f"{where}: {field('machine', 'flags', flag)} must be true or false, got {shown(on)}")
        text(machine.get("arch"), where, "machine", "arch")
        isa = table(machine.get("isa"), where, "machine", "isa")
        for key in ("torch_cpu_capability", "onednn"):  # what the name of a capped machine is made of
            if isa.get(key) is not None:
                text(isa[key], where, "machine", "isa", key)
        for key, value in table(machine.get("caps"), where, "machine", "caps").items():
            if value is not None:
                text(value, where, "machine", "caps", key)
        text(isa.get("int8_dot"), where, "machine", "isa", "int8_dot")
        try:
            name = slug(machine)
        except (KeyError, TypeError, AttributeError) as exc:
            raise RecordError(f"{where}: the machine record lacks what the probe names a machine by ({type(exc).__name__}: {exc})") from exc
    else:
        flags = read_flags(machine)
        if not flags or not all(isinstance(on, bool) for on in flags.values()):
            raise RecordError(f"{where}: machine has neither the probe's `flags` nor `flag_*` fields of true or false")
        name = name_of(cpu, flags, text(machine.get("arch", "cpu"), where, "machine", "arch"))
    return check_machine_name(name, where)


def thread_keys(peak: dict, where: str) -> list[str]:
    keys = []
    for key in peak:
        count = key.removeprefix("threads_") if isinstance(key, str) else ""
        if not (count.isdigit() and count == str(int(count)) and 1 <= int(count) <= MAX_THREADS):
            raise RecordError(f"{where}: {field('peak', key)} is not a thread count (threads_1 to threads_{MAX_THREADS})")
        keys.append(key)
    if not keys:
        raise RecordError(f"{where}: peak measures no thread count (e.g. threads_1)")
    return sorted(keys, key=lambda k: int(k.removeprefix("threads_")))


def check_method(name: object, method: object, threads: list[str], macs: int, where: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_CHARS or not METHOD_NAME.fullmatch(name):
        raise RecordError(f"{where}: {field('methods', name)} is not a method name (lower-case letters, digits and '_')")
    method = table(method, where, "methods", name)
    precision = method.get("precision")
    if precision not in PRECISIONS:
        raise RecordError(f"{where}: {field('methods', name, 'precision')} must be one of {tuple(PRECISIONS)}, got {shown(precision)}")
    for key in ("runtime", "baseline"):
        if method.get(key) is not None:
            text(method[key], where, "methods", name, key)
    optional(method.get("accuracy_drop_pp"), where, "methods", name, "accuracy_drop_pp", low=-100.0, high=100.0)
    optional(method.get("size_ratio_vs_runtime_fp32"), where, "methods", name, "size_ratio_vs_runtime_fp32")
    optional(method.get("mcnemar_p"), where, "methods", name, "mcnemar_p", high=1.0)
    for key in ("flips_lost", "flips_gained"):
        if key in method and (not isinstance(method[key], int) or isinstance(method[key], bool) or method[key] < 0):
            raise RecordError(f"{where}: {field('methods', name, key)} must be a count, got {shown(method[key])}")
    for t in threads:
        run = table(method.get(t), where, "methods", name, t)
        number(run.get("throughput_ips"), where, "methods", name, t, "throughput_ips", high=MAX_GMACS * 1e9 / macs, positive=True)
        number(run.get("latency_ms_p50"), where, "methods", name, t, "latency_ms_p50", high=MAX_LATENCY_MS, positive=True)
        for key in ("throughput_speedup_vs_fp32_eager", "throughput_speedup_vs_runtime_fp32", "peak_fraction"):
            optional(run.get(key), where, "methods", name, t, key)
        for key, high in INTERVALS.items():
            check_interval(run, key, where, ("methods", name, t), MAX_GMACS * 1e9 / macs if key == "throughput_ips" else high)
    return method["precision"]


def check_interval(run: dict, key: str, where: str, keys: tuple, high: float) -> None:
    """A figure's 95 % interval, where the record has one (a run of one repeat, or one made before the repeats, has
    none): both ends, in range, around the figure; the fleet names ties by it."""
    low_key, high_key = f"{key}_ci95_low", f"{key}_ci95_high"
    if low_key not in run and high_key not in run:
        return
    for end in (low_key, high_key):
        if end not in run:
            raise RecordError(f"{where}: {field(*keys, end)} is missing; an interval has both ends")
        number(run[end], where, *keys, end, high=high, positive=True)
    value = number(run.get(key), where, *keys, key, high=high, positive=True)
    if not run[low_key] <= value <= run[high_key]:
        raise RecordError(f"{where}: {field(*keys, key)} {value:g} is not within its interval [{run[low_key]:g}, {run[high_key]:g}]")


def check_benchmark(metrics: object, where: str) -> str:
    """Everything the fleet reads from a benchmark record, in range; returns the machine's name."""
    metrics = table(metrics, where)
    name = machine_name(metrics.get("machine"), where)
    macs = metrics.get("macs_per_image")
    if not isinstance(macs, int) or isinstance(macs, bool) or not 0 < macs <= 10**15:
        raise RecordError(f"{where}: macs_per_image must be a whole number of MACs > 0, got {shown(macs)}")
    peak = table(metrics.get("peak"), where, "peak")
    threads = thread_keys(peak, where)
    for t in threads:
        roof = table(peak[t], where, "peak", t)
        for precision in PRECISIONS:  # FP32's and INT8's in every record; another's where it was measured
            if precision in REQUIRED_PEAKS or f"{precision}_gmacs" in roof:
                number(roof.get(f"{precision}_gmacs"), where, "peak", t, f"{precision}_gmacs", high=MAX_GMACS, positive=True)
            if f"{precision}_engine" in roof:
                text(roof[f"{precision}_engine"], where, "peak", t, f"{precision}_engine")
    methods = table(metrics.get("methods"), where, "methods")
    if not 0 < len(methods) <= MAX_METHODS:
        raise RecordError(f"{where}: methods must hold 1 to {MAX_METHODS} methods, got {len(methods)}")
    repeats = metrics.get("repeats")
    if repeats is not None and (not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= MAX_REPEATS):
        raise RecordError(f"{where}: repeats must be a whole number from 1 to {MAX_REPEATS}, got {shown(repeats)}")
    precisions = {check_method(m, r, threads, macs, where) for m, r in methods.items()}
    if "int8" not in precisions:
        raise RecordError(f'{where}: methods has no INT8 method (precision "int8"); the fleet compares INT8 methods')
    return name


def read_files(files: list[Path]) -> dict[str, bytes]:
    """The bytes of the files a machine's folder may hold: plain names, known kinds, bounded in number and size."""
    if not files or len(files) > MAX_FILES:
        raise RecordError(f"{files[0].parent if files else 'the import'}: {len(files)} files; a machine's folder holds 1 to {MAX_FILES}")
    read: dict[str, bytes] = {}
    for f in files:
        if not FILE_NAME.fullmatch(f.name) or f.suffix not in FILE_SUFFIXES:
            raise RecordError(f"{f}: not a record file (a plain name ending in {', '.join(FILE_SUFFIXES)})")
        if f.name in read:
            raise RecordError(f"{f}: a second file named {f.name}; a machine's folder holds one of each")
        read[f.name] = read_bytes(f)
    total = sum(map(len, read.values()))
    if total > MAX_FOLDER_BYTES:
        raise RecordError(f"{files[0].parent}: {total:,} bytes in all, more than a machine's folder holds (at most {MAX_FOLDER_BYTES:,})")
    return read
