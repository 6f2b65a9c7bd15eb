"""The numeric precisions a method may run in: one table read by the registry, the benchmark, the roofline, the charts,
the reports and the fleet's records. Adding a precision is one entry here (and its GEMM engines in
edgequant/measure/roofline.py); every method names one of these.

A precision some CPUs lack in hardware (BF16: AVX512_BF16 on x86, which the Xeons with AMX-BF16 have too; BF16 on Arm) still runs elsewhere,
emulated through FP32 or silently promoted to it, which would time and score something else under its name. The
benchmark therefore measures such a method only where the machine record has one of its `native_flags`, and lists it
with `lacking`'s one-line reason otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class Precision:
    name: str  # what a method's `precision` and the metrics say
    label: str  # what tables and charts print
    marker: str  # matplotlib marker of its points in the trade-off charts
    baseline: bool  # the precision every speed-up and accuracy drop is measured against
    native_flags: tuple[str, ...] = ()  # CPU flags (machine record), any of which runs it natively; (): every CPU
    # x86: the oneDNN ISAs (the record's isa.onednn, ONEDNN_MAX_CPU_ISA's cap applied) whose kernels run it; (): any
    onednn_isas: tuple[str, ...] = ()


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "FP32", "o", baseline=True),
        Precision(
            "bf16", "BF16", "s", baseline=False, native_flags=("avx512_bf16", "bf16"), onednn_isas=("AVX512_CORE_BF16", "AVX512_CORE_AMX")
        ),  # x86 (AMX parts too), Arm
        Precision("int8", "INT8", "D", baseline=False),
    )
}
BASELINE = next(p.name for p in PRECISIONS.values() if p.baseline)


def get_precision(name: str) -> Precision:
    """The precision `name`, or ValueError listing the known ones."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; known precisions: {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def lacking(precision: str, flags: Mapping[str, bool], onednn: str | None = None) -> str | None:
    """Why this CPU (its machine record's `flags`, and on x86 the oneDNN ISA it records: `onednn`, a cap applied)
    cannot run `precision` natively, in one line; None where it can."""
    p = get_precision(precision)
    if p.native_flags and not any(flags.get(flag) for flag in p.native_flags):
        return (
            f"this CPU has no {p.label} instructions (none of {', '.join(p.native_flags)} in the machine record): "
            f"{p.label} would run emulated or promoted to FP32, so it is not measured here"
        )
    if p.onednn_isas and onednn is not None and onednn not in p.onednn_isas:
        return (
            f"oneDNN is capped at {onednn} (ONEDNN_MAX_CPU_ISA), below {p.label}'s kernels ({', '.join(p.onednn_isas)}): "
            f"{p.label} would run emulated or promoted to FP32, so it is not measured here"
        )
    return None
