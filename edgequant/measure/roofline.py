"""This CPU's GEMM peak per precision (FP32, BF16, INT8): the best of the GEMM engines present, so that no method can beat its own roofline.

One engine is not enough. `torch._int_mm` has no fast path without VNNI (0.5 GMAC/s on an AVX2 EPYC,
where ONNX Runtime's INT8 convolutions ran at 66), and `torch.mm` is slower than the FP32 convolutions
of XNNPACK and ONNX Runtime on the same core. Each engine multiplies two n×n matrices; the peak is the
fastest, and the record says which engine set it, the INT8 path each INT8 engine took on this CPU (AMX tiles,
AVX-512 VNNI, AVX2 pairs...: edgequant/measure/evidence.py) and the ceiling of the widest path the CPU has: its MACs
per cycle per core times the probe's clock times the threads, so a reader sees how far the best engine is from the
hardware.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils import benchmark as tbench

from edgequant.measure import evidence
from edgequant.measure.machine import probe
from edgequant.quantize.precisions import lacking

GemmFactory = Callable[[int, int], Callable[[], object]]  # (n, threads) -> a call that multiplies n×n by n×n
# The kernel of isa_evidence whose path and evidence each INT8 engine's are.
ENGINE_KERNELS = {
    "torch._int_mm": "_int_mm",
    "torch x86 quantized linear": "quantized linear (x86 engine)",
    "onnxruntime MatMulInteger": "MatMulInteger (MLAS U8S8 GEMM)",
}


def torch_mm(n: int, threads: int):
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: torch.mm(a, b)


def torch_mm_bf16(n: int, threads: int):
    """torch.mm on bfloat16 (oneDNN's BF16 GEMM where the CPU has BF16 instructions, an FP32 emulation elsewhere)."""
    a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
    return lambda: torch.mm(a, b)


def openvino_matmul_bf16(n: int, threads: int):
    """OpenVINO's CPU plugin on an n×n MatMul compiled with INFERENCE_PRECISION_HINT bf16, as openvino_bf16 runs;
    None where OpenVINO is not installed."""
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    a = ops.parameter([n, n], np.float32, name="a")
    model = ov.Model([ops.matmul(a, ops.constant(rng.standard_normal((n, n)).astype(np.float32)), False, False)], [a], "gemm")
    config = {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    request, x = ov.Core().compile_model(model, "CPU", config).create_infer_request(), rng.standard_normal((n, n)).astype(np.float32)
    return lambda: request.infer({0: x}, share_inputs=True)


def torch_int_mm(n: int, threads: int):
    a, b = torch.randint(-128, 128, (n, n), dtype=torch.int8), torch.randint(-128, 128, (n, n), dtype=torch.int8)
    return lambda: torch._int_mm(a, b)


def torch_quantized_linear(n: int, threads: int):
    """The x86 quantized engine's linear (FBGEMM/oneDNN): what torch.ao INT8 layers run on."""
    if "x86" not in torch.backends.quantized.supported_engines:
        return None
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated; it is still what they run on
        warnings.simplefilter("ignore", UserWarning)
        layer = torch.ao.nn.quantized.Linear(n, n)
        layer.set_weight_bias(torch.quantize_per_tensor(torch.randn(n, n), 0.02, 0, torch.qint8), None)
        x = torch.quantize_per_tensor(torch.rand(n, n), 1 / 255, 0, torch.quint8)
    return lambda: layer(x)


def _ort_session(model, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ONNX Runtime's GEMM of each precision: the op, its input and output types, the weight's numpy type.
ORT_GEMMS = {"fp32": ("MatMul", 1, 1, np.float32), "int8": ("MatMulInteger", 2, 6, np.int8)}  # 1 FLOAT, 2 UINT8, 6 INT32


def ort_gemm_model(precision: str, n: int):
    """An n×n GEMM as an ONNX model (the weight an initializer, as in a real layer); the bench bundle ships these."""
    import onnx

    op, input_type, output_type, weight_type = ORT_GEMMS[precision]
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, n)).astype(weight_type) if precision == "fp32" else rng.integers(-64, 64, (n, n), dtype=np.int8)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(op, ["a", "w"], ["y"])],
        "gemm",
        [onnx.helper.make_tensor_value_info("a", input_type, [n, n])],
        [onnx.helper.make_tensor_value_info("y", output_type, [n, n])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])


def ort_matmul(n: int, threads: int):
    session, a = _ort_session(ort_gemm_model("fp32", n), threads), np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return lambda: session.run(None, {"a": a})


def ort_matmul_integer(n: int, threads: int):
    """ONNX Runtime's u8×s8 GEMM (MLAS), what its QLinearConv and QGemm run on."""
    session, a = _ort_session(ort_gemm_model("int8", n), threads), np.random.default_rng(1).integers(0, 256, (n, n), dtype=np.uint8)
    return lambda: session.run(None, {"a": a})


# Keyed by the precisions of edgequant/quantize/precisions.py: every method's figures are against its precision's peak.
ENGINES: dict[str, dict[str, GemmFactory]] = {
    "fp32": {"torch.mm": torch_mm, "onnxruntime MatMul": ort_matmul},
    "bf16": {"torch.mm bf16": torch_mm_bf16, "openvino MatMul bf16": openvino_matmul_bf16},
    "int8": {
        "torch._int_mm": torch_int_mm,
        "torch x86 quantized linear": torch_quantized_linear,
        "onnxruntime MatMulInteger": ort_matmul_integer,
    },
}


def gmacs(call: Callable[[], object], n: int, threads: int, min_run_time_s: float) -> float:
    timer = tbench.Timer("call()", globals={"call": call}, num_threads=threads)
    return n**3 / timer.blocked_autorange(min_run_time=min_run_time_s).median / 1e9


def measure_peak(threads: int, n: int, min_run_time_s: float) -> dict:
    """GMAC/s of every engine at each precision, and the best per precision with the engine that set it; for INT8,
    each engine's path with its evidence, and the ceiling of the CPU's widest INT8 path at `threads` cores."""
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    flags, machine = evidence.cpu_flags(), probe()
    kernels = evidence.onnxruntime_int8(flags)["kernels"]  # first: before any ONNX Runtime session of this process
    result: dict = {}
    calls = {}
    for precision, engines in ENGINES.items():
        if lacking(precision, machine["flags"], machine["isa"]["onednn"]):  # an emulation's figure is no peak
            continue
        measured = {}
        for name, factory in engines.items():
            call = factory(n, threads)
            if call is not None:
                measured[name] = gmacs(call, n, threads, min_run_time_s)
                calls[name] = call
        best = max(measured, key=measured.get)
        result[f"{precision}_gmacs"], result[f"{precision}_engine"] = measured[best], best
        result[f"{precision}_engines_gmacs"] = measured
    torch_calls = {ENGINE_KERNELS[name]: calls[name] for name in ENGINES["int8"] if name in calls and name.startswith("torch")}
    kernels.update(evidence.torch_int8(flags, os.environ, torch_calls)["kernels"])
    engines = {name: kernels[ENGINE_KERNELS[name]] for name in result["int8_engines_gmacs"]}
    result["int8_engines_path"] = {name: kernel["path"] for name, kernel in engines.items()}
    result["int8_engines_evidence"] = {name: kernel["evidence"] for name, kernel in engines.items()}
    result["int8_engine_path"] = result["int8_engines_path"][result["int8_engine"]]
    ceiling = machine["isa"]["int8_ceiling"]
    result["int8_ceiling_path"], result["clock_mhz"] = ceiling["path"], machine["clock"]["mhz"]
    result["int8_ceiling_gmacs"] = ceiling["gmacs_per_core"] * threads if ceiling["gmacs_per_core"] else None
    return result
