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
    """Outputs of the named sub-modules (default: every Conv2d/Linear, as deployed: see `taps`) on `x`, in execution order."""
    modules = dict(model.named_modules())
    wanted = taps(model, x[:1]) if names is None else {n: n for n in names}
    outputs: dict[str, torch.Tensor] = {}
    handles = [modules[t].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, convert(o))) for n, t in wanted.items()]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def taps(model: nn.Module, x: torch.Tensor | None = None) -> dict[str, str]:
    """Each Conv2d/Linear layer -> the module whose output is that layer's as every exporter deploys it: the
    BatchNorm that takes the conv's output (folded into the conv's weights and bias), else itself.

    Found by running the model once on `x` (default: its example input) with hooks, so a BatchNorm is paired
    with its conv whatever the module's layout (a Sequential, or attributes a forward calls in turn)."""
    modules = dict(model.named_modules())
    tapped = {n: n for n, m in modules.items() if isinstance(m, COMPUTE)}
    norms = [n for n, m in modules.items() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return tapped
    # id of a conv's output -> (the conv, the output): holding the tensor keeps its id from being reused within the run
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    pairs: dict[str, str] = {}

    def pair(norm: str, inputs: tuple) -> None:  # a forward hook's return value would replace the module's output
        conv = produced.get(id(inputs[0]), ("",))[0]
        if conv and conv not in pairs:
            pairs[conv] = norm

    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: produced.__setitem__(id(o), (n, o))) for n in tapped]
    hooks += [modules[n].register_forward_hook(lambda m, i, o, n=n: pair(n, i)) for n in norms]
    x = model.example_input() if x is None else x
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    tapped.update(pairs)
    return tapped


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
def net_macs(model) -> dict[str, int]:
    """MACs per image of each layer of `model` (a registered name or a ModelSpec), decided once, from the module itself
    on an input of its shape."""
    from edgequant.model.zoo import build_model

    net = build_model(model)
    return count_macs(net, net.example_input())


def conv_macs(model) -> int:
    """MACs per image in the convolutions of `model` (a registered name or a ModelSpec; found by type, not by name)."""
    from edgequant.model.zoo import build_model

    macs = net_macs(model)
    return sum(macs[n] for n in conv_layers(build_model(model)))


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: how far `approx` is from `reference`."""
    reference, approx = reference.double(), approx.double()
    noise = (reference - approx).pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(reference.pow(2).sum() / noise))
