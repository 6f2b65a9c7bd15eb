"""Where one batch's time goes: per-operator times from each runtime's own profiler."""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from edgequant.layers import conv_macs
from edgequant.types import Runner

# First match wins: "Convert (NC)" is a layout op, not a convolution; "QLinearConv" is a conv;
# "DequantizeLinear" (ONNX) converts, while "quantized::linear" (torch.ao) is a fully connected layer.
KINDS = (
    ("max pool", re.compile(r"pool", re.I)),
    ("conv", re.compile(r"conv(?!ert)", re.I)),
    ("layout & quantize", re.compile(r"transpose|copy|convert|quantize(?!d)|reorder|reshape|clone|contiguous|permute|slice|empty", re.I)),
    ("fully connected", re.compile(r"fully connected|gemm|linear|addmm|\bmm\b", re.I)),
    ("ReLU", re.compile(r"relu|clamp_min", re.I)),  # eager runs ReLU on its own; engines fuse it into the layer before
)


# The order tables and charts show them in: the layers' own work first, then what surrounds it.
KIND_ORDER = ("conv", "fully connected", "max pool", "ReLU", "layout & quantize", "other")


def kind_of(op: str) -> str:
    """The kind of work an operator name stands for, across the runtimes' naming schemes."""
    return next((kind for kind, pattern in KINDS if pattern.search(op)), "other")


def profile_torch(run: Runner, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Milliseconds per call spent in each PyTorch operator (self time, so nothing counts twice).

    A compiled graph's own kernels show up as one entry for the whole graph: inductor fuses them.
    """
    from torch.profiler import ProfilerActivity, profile

    run(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            run(x)
    return {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages() if e.self_cpu_time_total > 0}


def profile_executorch(pte: bytes, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median milliseconds per call of each operator in an ExecuTorch program, from its ETDump.

    XNNPACK reports every op it runs inside the delegate ("Convolution (NHWC, QC8) IGEMM #2");
    ops outside it report as themselves. The delegate call and method totals are left out.
    """
    from executorch.devtools import Inspector
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte, enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(runs):
        method.execute([x])
    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        with warnings.catch_warnings():
            # Timing is all we ask for; without intermediate outputs it warns that tensor data is absent.
            warnings.filterwarnings("ignore", message="Output Buffer not found", category=UserWarning)
            frame = Inspector(etdump_path=str(etdump)).to_dataframe()
    frame = frame[(frame["event_block_name"] == "Execute") & ~frame["event_name"].isin(["DELEGATE_CALL", "Method::execute"])]
    return {row["event_name"]: float(row["p50 (ms)"]) for _, row in frame.iterrows()}


def profile_onnx(profiled_session: Callable[[str], object], x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median milliseconds per call of each node of an ONNX Runtime session, from its JSON profile.

    `profiled_session(prefix)` builds the session as the measurement does (threads, graph
    optimizations), with profiling on and its JSON written under `prefix`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = profiled_session(str(Path(tmp) / "ort"))
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[f"{e['args']['op_name']} {e['name'].removesuffix('_kernel_time')}"].append(e["dur"] / 1e3)
    return {op: float(np.median(t)) for op, t in times.items()}


OP_COLUMNS = ("method", "runtime", "precision", "threads", "batch", "op", "kind", "ms_per_batch", "share_pct")


def op_rows(method: str, runtime: str, precision: str, threads: int, batch: int, ops: dict[str, float]) -> list[dict]:
    """CSV rows (OP_COLUMNS) for one method: each operator, slowest first, with its kind and share of the total."""
    total = sum(ops.values()) or 1.0
    ranked = sorted(ops.items(), key=lambda kv: -kv[1])
    common = {"method": method, "runtime": runtime, "precision": precision, "threads": threads, "batch": batch}
    return [{**common, "op": op, "kind": kind_of(op), "ms_per_batch": ms, "share_pct": 100 * ms / total} for op, ms in ranked]


def ms_by_kind(rows: Iterable[Mapping]) -> dict[str, dict[str, float]]:
    """Milliseconds per batch by kind (every kind of KIND_ORDER) for each method of `rows` (OP_COLUMNS),
    slowest method first: the one summary the README table and the ops chart both show."""
    ms: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KIND_ORDER, 0.0))
    for row in rows:
        ms[row["method"]][row["kind"]] += float(row["ms_per_batch"])
    return dict(sorted(ms.items(), key=lambda kv: -sum(kv[1].values())))


def conv_gmacs(batch: int, conv_ms: float) -> float | None:
    """GMAC/s the convolutions reach when a batch of `batch` spends `conv_ms` in them (None when 0 ms)."""
    return batch * conv_macs() / conv_ms / 1e6 if conv_ms > 0 else None
