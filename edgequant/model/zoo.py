"""The models a workload can train, keyed by the names used in params.yaml (`train.model`)."""

from __future__ import annotations

import difflib
import io
import json
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10


_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str):
    """Class decorator: an nn.Module taking (dropout_conv, dropout_fc, mean, std), with INPUT_SHAPE, becomes model `name`."""

    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        cls.NAME = name
        _MODELS[name] = cls
        return cls

    return add


def known_models() -> list[str]:
    return list(_MODELS)


def get_model(name: str) -> type[nn.Module]:
    """The model class registered as `name`, or ValueError listing the known ones."""
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name), known_models(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; known models: {', '.join(known_models())}")
    return _MODELS[name]


class Classifier(nn.Module):
    """What every model shares: normalization inside the model as buffers, so every exported artifact
    (ONNX, .pte, compiled graph) takes plain [0, 1] pixels and the device app cannot forget or mistype
    it, and example inputs of the model's own shape."""

    NAME = ""
    INPUT_SHAPE = (1, 28, 28)  # channels, height, width of one image, pixels scaled to [0, 1]

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    @classmethod
    def example_input(cls, batch: int = 1) -> torch.Tensor:
        """What exporters trace and loaders warm up with: a batch of blank images of the model's input shape."""
        return torch.zeros(batch, *cls.INPUT_SHAPE)


@register_model("cnn")
class Net(Classifier):
    """The classic MNIST CNN of pytorch/examples: conv 1→32 3×3, conv 32→64 3×3, max-pool 2, fc 9216→128, fc 128→10."""

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5, mean: float = 0.0, std: float = 1.0):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout_conv)
        self.dropout2 = nn.Dropout(dropout_fc)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc2(x)


def _separable(channels: int, out: int, stride: int) -> nn.Sequential:
    """MobileNet's block: depthwise 3×3 (one filter per channel) then pointwise 1×1, each with BatchNorm and ReLU6."""
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU6(),
        nn.Conv2d(channels, out, 1, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(),
    )


@register_model("dwsep_cnn")
class DwSepNet(Classifier):
    """A MobileNet-style stress model for post-training INT8: depthwise-separable blocks with BatchNorm.

    Folding BatchNorm into a depthwise filter scales each channel by its own factor, so one per-tensor
    weight scale must cover channels whose ranges differ by orders of magnitude, and activations after
    ReLU6 pile up at the clip: the pattern that made per-tensor PTQ of MobileNet fail.
    """

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5, mean: float = 0.0, std: float = 1.0):
        super().__init__(mean, std)
        self.conv1 = nn.Conv2d(1, 32, 3, 1)  # unpadded, as in Net, so the input normalization folds into it exactly
        self.blocks = nn.Sequential(
            _separable(32, 64, 1), _separable(64, 128, 2), _separable(128, 128, 1), _separable(128, 256, 2), nn.Dropout(dropout_conv)
        )
        self.dropout = nn.Dropout(dropout_fc)
        self.fc = nn.Linear(256, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.conv1((x - self.mean) / self.std))
        x = self.blocks(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.dropout(x))


def build_model(name: str, **hyper: float) -> Classifier:
    """An untrained instance of model `name` (hyper: dropout_conv, dropout_fc, mean, std)."""
    return get_model(name)(**hyper)


def common_model(artifacts: Path, methods: list[str]) -> str:
    """The one model every method's directory under `artifacts` was exported from, or a ValueError naming those that differ."""
    models = {m: model_of(Path(artifacts) / m) for m in methods}
    first = models[methods[0]]
    if stale := [m for m in methods if models[m] != first]:
        raise ValueError(f"{', '.join(stale)} not exported from model {first!r} as {methods[0]} was: re-run `dvc repro quantize`")
    return first


def model_of(out_dir: Path) -> str:
    """The model an exported method directory was made from, as the quantize stage recorded it in meta.json."""
    try:
        return str(json.loads((Path(out_dir) / "meta.json").read_text())["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out_dir}/meta.json does not name its model ({exc}); re-run `dvc repro quantize@{Path(out_dir).name}`") from exc


def load_state(path: str, model: nn.Module, remedy: str) -> nn.Module:
    """Load a state dict saved by edgequant into `model`; `weights_only=True` refuses pickled code.

    A damaged or foreign file becomes a ValueError naming the file and `remedy`: torch's own message
    for it suggests `weights_only=False`, which is the one thing not to do with a file of unknown origin.
    """
    from edgequant.artifacts.read import check_torch_save

    data = check_torch_save(Path(path), remedy)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable edgequant model ({type(exc).__name__}: {str(exc).splitlines()[0]}); {remedy}") from exc
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}; {remedy}")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        name = getattr(model, "NAME", type(model).__name__)
        raise ValueError(f"{path}: weights do not fit model {name!r} (another train.model?): {str(exc).splitlines()[0]}; {remedy}") from exc
    return model.eval()


def load_fp32(path: str, name: str) -> Classifier:
    """The FP32 model `name` the train stage saved."""
    return load_state(path, build_model(name), "re-run `dvc repro train`")
