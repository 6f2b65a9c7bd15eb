"""A runtime that cannot take the model: the method is refused in one line, recorded, and the pipeline goes on.

A user's model may hold an operator one runtime's converter has no conversion or kernel for, while every other
runtime takes it. Stages measure and only the gate judges, so that method's quantize stage records the refusal
(its meta.json holds `refused` and no artifact), the benchmark lists it under `refused` in its metrics beside the
methods it measured, and the gate fails a gated method that was refused: a candidate that cannot be built cannot
ship, and a release must drop it from `gate.methods` by choice, not pass without it unnoticed.

Which failures are the runtime's: an exception raised inside a third-party package (the converter, torch.export,
the user's model under tracing). One raised by edgequant's own code is a defect or a refused input and stops the
stage as before; so do a full disk (OSError) and memory exhaustion.
"""

from __future__ import annotations

import contextlib
import json
import re
import traceback
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # edgequant/
OPERATOR = re.compile(r"\b(aten(?:::|\.)[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)")
MAX_REASON = 300  # characters of the runtime's own message kept in the one line


class Unsupported(ValueError):
    """A runtime's converter cannot take the model; the message is one line without the method's name."""


def raised_by_edgequant(exc: BaseException) -> bool:
    """Whether the innermost frame of `exc`'s traceback is edgequant's own code."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE)


def reason(exc: BaseException) -> str:
    """One line: the operator the runtime named, when it named one, and the first line of its message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    operator = OPERATOR.search(str(exc))
    head = f"operator {operator.group(1)} unsupported" if operator else "the model is unsupported"
    return f"{head} ({text[:MAX_REASON]})"


@contextlib.contextmanager
def runtime_refusals(runtime: str) -> Iterator[None]:
    """Turn an exception a third-party package raised into Unsupported naming `runtime`; re-raise anything else."""
    try:
        yield
    except (MemoryError, OSError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - every runtime raises its own classes; only those raised outside edgequant are refusals
        if isinstance(exc, Unsupported) or raised_by_edgequant(exc):
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


def refusals(artifacts: Path, methods: list[str], baselines: dict[str, str]) -> dict[str, str]:
    """{method: one line} of the methods that cannot be measured: refused themselves, or their FP32 baseline was
    (every INT8 figure is a ratio to it)."""
    refused = {m: r for m in methods if (r := refusal(Path(artifacts) / m))}
    for m in methods:
        base = baselines[m]
        if m not in refused and base in refused:
            refused[m] = f"{m}: its FP32 baseline was refused ({refused[base]})"
    return refused
