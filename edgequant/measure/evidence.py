"""The INT8 path each runtime's kernels take on this CPU, with the evidence that shows it.

The probe (edgequant/measure/machine.py) says what each library's dispatch rule gives for the CPU's flags; this module
asks the runtimes, so it imports them and runs in the benchmark stage (a process of its own, or the roofline's):
- torch: oneDNN's verbose lines, its ISA line and the implementation of each INT8 primitive (e.g.
  `brg_conv_fwd:avx512_core_amx`). The x86 engine's quantized linear, and its conv on a CPU without AVX-512 VNNI,
  run on FBGEMM, which reports nothing: there the path is FBGEMM's rule, checked against the fingerprint.
- OpenVINO: the implementation of each INT8 node in the compiled model's execution graph (rt_info primitiveType,
  e.g. `brgconv_avx512_amx_I8`).
- ONNX Runtime: MLAS logs nothing and its profiler names ops, not kernels (`MatMulInteger_0_kernel_time`), so the
  path is MLAS's dispatch rule (mlas/lib/platform.cpp), checked against the fingerprint and, on an AMX CPU,
  against the tile-data permission that MLAS asks Linux for only when it selects its AMX kernel.

Each kernel's result on inputs that make int16 pair sums saturate (the fingerprint) is read with the kernel names
by edgequant/measure/kernels.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from edgequant.measure.kernels import (
    EXACT,
    QUANT_STEPS,
    SATURATED,
    K,
    checked,
    fingerprint,
    isa_line_path,
    kernel_name_path,
    onednn_int8_primitives,
    onednn_isa_line,
)
from edgequant.measure.machine import INT8_PATHS, fbgemm_path, mlas_path, onednn_isa, onednn_path, read_cpuinfo

XFEATURE_XTILEDATA = 1 << 18  # Linux's AMX tile-data state component
ARCH_GET_XCOMP_PERM, SYS_ARCH_PRCTL = 0x1022, 158  # x86-64


# --- oneDNN (torch) -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stdout_lines():
    """The lines written to file descriptor 1 inside the block: oneDNN prints its verbose lines there with printf."""
    lines: list[str] = []
    libc = ctypes.CDLL(None) if os.name == "posix" else ctypes.cdll.msvcrt
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield lines
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def onednn_verbose(call: Callable[[], object]) -> list[str]:
    import torch

    with stdout_lines() as lines, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        call()
    return [line for line in lines if line.startswith("onednn_verbose")]


# --- torch ----------------------------------------------------------------------------------------------------


def onednn_header(flags: set[str], env: Mapping[str, str]) -> dict:
    """oneDNN's ISA line (from a tiny FP32 convolution, forced onto oneDNN) and the INT8 path it allows; by rule
    where the line was already printed earlier in this process."""
    import torch

    x, w = torch.ones(1, 8, 8, 8), torch.ones(8, 8, 3, 3)
    line = onednn_isa_line(onednn_verbose(lambda: torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)))
    rule = onednn_path(onednn_isa(flags, env))
    return {"isa_line": line, "path": isa_line_path(line) if line else rule}


def torch_kernel(library_rule: str | None, run: Callable[[], float], exact: float, saturated: float, header: dict, call=None) -> dict:
    """One torch INT8 kernel: the oneDNN primitives it ran (on `call`, the engine's own call, where given), else the
    library's rule; either checked against the fingerprint of `run`."""
    lines = onednn_verbose(call or run)
    seen = fingerprint(run(), exact, saturated)
    primitives = onednn_int8_primitives(lines)
    if primitives:
        paths = [kernel_name_path(p.split(" ", 1)[1], header["path"]) for p in primitives]
        return {"library": "oneDNN", "primitives": primitives, **checked(paths[0], seen, "oneDNN ran " + ", ".join(primitives))}
    if library_rule:
        return {"library": "FBGEMM", **checked(library_rule, seen, f"no oneDNN primitive; FBGEMM's rule gives {library_rule}")}
    path = "no_dot" if seen == "exact" else None
    return {"library": "ATen", "path": path, "evidence": f"no oneDNN primitive, no INT8 library; fingerprint: {seen}"}


def quantized_layer(kind: str):
    """The x86 engine's quantized conv or linear with u8 255 inputs and s8 127 weights (symmetric, per channel for
    the conv as the project's x86 recipes quantize), its output scale putting the exact sum at QUANT_STEPS."""
    import torch

    with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated; they are what these kernels run on
        warnings.simplefilter("ignore")
        if kind == "conv2d":
            layer = torch.ao.nn.quantized.Conv2d(K, 8, 1)
            weight = torch.quantize_per_channel(
                torch.full((8, K, 1, 1), 127.0), torch.ones(8), torch.zeros(8, dtype=torch.long), 0, torch.qint8
            )
            x = torch.quantize_per_tensor(torch.full((1, K, 4, 4), 255.0), 1.0, 0, torch.quint8)
        else:
            layer = torch.ao.nn.quantized.Linear(K, 8)
            weight = torch.quantize_per_tensor(torch.full((8, K), 127.0), 1.0, 0, torch.qint8)
            x = torch.quantize_per_tensor(torch.full((4, K), 255.0), 1.0, 0, torch.quint8)
        layer.set_weight_bias(weight, None)
        layer.scale, layer.zero_point = EXACT / QUANT_STEPS, 0
    return lambda: float(layer(x).dequantize().flatten()[0])


def torch_int8(flags: set[str], env: Mapping[str, str], calls: Mapping[str, Callable] | None = None) -> dict:
    """torch's INT8 kernels: the x86 engine's conv and linear (eager_static_x86), the onednn engine's (oneDNN's INT8
    primitives, which PT2E x86 reaches through inductor), and torch._int_mm. `calls` holds engines' own calls by
    kernel name, to be seen in oneDNN's verbose lines as they run."""
    import torch

    calls = calls or {}
    header = onednn_header(flags, env)
    kernels, engine = {}, torch.backends.quantized.engine
    # The x86 engine runs a conv on oneDNN where the CPU has AVX-512 VNNI and the weights are symmetric
    # (should_use_onednn_quant), else on FBGEMM; its linear always on FBGEMM. The onednn engine: oneDNN only.
    rules = {"x86": (None if "avx512_vnni" in flags else fbgemm_path(flags, env), fbgemm_path(flags, env)), "onednn": (None, None)}
    for name, (conv_rule, linear_rule) in rules.items():
        if name in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = name
            for kind, rule in (("conv2d", conv_rule), ("linear", linear_rule)):
                key = f"quantized {kind} ({name} engine)"
                kernels[key] = torch_kernel(rule, quantized_layer(kind), EXACT, SATURATED, header, calls.get(key))
    torch.backends.quantized.engine = engine
    a, b = torch.full((8, K), 127, dtype=torch.int8), torch.full((K, 8), 127, dtype=torch.int8)
    # Signed by signed: a pair kernel shifts a to u8 (+128) and subtracts 128 * sum(b) after, so 255 * 127 pairs
    # saturate as above and the result is SATURATED - 128 * K * 127.
    kernels["_int_mm"] = torch_kernel(
        None, lambda: float(torch._int_mm(a, b)[0, 0]), K * 127 * 127, SATURATED - 128 * K * 127, header, calls.get("_int_mm")
    )
    main = "quantized conv2d (x86 engine)" if "quantized conv2d (x86 engine)" in kernels else "_int_mm"
    return summary(main, kernels, onednn_isa_line=header["isa_line"])


def summary(main: str, kernels: dict, **extra) -> dict:
    path = kernels[main]["path"]
    return {"path": path, "label": INT8_PATHS[path]["label"] if path else None, "main_kernel": main, **extra, "kernels": kernels}


# --- ONNX Runtime ---------------------------------------------------------------------------------------------


def xtile_granted() -> bool | None:
    """Whether Linux lets this process use AMX tile data (ARCH_GET_XCOMP_PERM); None where it cannot be asked."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return None
    mask = ctypes.c_ulong(0)
    if ctypes.CDLL(None).syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return None
    return bool(mask.value & XFEATURE_XTILEDATA)


def ort_matmul_integer(weight: np.ndarray, rows: int):
    """A session running MatMulInteger of a u8 (rows x K) input by the s8 `weight` initializer (MLAS's U8S8 GEMM)."""
    import onnx
    import onnxruntime as ort

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
        "fingerprint",
        [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [rows, weight.shape[0]])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [rows, weight.shape[1]])],
        [onnx.numpy_helper.from_array(weight, "w")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def onnxruntime_int8(flags: set[str]) -> dict:
    """MLAS's U8S8 GEMM (MatMulInteger, and QLinearConv's ConvSym kernels of the same family)."""
    before = xtile_granted()
    session = ort_matmul_integer(np.full((K, 8), 127, np.int8), 4)
    seen = fingerprint(float(session.run(None, {"a": np.full((4, K), 255, np.uint8)})[0][0, 0]))
    kernel = mlas_kernel(flags, seen, before, xtile_granted())
    return summary("MatMulInteger (MLAS U8S8 GEMM)", {"MatMulInteger (MLAS U8S8 GEMM)": kernel})


def mlas_kernel(flags: set[str], seen: str, before: bool | None, after: bool | None) -> dict:
    """MLAS's path: its rule for the flags, where Linux granted AMX tile data (AMX needs it), checked by the fingerprint."""
    rule = mlas_path(flags)
    how = f"MLAS's dispatch rule (platform.cpp) gives {rule}"
    if rule == "amx":
        if after is False:  # MlasInitAMX failed: MLAS keeps its AVX-512 VNNI kernel
            rule, how = "avx512_vnni", how + ", but Linux did not grant AMX tile data: its AVX-512 VNNI kernel"
        elif after and before is False:
            how += "; Linux granted AMX tile data while ONNX Runtime started (MLAS asks only when it selects AMX)"
        elif after:
            how += "; AMX tile data was granted before ONNX Runtime started: not attributable"
    return {"library": "MLAS", "xtile_granted_before": before, "xtile_granted_after": after, **checked(rule, seen, how)}


# --- OpenVINO -------------------------------------------------------------------------------------------------


def openvino_model():
    """An INT8 conv and fully connected layer as OpenVINO quantizes them (FakeQuantize on activations and weights)."""
    import openvino as ov
    from openvino import opset13 as ops

    def fq(node, low: float, high: float, levels: int):
        lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    rng = np.random.default_rng(0)
    x = ops.parameter([1, 16, 8, 8], np.float32, name="x")
    conv_w = fq(ops.constant(rng.integers(-127, 128, (32, 16, 3, 3)).astype(np.float32) / 100), -1.27, 1.27, 255)
    y = ops.relu(ops.convolution(fq(x, 0.0, 2.55, 256), conv_w, [1, 1], [1, 1], [1, 1], [1, 1]))
    y = ops.reshape(y, ops.constant(np.array([1, 32 * 8 * 8], np.int64)), False)
    fc_w = fq(ops.constant(rng.integers(-127, 128, (32 * 8 * 8, 10)).astype(np.float32) / 100), -1.27, 1.27, 255)
    return ov.Model([ops.matmul(fq(y, 0.0, 25.5, 256), fc_w, False, False)], [x], "int8_evidence")


def openvino_int8(flags: set[str], env: Mapping[str, str]) -> dict:
    import openvino as ov

    compiled = ov.Core().compile_model(openvino_model(), "CPU", {"INFERENCE_NUM_THREADS": 1})
    widest = onednn_path(onednn_isa(flags, env))  # OpenVINO's oneDNN honours ONEDNN_MAX_CPU_ISA too
    kernels = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer, primitive, precision = (info[k].astype(str) for k in ("layerType", "primitiveType", "runtimePrecision"))
        if layer in ("Convolution", "FullyConnected", "MatMul") and precision in ("u8", "i8"):
            path = kernel_name_path(primitive, widest)
            kernels[layer] = {"primitive": primitive, "path": path, "evidence": f"execution graph: {layer} runs {primitive}"}
    if not kernels:
        return {"path": None, "label": None, "evidence": "no INT8 node in OpenVINO's execution graph", "kernels": {}}
    return summary("Convolution" if "Convolution" in kernels else next(iter(kernels)), kernels)


# --- all ------------------------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = read_cpuinfo(text)
    return set((fields.get("flags") or fields.get("Features") or "").split())


def collect(flags: set[str] | None = None, env: Mapping[str, str] | None = None) -> dict:
    """Each runtime's INT8 path and its evidence. ONNX Runtime goes first: the tile-data permission it may ask
    for must not have been asked for by another library already."""
    flags = cpu_flags() if flags is None else flags
    env = os.environ if env is None else env
    collectors = {"onnxruntime": lambda: onnxruntime_int8(flags), "openvino": lambda: openvino_int8(flags, env)}
    collectors["torch"] = lambda: torch_int8(flags, env)
    absent = {"path": None, "label": None, "evidence": "not installed", "kernels": {}}
    return {name: collect() if importlib.util.find_spec(name) else absent for name, collect in collectors.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output: each runtime's INT8 path and evidence, JSON")
    args = parser.parse_args(argv)
    result = collect()
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
