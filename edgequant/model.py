"""The classic MNIST CNN from pytorch/examples, with input normalization folded in."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

NUM_CLASSES = 10


class Net(nn.Module):
    """conv 1→32 3×3, conv 32→64 3×3, max-pool 2, fc 9216→128, fc 128→10.

    Normalization lives inside the model as buffers so every exported artifact (ONNX, .pte,
    compiled graph) takes plain [0, 1] pixels: the device app then cannot forget or mistype it.
    """

    INPUT_SHAPE = (1, 28, 28)  # channels, height, width of one image, pixels scaled to [0, 1]

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout_conv)
        self.dropout2 = nn.Dropout(dropout_fc)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, NUM_CLASSES)
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

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

    @classmethod
    def example_input(cls, batch: int = 1) -> torch.Tensor:
        """What exporters trace and loaders warm up with: a batch of blank images of the model's input shape."""
        return torch.zeros(batch, *cls.INPUT_SHAPE)


def load_state(path: str, model: nn.Module, remedy: str) -> nn.Module:
    """Load a state dict saved by edgequant into `model`; `weights_only=True` refuses pickled code.

    A damaged or foreign file becomes a ValueError naming the file and `remedy`: torch's own message
    for it suggests `weights_only=False`, which is the one thing not to do with a file of unknown origin.
    """
    from edgequant.artifacts import check_torch_save

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
        raise ValueError(
            f"{path}: weights do not fit edgequant's Net (different architecture?): {str(exc).splitlines()[0]}; {remedy}"
        ) from exc
    return model.eval()


def load_fp32(path: str) -> Net:
    """The FP32 model the train stage saved."""
    return load_state(path, Net(), "re-run `dvc repro train`")
