"""The models a workload can train, keyed by the names used in params.yaml (`train.model`)."""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10
MAX_DETAIL = 400  # characters of torch's account of a state dict that does not fit: its heading and first finding


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

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """What exporters trace and loaders warm up with: a batch of blank images of the model's input shape
        (the class's, or the data's where the model was built for a spec)."""
        return torch.zeros(batch, *self.INPUT_SHAPE)


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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a model whose state dict was saved: the registry name or import path (`file.py:Class`), the
    constructor's keyword arguments (canonical JSON, so a spec is hashable), the (C, H, W) of one input image and
    the number of classes it scores. The quantize stage records it in each method's meta.json; loaders, MACs and
    the bench bundle read it back from there."""

    model: str
    args: str = "{}"
    input_shape: tuple[int, int, int] = Classifier.INPUT_SHAPE
    classes: int = NUM_CLASSES

    def __str__(self) -> str:
        return self.model

    @property
    def kwargs(self) -> dict:
        return json.loads(self.args)

    @property
    def imported(self) -> bool:
        return ".py:" in self.model

    def record(self) -> dict:
        return {"model": self.model, "args": self.kwargs, "input_shape": list(self.input_shape), "classes": self.classes}

    @classmethod
    def from_record(cls, record: dict) -> ModelSpec:
        shape = [int(v) for v in record["input_shape"]]
        if len(shape) != 3 or min(shape) < 1 or int(record["classes"]) < 1:
            raise ValueError(f"a model spec of input shape {shape} and {record['classes']} classes")
        return cls(str(record["model"]), canonical(record.get("args") or {}), tuple(shape), int(record["classes"]))


def canonical(kwargs: dict) -> str:
    return json.dumps(kwargs, sort_keys=True, separators=(",", ":"))


def spec_for(model: str | ModelSpec) -> ModelSpec:
    """A ModelSpec as given, or a registered model's own by its name (the input shape and classes its class declares)."""
    if isinstance(model, ModelSpec):
        return model
    if ".py:" in model:
        raise ValueError(f"model {model}: an imported model is rebuilt from its recorded spec (meta.json), not from its name alone")
    return ModelSpec(model, "{}", tuple(get_model(model).INPUT_SHAPE), NUM_CLASSES)


def spec_from(model: str, model_args: dict, input_shape: tuple[int, ...], classes: int) -> ModelSpec:
    """The spec of train.model with its train.model_args, for images of `input_shape` (C, H, W) and `classes` classes."""
    return ModelSpec(model, canonical(model_args), tuple(int(v) for v in input_shape), int(classes))


def build_model(model: str | ModelSpec, **hyper) -> Classifier:
    """An untrained instance of `model`: a registered name (hyper: dropout_conv, dropout_fc, mean, std) or a ModelSpec,
    whose input shape the instance takes (an imported model: behind `Normalized`, hyper mean and std per channel)."""
    if isinstance(model, str):
        return get_model(model)(**hyper)
    if not model.imported:
        built = get_model(model.model)(**hyper)
        built.INPUT_SHAPE = tuple(model.input_shape)
        return built
    from edgequant.model.imported import Normalized, construct

    return Normalized(construct(model.model, model.kwargs), model.input_shape, model.model, hyper.get("mean"), hyper.get("std"))


def common_model(artifacts: Path, methods: list[str]) -> ModelSpec:
    """The one model every method's directory under `artifacts` was exported from, or a ValueError naming those that differ."""
    models = {m: model_of(Path(artifacts) / m) for m in methods}
    first = models[methods[0]]
    if stale := [m for m in methods if models[m] != first]:
        raise ValueError(f"{', '.join(stale)} not exported from model {str(first)!r} as {methods[0]} was: re-run `dvc repro quantize`")
    return first


def model_of(out_dir: Path) -> ModelSpec:
    """The model an exported method directory was made from, as the quantize stage recorded it in meta.json
    (a record without a spec names a registered model)."""
    try:
        meta = json.loads((Path(out_dir) / "meta.json").read_text())
        return ModelSpec.from_record(meta["model_spec"]) if "model_spec" in meta else spec_for(str(meta["model"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out_dir}/meta.json does not name its model ({exc}); re-run `dvc repro quantize@{Path(out_dir).name}`") from exc


def read_state(path: str, remedy: str) -> dict:
    """The state dict in `path`, read with `weights_only=True` after a scan that runs none of the pickle's code
    (edgequant.artifacts: pickled code is refused before anything unpickles it).

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
    return state


def load_state(path: str, model: nn.Module, remedy: str, state: dict | None = None) -> nn.Module:
    """Load the state dict in `path` (or `state`, read from it already) into `model`."""
    state = read_state(path, remedy) if state is None else state
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        name = getattr(model, "NAME", "") or type(model).__name__
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]  # a heading, then which key or shape
        detail = " ".join(lines[:2])[:MAX_DETAIL]
        raise ValueError(f"{path}: weights do not fit model {name!r} (another train.model?): {detail}; {remedy}") from exc
    return model.eval()


def load_fp32(path: str, model: str | ModelSpec) -> Classifier:
    """The FP32 model (a registered name, or a spec) the train stage saved."""
    return load_state(path, build_model(model), "re-run `dvc repro train`")


def fp32_model(path: str, train, images: torch.Tensor) -> tuple[Classifier, ModelSpec]:
    """The FP32 model the train stage saved from train.model and train.model_args (`train`: TrainParams), for the
    shape of the prepared `images`, and its spec, the classes counted from its output (the train stage checked them
    against the labels)."""
    shape = tuple(images.shape[1:]) if images.dim() == 4 else (1, *images.shape[1:])
    spec = spec_from(train.model, train.model_args, shape, NUM_CLASSES)
    model = load_fp32(path, spec)
    with torch.no_grad():
        classes = model(model.example_input(1)).shape[-1]
    return model, dataclasses.replace(spec, classes=int(classes))
