"""PyTorch eager methods: the FP32 baseline, BF16, the reference dynamic INT8, and torch.ao static INT8 (x86)."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edgequant.data.splits import batches
from edgequant.files import save_torch
from edgequant.model.layers import capture, layer_outputs, sqnr_db
from edgequant.model.zoo import Classifier, Net, build_model, load_state, model_of
from edgequant.quantize.catalog import Exported, register


def _save_state(model: nn.Module, path: Path) -> Path:
    save_torch(model.state_dict(), path)
    return path


def _eager_runner(model: nn.Module, threads: int, dtype: torch.dtype | None = None):
    """The runner of an eager model; with `dtype`, the input is cast to it and the logits back to float32."""
    torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x) if dtype is None else model(x.to(dtype)).float()

    return run


@register("fp32", runtime="pytorch", precision="fp32", baseline="fp32")
class FP32:
    """FP32 eager PyTorch: the unquantized baseline every speed-up is measured against."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_save_state(model, out_dir / "model.pt"))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        return _eager_runner(
            load_state(str(out_dir / "model.pt"), build_model(model_of(out_dir)), "re-run `dvc repro quantize@fp32`"), threads
        )


def _quantize_dynamic(model: nn.Module) -> nn.Module:
    # The reference method uses torch.ao's eager API, deprecated in favour of torchao; we keep it
    # on purpose to reproduce (and explain) the reference result, so its warning is noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@register("dynamic_int8", runtime="pytorch", precision="int8", baseline="fp32")
class DynamicInt8:
    """Dynamic INT8 on Linear layers (torch.ao, deprecated API): the reference method. Convs stay FP32."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_save_state(_quantize_dynamic(model), out_dir / "model.pt"))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        model = load_state(
            str(out_dir / "model.pt"), _quantize_dynamic(build_model(model_of(out_dir)).eval()), "re-run `dvc repro quantize@dynamic_int8`"
        )
        return _eager_runner(model, threads)


@register("bf16", runtime="pytorch", precision="bf16", baseline="fp32")
class BF16:
    """BF16 eager PyTorch: weights and activations in bfloat16 (oneDNN's BF16 kernels where the CPU has them), the
    input cast on entry and the logits back to float32."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_save_state(copy.deepcopy(model).to(torch.bfloat16), out_dir / "model.pt"))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        model = build_model(model_of(out_dir)).to(torch.bfloat16)
        return _eager_runner(load_state(str(out_dir / "model.pt"), model, "re-run `dvc repro quantize@bf16`"), threads, torch.bfloat16)


class _StaticNet(nn.Module):
    """Net restated for torch.ao eager static quantization: quant/dequant stubs around the INT8 part,
    ReLUs as modules so each fuses into the layer before it. Same parameter names as Net."""

    FUSED = (("conv1", "relu1"), ("conv2", "relu2"), ("fc1", "relu3"))

    def __init__(self, net: Net):
        super().__init__()
        self.register_buffer("mean", net.mean.clone())
        self.register_buffer("std", net.std.clone())
        self.quant, self.dequant = torch.ao.quantization.QuantStub(), torch.ao.quantization.DeQuantStub()
        self.conv1, self.conv2, self.fc1, self.fc2 = net.conv1, net.conv2, net.fc1, net.fc2
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant((x - self.mean) / self.std)  # normalize in FP32, as Net does, then enter INT8
        x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        x = torch.flatten(F.max_pool2d(x, 2), 1)  # dropout is the identity in eval, so it is left out
        return self.dequant(self.fc2(self.relu3(self.fc1(x))))


def _use_x86_engine() -> None:
    if "x86" not in torch.backends.quantized.supported_engines:
        raise ValueError(
            f"eager_static_x86 needs PyTorch's x86 quantized engine, which this build lacks "
            f"(it has {', '.join(torch.backends.quantized.supported_engines)}); on ARM ship executorch_xnnpack_int8"
        )
    torch.backends.quantized.engine = "x86"


def _static_x86(net: Net, calib: torch.Tensor | None) -> nn.Module:
    """Fuse, observe `calib`, convert. With `calib=None` it builds the empty INT8 shell a saved state dict loads into."""
    _use_x86_engine()
    model = torch.ao.quantization.fuse_modules(_StaticNet(net).eval(), [list(pair) for pair in _StaticNet.FUSED])
    model.qconfig = torch.ao.quantization.get_default_qconfig("x86")
    with warnings.catch_warnings():
        # torch.ao's eager API is deprecated (kept as a comparison row: it is what much deployed code
        # still uses), and an uncalibrated shell warns that its observers saw no data; the saved
        # state replaces them.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning, FutureWarning))
        torch.ao.quantization.prepare(model, inplace=True)
        if calib is not None:
            with torch.no_grad():
                for chunk in batches(calib):
                    model(chunk)
        return torch.ao.quantization.convert(model, inplace=True)


def _static_layer_sqnr(net: Net, model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) of each INT8 layer's output against FP32. The INT8 layers have their ReLU fused in,
    so the FP32 reference is taken after the same ReLU (fc2 has none). Unlike the PT2E methods' values
    (read from the dequantized reference graph), these include each layer's own output rounding, at
    the 7-bit activation range the default x86 config keeps so non-VNNI x86 CPUs cannot overflow."""
    reference = layer_outputs(net, x)
    captured = capture(model, x, reference, torch.Tensor.dequantize)
    fused = {layer for layer, _ in _StaticNet.FUSED}
    return {name: sqnr_db(ref.relu() if name in fused else ref, captured[name]) for name, ref in reference.items()}


@register("eager_static_x86", runtime="pytorch", precision="int8", baseline="fp32", models=("cnn",))
class EagerStaticX86:
    """Static INT8 in eager PyTorch (torch.ao, deprecated API; x86 engine, fused conv+ReLU, calibrated)."""

    @staticmethod
    def export(model: Net, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        quantized = _static_x86(model, calib)
        return Exported(_save_state(quantized, out_dir / "model.pt"), _static_layer_sqnr(model, quantized, sample))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        shell = _static_x86(Net().eval(), None)
        with warnings.catch_warnings():
            # torch.load rebuilds quantized tensors through its own deprecated TypedStorage: not ours to fix.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            model = load_state(str(out_dir / "model.pt"), shell, "re-run `dvc repro quantize@eager_static_x86`")
        return _eager_runner(model, threads)
