"""Where one batch's time goes: per-operator times from each runtime's own profiler."""

from __future__ import annotations

import json
import re
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from edgequant.types import Runner

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


def profile_openvino(request, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median milliseconds per call of each executed node of an OpenVINO infer request compiled with
    PERF_COUNT, keyed "<type> <node> (<kernel>)": the kernel names the ISA and precision that ran."""
    feed = {0: x.numpy()}
    request.infer(feed)
    times: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        request.infer(feed)
        for info in request.get_profiling_info():
            if info.status.name == "EXECUTED":
                times[f"{info.node_type} {info.node_name} ({info.exec_type})"].append(info.real_time.total_seconds() * 1e3)
    return {op: float(np.median(t)) for op, t in times.items()}


def profile_litert(tflite: bytes, open_model: Callable[[bytes], object], feed: Callable[[dict], np.ndarray], runs: int) -> dict[str, float]:
    """Milliseconds per call of each operator of a .tflite model, keyed "<BUILTIN_OP> #<index>".

    LiteRT's Python interpreter exposes no profiler (its C API's LiteRtProfiler is not wrapped), so each
    operator's time is the median call of the model cut after it minus that of the model cut before it,
    every cut opened by `open_model` as the measurement opens the whole (XNNPACK, same threads); `feed`
    gives the input for the input tensor's details. A negative difference (noise on a tiny op) counts as 0.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    model.signatureDefs = None  # signatures name the whole model's output; a cut has its own
    graph = model.subgraphs[0]
    ops = list(graph.operators)
    totals = [0.0]
    for k in range(1, len(ops) + 1):
        graph.operators, graph.outputs = ops[:k], [ops[k - 1].outputs[0]]
        builder = flatbuffers.Builder(len(tflite) + 4096)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        runner = open_model(bytes(builder.Output()))
        source = runner.get_input_details()[0]
        x = feed(source)
        times = []
        for i in range(runs + 1):  # the first call warms up
            start = time.perf_counter()
            runner.set_tensor(source["index"], x)
            runner.invoke()
            if i:
                times.append((time.perf_counter() - start) * 1e3)
        totals.append(float(np.median(times)))
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    return {f"{names.get(codes[op.opcodeIndex], 'CUSTOM')} #{i}": max(totals[i + 1] - totals[i], 0.0) for i, op in enumerate(ops)}


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
