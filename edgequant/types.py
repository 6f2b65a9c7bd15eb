"""Types shared by the methods, the benchmark and the profilers."""

from __future__ import annotations

from collections.abc import Callable

import torch

# A runner maps a float32 batch of [0, 1] pixels, shaped (N, *model.INPUT_SHAPE), to logits (N, classes).
Runner = Callable[[torch.Tensor], torch.Tensor]
