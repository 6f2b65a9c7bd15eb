"""PyTorch eager methods: the FP32 baseline and the reference dynamic INT8 (Linear layers only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from edgequant.io import save_torch
from edgequant.model import Net, load_state
from edgequant.registry import Exported, register


def _save_state(model: nn.Module, path: Path) -> Path:
    save_torch(model.state_dict(), path)
    return path


def _eager_runner(model: nn.Module, threads: int):
    torch.set_num_threads(threads)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x)

    return run


@register("fp32", runtime="pytorch", precision="fp32", baseline="fp32")
class FP32:
    """FP32 eager PyTorch: the unquantized baseline every speed-up is measured against."""

    @staticmethod
    def export(model: Net, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_save_state(model, out_dir / "model.pt"))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        return _eager_runner(load_state(str(out_dir / "model.pt"), Net(), "re-run `dvc repro quantize@fp32`"), threads)


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
    def export(model: Net, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_save_state(_quantize_dynamic(model), out_dir / "model.pt"))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        model = load_state(str(out_dir / "model.pt"), _quantize_dynamic(Net().eval()), "re-run `dvc repro quantize@dynamic_int8`")
        return _eager_runner(model, threads)
