"""OpenVINO: FP32 and NNCF static INT8 IR, converted straight from the PyTorch module, on OpenVINO's CPU plugin; the
FP32 IR also in BF16, the plugin's INFERENCE_PRECISION_HINT.

These methods use the stand-alone OpenVINO runtime, not ExecuTorch's OpenVINO backend: executorch 1.5.1's
`openvino` extra pins openvino<2026, and nothing here goes through ExecuTorch.
"""

from __future__ import annotations

import functools
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from edgequant.artifacts.read import read_openvino_ir
from edgequant.files import write_bytes
from edgequant.model.layers import layer_outputs, sqnr_db, taps
from edgequant.model.zoo import Classifier
from edgequant.quantize.catalog import Exported, import_runtime, register

XML, BIN = "model.xml", "model.bin"
# The CPU plugin's default inference precision is bf16 on CPUs with AVX512_BF16 or AMX. On this VM's AMD EPYC
# that left the FP32 IR at 59 dB against PyTorch and made the plugin refuse the NNCF INT8 IR ("No suitable
# implementations"). f32 keeps the FP32 method the baseline it is named for; INT8 layers still run in INT8. BF16 is
# its own method, openvino_bf16: the same FP32 IR compiled with the hint "bf16".
PLUGIN_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": 1}
HINTS = {"openvino_bf16": "bf16"}  # a method's INFERENCE_PRECISION_HINT where it is not PLUGIN_CONFIG's


def plugin_config(method: str) -> dict[str, object]:
    """The CPU plugin settings `method` runs with: what the vendor stage gives benchmark_app and its cold starts."""
    return {**PLUGIN_CONFIG, "INFERENCE_PRECISION_HINT": HINTS.get(method, PLUGIN_CONFIG["INFERENCE_PRECISION_HINT"])}


COMPUTE_TYPES = ("Convolution", "FullyConnected")  # the CPU plugin's layer types for conv and linear
AUTO_NAME = re.compile(r"[A-Za-z]+_\d+")  # names numbered from a process-wide counter: they differ run to run
MODULE = re.compile(r"__module\.([\w.]+)/")  # the converter names each op after the nn.Module it came from


def _ov(method: str):
    return import_runtime("openvino", "openvino", method)


def _convert(model: Classifier, method: str):
    """An ov.Model of `model` with a dynamic batch: one IR serves every batch size."""
    ov = _ov(method)
    return ov.convert_model(model.eval(), example_input=model.example_input(2), input=[ov.PartialShape([-1, *model.INPUT_SHAPE])])


def _save(model, out_dir: Path, method: str) -> Path:
    """Save the IR with FP32 weights (save_model would halve them to FP16) and reproducible bytes: the
    converter numbers unnamed constants from a counter that grows with every conversion in the process."""
    ov = _ov(method)
    model.set_friendly_name("edgequant")
    for i, op in enumerate(model.get_ordered_ops()):
        if AUTO_NAME.fullmatch(op.get_friendly_name()):
            op.set_friendly_name(f"{op.get_type_name()}_{i}")
    with tempfile.TemporaryDirectory() as tmp:
        ov.save_model(model, str(Path(tmp) / XML), compress_to_fp16=False)
        for name in (BIN, XML):
            write_bytes(out_dir / name, (Path(tmp) / name).read_bytes())
    return out_dir / BIN  # the weights: what a device stores; the topology .xml is a few tens of KB beside it


def _compile(out_dir: Path, threads: int, perf_count: bool = False, model=None, hint: str | None = None):
    """The IR compiled for the CPU plugin with `threads` threads, read from memory after the checks; `hint`: another
    INFERENCE_PRECISION_HINT than PLUGIN_CONFIG's."""
    remedy = f"re-run `dvc repro quantize@{out_dir.name}`"
    ir = read_openvino_ir(out_dir / XML, remedy) if model is None else None  # checked before OpenVINO parses it
    core = _ov(out_dir.name).Core()
    try:
        if model is None:
            model = core.read_model(*ir)
        config = {**PLUGIN_CONFIG, "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": perf_count}
        if hint is not None:
            config["INFERENCE_PRECISION_HINT"] = hint
        return core.compile_model(model, "CPU", config)
    except RuntimeError as exc:
        raise ValueError(f"{out_dir / XML}: {refusal(exc)}; {remedy}") from exc


def refusal(exc: RuntimeError) -> str:
    """The plugin's reason in one line: the last line of its message (the lines above are its source locations)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"OpenVINO refuses it ({lines[-1] if lines else exc})"


def layer_precisions(out_dir: Path, model: Classifier, threads: int = 1, hint: str | None = None) -> dict[str, str]:
    """{layer: precision} of each conv and fully connected layer of `model` as the CPU plugin compiled it, read
    from the runtime graph's `runtimePrecision` ("i8"/"u8" for INT8 kernels, "f32", "bf16"). A conv whose
    BatchNorm was folded into it is named after the BatchNorm there; it is reported under the conv's name."""
    conv_of = {tap: layer for layer, tap in taps(model).items()}
    found = {}
    for op in _compile(out_dir, threads, hint=hint).get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in COMPUTE_TYPES:
            module = MODULE.search(info["originalLayersNames"].astype(str))
            name = module.group(1) if module else op.get_friendly_name()
            found[conv_of.get(name, name)] = info["runtimePrecision"].astype(str)
    return found


def settings(out_dir: Path, model: Classifier, hint: str | None = None) -> dict[str, object]:
    """What meta.json records: the precision the CPU plugin compiled each layer to, on the export machine
    (another CPU may choose otherwise: f32 where it lacks BF16), and the precision that was asked for."""
    try:
        compiled = layer_precisions(out_dir, model, hint=hint)
    except ValueError as exc:
        if hint is None or not isinstance(exc.__cause__, RuntimeError):  # only the plugin's refusal to compile is recorded
            raise
        # BF16 where oneDNN is capped below its kernels (ONEDNN_MAX_CPU_ISA): the IR is the FP32 one, exported as it
        # is; the benchmark refuses to time it here (edgequant/quantize/precisions.py)
        compiled = f"not compiled on the export machine: {refusal(exc.__cause__)}"
    return {"runtime_precision_on_export_machine": compiled, "inference_precision_hint": hint or PLUGIN_CONFIG["INFERENCE_PRECISION_HINT"]}


def _load(out_dir: Path, batch_size: int, threads: int, hint: str | None = None):
    request = _compile(out_dir, threads, hint=hint).create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()}, share_inputs=True)
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    run.request = request  # what the vendor stage times bare: infer() on the input the runner last set
    return run


def _profile(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, runs: int, hint: str | None = None) -> dict[str, float]:
    return profile_openvino(_compile(out_dir, threads, perf_count=True, hint=hint).create_infer_request(), x, runs)


def layer_sqnr(reference: Classifier, out_dir: Path, x: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) of each conv/linear output (bias added, before ReLU) as OpenVINO computes it, against
    the FP32 model's layers: the IR gets those outputs as extra results, compiled as the runner does."""
    ov = _ov(out_dir.name)
    model = ov.Core().read_model(*read_openvino_ir(out_dir / XML, "re-export"))
    adds = {}
    for op in model.get_ordered_ops():
        module, name = MODULE.match(op.get_friendly_name()), op.get_friendly_name()
        # A layer's bias addition, or the one a BatchNorm after a bias-free conv became
        if module and op.get_type_name() == "Add" and re.search(r"aten::(_convolution|linear)/Add$|aten::batch_norm/\w+$", name):
            adds[module.group(1)] = op
    expected, tapped = layer_outputs(reference, x), taps(reference)
    adds = {layer: adds[tapped[layer]] for layer in expected if tapped[layer] in adds}
    if sorted(adds) != sorted(expected):
        raise RuntimeError(f"found bias additions of {sorted(adds)} in {out_dir / XML}, expected {sorted(expected)}")
    for name in expected:  # fc2's bias addition is the model's output already: named, it is found either way
        adds[name].output(0).get_tensor().add_names({f"edgequant.{name}"})
    model.add_outputs([f"edgequant.{name}" for name in expected])
    outputs = _compile(out_dir, 1, model=model)(x.numpy())
    return {name: sqnr_db(ref, torch.from_numpy(np.asarray(outputs[f"edgequant.{name}"]))) for name, ref in expected.items()}


@register("openvino_fp32", runtime="openvino", precision="fp32", baseline="openvino_fp32", requires=("openvino",))
class OpenVinoFP32:
    """OpenVINO IR (ov.convert_model from PyTorch), FP32, on the CPU plugin."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        shipped = _save(_convert(model, "openvino_fp32"), out_dir, "openvino_fp32")
        return Exported(shipped, settings=settings(out_dir, model))

    load = staticmethod(_load)
    profile = staticmethod(_profile)


@register("openvino_bf16", runtime="openvino", precision="bf16", baseline="openvino_fp32", requires=("openvino",))
class OpenVinoBF16:
    """OpenVINO's FP32 IR compiled in BF16 (INFERENCE_PRECISION_HINT "bf16"), on the CPU plugin's BF16 kernels."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        shipped = _save(_convert(model, "openvino_bf16"), out_dir, "openvino_bf16")
        return Exported(shipped, settings=settings(out_dir, model, HINTS["openvino_bf16"]))

    load = staticmethod(functools.partial(_load, hint=HINTS["openvino_bf16"]))
    profile = staticmethod(functools.partial(_profile, hint=HINTS["openvino_bf16"]))


@register("openvino_int8", runtime="openvino", precision="int8", baseline="openvino_fp32", requires=("openvino", "nncf"))
class OpenVinoInt8:
    """OpenVINO IR, static INT8 by NNCF (per-channel weights, calibrated), on the CPU plugin's INT8 kernels."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        nncf = import_runtime("nncf", "nncf", "openvino_int8")
        images = [image.unsqueeze(0).numpy() for image in calib]  # one at a time, as NNCF's bias correction expects
        quantized = nncf.quantize(_convert(model, "openvino_int8"), nncf.Dataset(images), subset_size=len(images))
        shipped = _save(quantized, out_dir, "openvino_int8")
        return Exported(shipped, layer_sqnr(model, out_dir, sample), settings(out_dir, model))

    load = staticmethod(_load)
    profile = staticmethod(_profile)


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
