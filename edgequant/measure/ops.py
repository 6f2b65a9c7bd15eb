"""Where one batch's time goes: operators by kind across the runtimes' naming schemes, and PyTorch's profiler.

Each other runtime's profiler lives beside its method (edgequant/quantize/methods/<runtime>.py)."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

import torch

# First match wins: "Convert (NC)" is a layout op, not a convolution; "QLinearConv" is a conv;
# "DequantizeLinear" (ONNX) converts, while "quantized::linear" (torch.ao) is a fully connected layer.
KINDS = (
    # OpenVINO names each op "<type> <node>"; a Reorder's node names the conv it feeds, so its type decides.
    ("layout & quantize", re.compile(r"^(Reorder|Reshape|Transpose|FakeQuantize|Convert)\b")),
    ("max pool", re.compile(r"pool", re.I)),
    ("conv", re.compile(r"conv(?!ert)", re.I)),
    ("layout & quantize", re.compile(r"transpose|copy|convert|quantize(?!d)|reorder|reshape|clone|contiguous|permute|slice|empty", re.I)),
    ("fully connected", re.compile(r"fully[ _]?connected|gemm|linear|addmm|\bmm\b", re.I)),
    ("ReLU", re.compile(r"relu|clamp_min", re.I)),  # eager runs ReLU on its own; engines fuse it into the layer before
)


# The order tables and charts show them in: the layers' own work first, then what surrounds it.
KIND_ORDER = ("conv", "fully connected", "max pool", "ReLU", "layout & quantize", "other")


def kind_of(op: str) -> str:
    """The kind of work an operator name stands for, across the runtimes' naming schemes."""
    return next((kind for kind, pattern in KINDS if pattern.search(op)), "other")


def profile_torch(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, runs: int) -> dict[str, float]:
    """Milliseconds per call spent in each PyTorch operator (self time, so nothing counts twice).

    A compiled graph's own kernels show up as one entry for the whole graph: inductor fuses them.
    """
    from torch.profiler import ProfilerActivity, profile

    run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run(x)
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages() if e.self_cpu_time_total > 0}


OP_COLUMNS = ("method", "runtime", "precision", "threads", "batch", "conv_macs_per_image", "op", "kind", "ms_per_batch", "share_pct")


def op_rows(method: str, runtime: str, precision: str, threads: int, batch: int, conv_macs: int, ops: dict[str, float]) -> list[dict]:
    """CSV rows (OP_COLUMNS) for one method: each operator, slowest first, with its kind and share of the total."""
    total = sum(ops.values()) or 1.0
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])
    common = {
        "method": method,
        "runtime": runtime,
        "precision": precision,
        "threads": threads,
        "batch": batch,
        "conv_macs_per_image": conv_macs,
    }
    return [{**common, "op": op, "kind": kind_of(op), "ms_per_batch": ms, "share_pct": 100 * ms / total} for op, ms in ranked]


def ms_by_kind(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Milliseconds per batch by kind (every kind of KIND_ORDER) for each method of `rows` (OP_COLUMNS),
    slowest method first: the one summary the README table and the ops chart both show."""
    ms: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KIND_ORDER, 0.0))
    for row in rows:
        ms[row["method"]][row["kind"]] += float(row["ms_per_batch"])
    return dict(sorted(ms.items(), key=lambda kv: -sum(kv[1].values())))


def conv_gmacs(batch: int, conv_ms: float, conv_macs: int) -> float | None:
    """GMAC/s the convolutions reach when a batch of `batch` spends `conv_ms` in them (None when 0 ms)."""
    return batch * conv_macs / conv_ms / 1e6 if conv_ms > 0 else None
