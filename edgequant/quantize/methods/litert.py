"""LiteRT (TensorFlow Lite): FP32 and static INT8 .tflite files converted by litert-torch, run by the LiteRT interpreter."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgequant.artifacts.read import read_tflite
from edgequant.data.splits import batches
from edgequant.files import write_bytes
from edgequant.model.zoo import Classifier
from edgequant.quantize.catalog import Exported, import_runtime, register
from edgequant.quantize.methods.pt2e import quantized_layer_sqnr

# The interpreter hands every op it supports to LiteRT's default CPU delegate, XNNPACK, which runs them
# with `threads` threads; tests/test_runtimes.py checks that a DELEGATE node is there. No other delegate is used.
DELEGATE = "XNNPACK"
REQUIRES = ("litert_torch", "ai_edge_litert")
# How close the folded copy's logits must come to the model's on the same random images, relative to the largest logit:
# a fold is exact in real arithmetic; float32 rounding moved the committed cnn's and dwsep_cnn's by 8e-8 and 1.4e-7
# of that scale, while a normalized input that also feeds another layer moves them by the normalization itself.
FOLD_TOLERANCE = 1e-4


def file_name(batch_size: int) -> str:
    return f"model_b{batch_size}.tflite"


def probe_input(model: Classifier) -> torch.Tensor:
    """Two random images of the model's input shape, the same on every call (seeded, apart from the global generator)."""
    return torch.rand(2, *model.INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


def first_conv(model: Classifier) -> tuple[str, torch.nn.Conv2d] | None:
    """The Conv2d that takes the model's normalized input itself, found by running the model once: the first conv
    called whose input is exactly (x - mean) / std of the model's input x. None where no conv takes it as it is."""
    modules = dict(model.named_modules())
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, i, n=n: seen.append((n, i[0]))) for n, m in modules.items() if isinstance(m, torch.nn.Conv2d)
    ]
    x = probe_input(model)
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        return None
    name, taken = seen[0]
    normalized = (x - model.mean) / model.std
    return (name, modules[name]) if taken.shape == normalized.shape and torch.equal(taken, normalized) else None


def pads(conv: torch.nn.Conv2d) -> bool:
    return conv.padding != "valid" and (conv.padding == "same" or any(conv.padding))


class ExplicitInput(torch.nn.Module):
    """`model` with its input normalization as a 1×1 depthwise convolution (weight 1/std, bias -mean/std per channel)
    before the network: the quantizer makes it an INT8 layer like any other, so the INT8 file still takes int8 pixels."""

    def __init__(self, model: Classifier):
        super().__init__()
        channels = model.INPUT_SHAPE[0]
        mean, std = model.mean.reshape(-1).expand(channels), model.std.reshape(-1).expand(channels)
        self.input_norm = torch.nn.Conv2d(channels, channels, 1, groups=channels)
        with torch.no_grad():
            self.input_norm.weight.copy_((1 / std).view(channels, 1, 1, 1))
            self.input_norm.bias.copy_(-mean / std)
        self.model = copy.deepcopy(model).eval()
        _normalize_nothing(self.model)
        self.INPUT_SHAPE = model.INPUT_SHAPE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input_norm(x))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return torch.zeros(batch, *self.INPUT_SHAPE)


def _normalize_nothing(model: Classifier) -> None:
    """Drop the model's own normalization: an imported model skips it; a built-in one gets mean 0 and std 1, which the converter drops."""
    if hasattr(model, "normalize_input"):
        model.normalize_input = False
    with torch.no_grad():
        model.mean.fill_(0.0)
        model.std.fill_(1.0)


def pixel_model(model: Classifier) -> tuple[torch.nn.Module, str]:
    """A copy of `model` that takes pixels with no float op before its first layer, and how its normalization went.

    Why: the PT2E quantizer leaves a subtract and divide in float, so the INT8 file took float pixels and ran two float
    ops before its first QUANTIZE; an int8 input is what a microcontroller or an Ethos-U NPU needs. Where the first
    conv takes the normalized input directly, pads nothing and is not grouped, the normalization folds into its
    weights and bias exactly, unless that input feeds another layer too (a skip connection: `fold` checks the copy's
    output). Otherwise (a padded conv: the zeros it pads are zeros of the normalized image, which a fold would turn
    into zeros of the pixels and so change the border) it becomes an explicit 1×1 depthwise convolution at the input,
    quantized like any layer (`ExplicitInput`).
    """
    found = first_conv(model)
    if found is None:
        why = "no conv takes the normalized input as it is"
    elif pads(found[1]):
        why = f"{found[0]} pads its input, so a fold would change the border"
    elif found[1].groups != 1:
        why = f"{found[0]} is grouped"
    else:
        why = ""
    if not why:
        folded, why = fold(model, found[0])
        if not why:
            return folded, f"folded into {found[0]}"
    # in eval mode, as the folded copy: a converter exports the mode it is given
    return ExplicitInput(model).eval(), f"explicit 1x1 depthwise conv at the input (input_norm): {why}"


def fold(model: Classifier, name: str) -> tuple[torch.nn.Module, str]:
    """A copy of `model` with its normalization folded into conv `name`, and "" where it computes what the model does
    (else why not, and the copy is not to be used)."""
    folded = copy.deepcopy(model).eval()
    conv = folded.get_submodule(name)
    mean, std = folded.mean, folded.std
    if mean.dim():  # one value per channel, against the conv's input channels
        mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    with torch.no_grad():
        if conv.bias is None:
            conv.bias = torch.nn.Parameter(torch.zeros(conv.out_channels))
        conv.bias -= (conv.weight * mean / std).sum((1, 2, 3))
        conv.weight /= std
    _normalize_nothing(folded)
    x = probe_input(model)
    with torch.no_grad():
        want, got = model.eval()(x), folded(x)
    scale = max(want.abs().max().item(), 1.0)
    if not torch.allclose(got, want, rtol=0.0, atol=FOLD_TOLERANCE * scale):
        err = (got - want).abs().max().item() / scale
        return folded, f"folding into {name} changes the logits by {err:.2g} of their scale: the normalized input feeds more than {name}"
    return folded, ""


def _write(
    module: torch.nn.Module,
    example_input: Callable[[int], torch.Tensor],
    out_dir: Path,
    batch_sizes: tuple[int, ...],
    method: str,
    quant_config=None,
) -> Path:
    """Convert `module` once per batch size (LiteRT plans its memory for static shapes) and write the .tflite files."""
    litert_torch = import_runtime("litert_torch", "litert-torch", method)
    litert_torch.config.show_progress = False  # a progress line per conversion step, on stdout
    for bs in batch_sizes:
        converted = litert_torch.convert(module, (example_input(bs),), quant_config=quant_config)
        with tempfile.TemporaryDirectory() as tmp:
            converted.export(str(Path(tmp) / "model.tflite"))
            write_bytes(out_dir / file_name(bs), (Path(tmp) / "model.tflite").read_bytes())
    return out_dir / file_name(batch_sizes[0])


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """`x` in the tensor's type: an integer input takes round(x / scale) + zero_point, clipped to the type's range,
    with the file's own scale and zero point; a float input takes `x` as it is."""
    if not np.issubdtype(detail["dtype"], np.integer):
        return x
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    """Float values of an output tensor: (q - zero_point) * scale for an integer output, a copy for a float one."""
    if not np.issubdtype(y.dtype, np.integer):
        return y.copy()
    scale, zero_point = detail["quantization"]
    return (y.astype(np.float32) - zero_point) * np.float32(scale)


def interpreter(data: bytes, threads: int, where: Path):
    """A LiteRT interpreter with its tensors allocated, or a one-line ValueError naming `where`."""
    module = import_runtime("ai_edge_litert.interpreter", "ai-edge-litert", where.parent.name)
    try:
        runner = module.Interpreter(model_content=data, num_threads=threads)
        runner.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ValueError(
            f"{where}: LiteRT refuses it ({str(exc).strip().splitlines()[0]}); re-run `dvc repro quantize@{where.parent.name}`"
        ) from exc
    return runner


def _read(out_dir: Path, batch_size: int) -> tuple[bytes, Path]:
    path = out_dir / file_name(batch_size)
    return read_tflite(path, f"re-run `dvc repro quantize@{out_dir.name}`", batch_size), path


def _load(out_dir: Path, batch_size: int, threads: int):
    data, path = _read(out_dir, batch_size)
    runner = interpreter(data, threads, path)
    source, sink = runner.get_input_details()[0], runner.get_output_details()[0]

    def run(x: torch.Tensor) -> torch.Tensor:
        runner.set_tensor(source["index"], quantize_input(x.numpy(), source))
        runner.invoke()
        return torch.from_numpy(dequantize_output(runner.get_tensor(sink["index"]), sink))

    run.interpreter = runner  # what the tests inspect: the delegate node, the input's scale and zero point
    return run


def _profile(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, runs: int) -> dict[str, float]:
    data, path = _read(out_dir, batch_size)
    return profile_litert(data, lambda cut: interpreter(cut, threads, path), lambda detail: quantize_input(x.numpy(), detail), runs)


@register("litert_fp32", runtime="litert", precision="fp32", baseline="litert_fp32", static_shapes=True, requires=REQUIRES)
class LiteRtFP32:
    """LiteRT .tflite (litert-torch), FP32, on the LiteRT interpreter with the XNNPACK delegate."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        pixels, normalization = pixel_model(model)
        shipped = _write(pixels, model.example_input, out_dir, batch_sizes, "litert_fp32")
        return Exported(shipped, settings={"delegate": DELEGATE, "input_normalization": normalization})

    load = staticmethod(_load)
    profile = staticmethod(_profile)


@register("litert_int8", runtime="litert", precision="int8", baseline="litert_fp32", static_shapes=True, requires=REQUIRES)
class LiteRtInt8:
    """LiteRT .tflite, static INT8 (litert-torch PT2E, per-channel weights, calibrated) with int8 input and output."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        import_runtime("litert_torch", "litert-torch", "litert_int8")
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        batch = torch.export.Dim("batch", min=1, max=4096)
        pixels, normalization = pixel_model(model)
        graph = torch.export.export(pixels, (model.example_input(2),), dynamic_shapes={"x": {0: batch}}).module()
        prepared = prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for chunk in batches(calib):
                prepared(chunk)
        # Quantize/dequantize pairs stay in the graph: the LiteRT converter turns them into INT8 kernels.
        converted = move_exported_model_to_eval(convert_pt2e(prepared, fold_quantize=False))  # else the converter warns
        shipped = _write(converted, model.example_input, out_dir, batch_sizes, "litert_int8", QuantConfig(pt2e_quantizer=quantizer))
        return Exported(shipped, layer_sqnr(model, pixels, converted, sample), {"delegate": DELEGATE, "input_normalization": normalization})

    load = staticmethod(_load)
    profile = staticmethod(_profile)


def layer_sqnr(model: Classifier, pixels: torch.nn.Module, converted: torch.fx.GraphModule, sample: torch.Tensor) -> dict[str, float]:
    """Per-layer SQNR of the INT8 graph against the FP32 model's layers; an explicit input layer is measured against
    the pixel model's and left out of the result, which lists the model's own layers."""
    if not isinstance(pixels, ExplicitInput):
        return quantized_layer_sqnr(model, converted, sample)
    measured = quantized_layer_sqnr(pixels, converted, sample)
    return {name.removeprefix("model."): value for name, value in measured.items() if name != "input_norm"}


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
