"""Per-layer views of a model through forward hooks: outputs, MACs, and SQNR against a reference."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from torch import nn

COMPUTE = (nn.Conv2d, nn.Linear)  # the layers that hold the weights and do the multiply-accumulates


def capture(
    model: nn.Module,
    x: torch.Tensor,
    names: Iterable[str] | None = None,
    convert: Callable[[torch.Tensor], torch.Tensor] = torch.Tensor.detach,
) -> dict[str, torch.Tensor]:
    """Outputs of the named sub-modules (default: every Conv2d/Linear) on `x`, in execution order."""
    modules = dict(model.named_modules())
    wanted = [n for n, m in modules.items() if isinstance(m, COMPUTE)] if names is None else list(names)
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, convert(o))) for n in wanted]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def layer_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """FP32 outputs of every Conv2d/Linear layer of `model` on `x`, in execution order."""
    return capture(model, x)


def count_macs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per image of each Conv2d/Linear layer, measured on one `example` input:
    output elements × the inputs each one sums over."""
    modules = dict(model.named_modules())
    macs = {}
    for name, out in capture(model, example[:1]).items():
        m = modules[name]
        fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1] if isinstance(m, nn.Conv2d) else m.in_features
        macs[name] = out[0].numel() * fan_in
    return macs


def conv_layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@functools.cache
def net_macs() -> dict[str, int]:
    """MACs per image of each layer of edgequant's Net, decided once, from the module itself."""
    from edgequant.model import Net

    net = Net()
    return count_macs(net, net.example_input())


def conv_macs() -> int:
    """MACs per image in the Net's convolutions (found by type, not by name)."""
    from edgequant.model import Net

    macs = net_macs()
    return sum(macs[n] for n in conv_layers(Net()))


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: how far `approx` is from `reference`."""
    reference, approx = reference.double(), approx.double()
    noise = (reference - approx).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(reference.pow(2).sum() / noise))
