"""The registry of quantization methods, keyed by the names used in params.yaml."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from edgequant.model import Net


def quiet_known_upstream_noise() -> None:
    """Silence harmless upstream messages that buried real warnings in the stage logs.

    torchao logs a failure for each CUDA-only kernel library it cannot load on a CPU build, and for an
    Enum it registers with pytree; the ONNX exporter logs that torchvision (deliberately not installed)
    is missing; torch's pytree warns dozens of times per ExecuTorch export about its own LeafSpec check;
    inductor's INT8 conv lowering copy-constructs a tensor. None is actionable by a user of this
    pipeline. Everything else, the quantizers' own warnings included, still prints.
    """
    for name in ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", module=r"torch\._inductor\.mkldnn_lowerings")


quiet_known_upstream_noise()  # before any method imports its runtime

# A runner maps a float32 batch (N, 1, 28, 28) of [0, 1] pixels to logits (N, 10).
Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Exported:
    """What a method's export wrote: the file a device would ship, and optional per-layer SQNR (dB)."""

    shipped: Path
    sqnr_db: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    runtime: str  # the engine that runs the artifact on the device
    precision: str  # "fp32" or "int8"
    baseline: str  # FP32 method of the same runtime: INT8 speed-ups are measured against it
    static_shapes: bool  # one artifact per batch size (ExecuTorch, compiled graphs) or one for all
    description: str
    export: Callable[[Net, torch.Tensor, torch.Tensor, Path, tuple[int, ...]], Exported]
    load: Callable[[Path, int, int], Runner]
    # (out_dir, batch_size, threads, x, runs) -> ms per call for each operator, from the runtime's own
    # profiler; None: the benchmark profiles the runner with torch.profiler (PyTorch runtimes).
    profile: Callable[[Path, int, int, torch.Tensor, int], dict[str, float]] | None = None


_METHODS: dict[str, Method] = {}


def register(name: str, *, runtime: str, precision: str, baseline: str, static_shapes: bool = False):
    """Class decorator: a class with static `export(model, calib, sample, out_dir, batch_sizes)` and
    `load(out_dir, batch_size, threads)` (optionally `profile(out_dir, batch_size, threads, x, runs)`)
    becomes the method `name`; its docstring is its description."""

    def add(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"quantization method {name!r} is registered twice")
        description, profile = (cls.__doc__ or "").strip(), getattr(cls, "profile", None)
        _METHODS[name] = Method(name, runtime, precision, baseline, static_shapes, description, cls.export, cls.load, profile)
        return cls

    return add


def known_methods() -> list[str]:
    _load_builtins()
    return list(_METHODS)


def get_method(name: str) -> Method:
    """The method registered as `name`, or ValueError listing the known names."""
    _load_builtins()
    if name not in _METHODS:
        raise ValueError(f"unknown quantization method {name!r}; known methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def _load_builtins() -> None:
    # Importing the package registers the built-in methods; their heavy runtimes load on first use.
    import edgequant.methods  # noqa: F401


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: how far `approx` is from `reference`."""
    reference, approx = reference.double(), approx.double()
    noise = (reference - approx).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(reference.pow(2).sum() / noise))


def layer_outputs(model: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """FP32 outputs of every Conv2d/Linear layer of `model` on `x`, in execution order."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o.detach()))
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear))
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return outputs
