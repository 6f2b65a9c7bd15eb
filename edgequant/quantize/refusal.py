"""A runtime that cannot take the model: the method is refused in one line, recorded, and the pipeline goes on.

A user's model may hold an operator one runtime's converter has no conversion or kernel for, while every other
runtime takes it. Stages measure and only the gate judges, so that method's quantize stage records the refusal
(its meta.json holds `refused` and no artifact), the benchmark lists it under `refused` in its metrics beside the
methods it measured, and the gate fails a gated method that was refused: a candidate that cannot be built cannot
ship, and a release must drop it from `gate.methods` by choice, not pass without it unnoticed.

Which failures are the runtime's: those raised in a runtime's own package (RUNTIME_PACKAGES: its converter,
quantizer or interpreter, or torch's exporters) or in the user's model files, never in edgequant's code. The frames
on the stack when it was raised decide (`verdict`): edgequant's code that a runtime called (a forward it traces, a
hook) and that failed is edgequant's defect, as is anything edgequant raised itself (an input it refuses, a missing
runtime); so is an exception any of whose causes is. Those stop the stage as before, and so do a full disk (OSError),
memory exhaustion, and an exception that passed through no runtime or model code. Only the export call is wrapped:
recording a good export is edgequant's alone, and a failure there must not replace the artifact with a refusal.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import re
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGES = tuple(Path(__file__).resolve().parents[2] / name for name in ("edgequant", "stages"))  # edgequant's own code
# The third-party code whose failure on a model is a runtime's refusal of it: each runtime's converter, quantizer and
# interpreter, and torch's exporters (torch.export, the dynamo tracer beneath it, torch.onnx, inductor, eager quantization).
# Torch's core (its ops, fx, fake tensors) is none of them: a failure there counts for the code that called it.
RUNTIME_PACKAGES = (
    "onnxruntime", "onnx", "onnxscript", "openvino", "nncf", "ai_edge_litert", "litert_torch", "tensorflow", "executorch", "torchao",
    "torch.export", "torch._export", "torch._dynamo", "torch.onnx", "torch._inductor", "torch.ao.quantization",
)  # fmt: skip
OPERATOR = re.compile(r"\b((?:aten|prims)(?:::|\.)[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the ONNX exporter colours its messages for a terminal
MAX_REASON = 300  # characters of the runtime's own message kept in the one line


class Unsupported(ValueError):
    """A runtime's converter cannot take the model; the message is one line without the method's name."""


@functools.cache
def runtime_dirs() -> tuple[Path, ...]:
    """The folders of the RUNTIME_PACKAGES installed here."""
    found = []
    for name in RUNTIME_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):  # a parent package that fails to import: none of its frames can be on a stack
            continue
        if spec is not None:  # None: not installed
            found += [Path(p).resolve() for p in spec.submodule_search_locations or []]
    return tuple(found)


def owner(filename: str, model_files: frozenset[Path]) -> str | None:
    """Whose code a frame's file is: "edgequant", "runtime", "model" (the user's model files), or None (any other)."""
    path = Path(filename).resolve()
    if path in model_files:
        return "model"
    if any(path.is_relative_to(d) for d in PACKAGES):
        return "edgequant"
    return "runtime" if any(path.is_relative_to(d) for d in runtime_dirs()) else None


def verdict(owners: list[str | None]) -> str | None:
    """Whose failure it is, from the owners of the frames on the stack when it was raised (outermost first): the
    innermost frame of edgequant or the model decides. The model's: a "refusal". Edgequant's: "edgequant" where a
    runtime frame lies above it (the runtime called edgequant's code, a forward or a hook, and that failed) or none
    lies below it (edgequant raised it); a "refusal" where edgequant called the runtime and it failed in its own code.
    With neither, a "refusal" when a runtime frame is there, else None."""
    runtime = [i for i, o in enumerate(owners) if o == "runtime"]
    decides = [i for i, o in enumerate(owners) if o in ("edgequant", "model")]
    if not decides:
        return "refusal" if runtime else None
    last = decides[-1]
    if owners[last] == "model":
        return "refusal"
    return "edgequant" if any(i < last for i in runtime) or not any(i > last for i in runtime) else "refusal"


def is_refusal(exc: BaseException, model_files: Iterable[str | Path] = ()) -> bool:
    """Whether `exc` is a runtime's refusal of the model: no exception of its chain (`chain`) is edgequant's, and one
    is a refusal (`verdict`). A cause is judged on the frames above the handler that caught it as well as its own."""
    files = frozenset(Path(f).resolve() for f in model_files)
    stack: list[str | None] = []
    verdicts = []
    for link in chain(exc):
        stack += [owner(frame.filename, files) for frame in traceback.extract_tb(link.__traceback__)]
        verdicts.append(verdict(stack))
    return "edgequant" not in verdicts and "refusal" in verdicts


def chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from or while handling, outermost first, as a traceback prints them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def reason(exc: BaseException) -> str:
    """One line: the operator the runtime named (in its message or those of its causes), when it named one, and the
    first line of its message (terminal colours dropped)."""
    lines = [line.strip() for line in ANSI.sub("", str(exc)).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    operator = next((found for e in chain(exc) if (found := OPERATOR.search(str(e)))), None)
    head = f"operator {operator.group(1)} unsupported" if operator else "the model is unsupported"
    return f"{head} ({text[:MAX_REASON]})"


@contextlib.contextmanager
def runtime_refusals(runtime: str, model_files: Iterable[str | Path] = ()) -> Iterator[None]:
    """Turn a runtime's refusal of the model (`is_refusal`; `model_files`: the user's model module and the modules of
    the repository it imports) into Unsupported naming `runtime`; re-raise anything else."""
    try:
        yield
    except (MemoryError, OSError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - every runtime raises its own classes; only those is_refusal finds are refusals
        if isinstance(exc, Unsupported) or not is_refusal(exc, model_files):
            raise
        raise Unsupported(f"{runtime}: {reason(exc)}") from exc


def record(method: str, model: dict, refused: str) -> dict:
    """The meta.json of a refused method: no file to ship, the refusal, the model it was asked to take."""
    return {"method": method, "model": model["model"], "model_spec": model, "refused": f"{method}: {refused}"}


def refusal(out_dir: Path) -> str | None:
    """The recorded refusal of a method's directory, or None where its export succeeded (or nothing was exported)."""
    try:
        meta = json.loads((Path(out_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None  # the readers that need the record say what is wrong with it
    refused = meta.get("refused") if isinstance(meta, dict) else None
    return refused if isinstance(refused, str) and refused else None


def refused_methods(artifacts: Path, methods: list[str]) -> dict[str, str]:
    """{method: its recorded refusal} of the `methods` whose runtime refused them at export."""
    return {m: why for m in methods if (why := refusal(Path(artifacts) / m))}


def refusals(artifacts: Path, methods: list[str], baselines: dict[str, str]) -> dict[str, str]:
    """{method: one line} of the methods that cannot be measured: refused themselves, or their FP32 baseline was
    (every INT8 figure is a ratio to it)."""
    refused = refused_methods(artifacts, methods)
    for m in methods:
        base = baselines[m]
        if m not in refused and base in refused:
            refused[m] = f"{m}: its FP32 baseline was refused ({refused[base]})"
    return refused


def precision_refusals(methods: list[str], machine: dict) -> dict[str, str]:
    """{method: one line} of the `methods` whose precision this CPU (the probe's `machine` record: its flags and, on x86,
    the oneDNN ISA under any cap) lacks in hardware: BF16 without AVX512_BF16 would time an emulation under BF16's name
    (edgequant/quantize/precisions.py)."""
    from edgequant.quantize.catalog import get_method
    from edgequant.quantize.precisions import lacking

    flags, onednn = machine["flags"], (machine.get("isa") or {}).get("onednn")
    return {m: f"{m}: {why}" for m in methods if (why := lacking(get_method(m).precision, flags, onednn))}


def with_precision_refusals(refused: dict[str, str], methods: list[str], machine: dict) -> dict[str, str]:
    """`refused` and, after it, the `methods` not in it whose precision this CPU lacks (`precision_refusals`)."""
    return refused | {m: why for m, why in precision_refusals(methods, machine).items() if m not in refused}
