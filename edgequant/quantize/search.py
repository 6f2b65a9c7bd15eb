"""Accuracy-aware INT8: which layers stay FP32 so that the accuracy lost stays within a budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from edgequant.data.splits import predict
from edgequant.model.layers import sqnr_db
from edgequant.quantize.catalog import Labelled


@dataclasses.dataclass(frozen=True)
class Trial:
    """One configuration tried: the layers kept in FP32 and what that measured on the validation images."""

    fp32_layers: tuple[str, ...]
    drop_pp: float  # top-1 accuracy lost against the FP32 model
    logit_sqnr_db: float  # how close the logits stayed to FP32's: ranks layers whose drops tie


def logits_of(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`'s logits for `x`, a batch of 500 at a time: one call on 10,000 images held gigabytes of
    activations and ran several times slower than the same work in cache-sized batches."""
    with torch.no_grad():
        return predict(module, x, 500)


def score(labelled: Labelled, fp32_logits: torch.Tensor, logits: torch.Tensor, fp32_layers: tuple[str, ...]) -> Trial:
    """The validation drop and logit SQNR of a quantized model's `logits` against the FP32 model's."""
    # Counted in integers: a float32 mean made 10 images of 10,000 read 0.100004 pp and miss a 0.1 pp budget.
    fp32_right = int((fp32_logits.argmax(1) == labelled.val_labels).sum())
    right = int((logits.argmax(1) == labelled.val_labels).sum())
    drop = round(100.0 * (fp32_right - right) / len(labelled.val_labels), 6)
    return Trial(fp32_layers, drop, min(sqnr_db(fp32_logits, logits), 200.0))


def keep_fp32(layers: list[str], measure: Callable[[tuple[str, ...]], Trial], budget_pp: float) -> tuple[tuple[str, ...], list[Trial]]:
    """Layers to keep in FP32, fewest first, so that the drop `measure` reports is within `budget_pp`.

    Every layer is first tried alone in FP32 (leave-one-out sensitivity, as NNCF's accuracy control
    ranks): the one whose own quantization costs most goes first, ties broken by logit SQNR. Layers
    are then kept in that order until the budget holds. At most half the layers may stay FP32, because
    beyond that the model is no longer an INT8 model; past it the search stops with a ValueError that
    says what it tried and the best drop it reached.
    """
    trials = [measure(())]
    if trials[0].drop_pp <= budget_pp:
        return (), trials
    alone = {layer: measure((layer,)) for layer in layers}
    trials += alone.values()
    ranked = sorted(layers, key=lambda layer: (alone[layer].drop_pp, -alone[layer].logit_sqnr_db))
    limit = max(1, len(layers) // 2)
    for n in range(1, limit + 1):
        kept = tuple(ranked[:n])
        trial = alone[kept[0]] if n == 1 else measure(kept)
        if n > 1:
            trials.append(trial)
        if trial.drop_pp <= budget_pp:
            return kept, trials
    best = min(trials, key=lambda t: (t.drop_pp, len(t.fp32_layers)))
    raise ValueError(
        f"no choice of up to {limit} of {len(layers)} layers kept in FP32 brings the validation drop within {budget_pp} pp:"
        f" tried {len(trials)} configurations (all INT8: {trials[0].drop_pp:.2f} pp); best {best.drop_pp:.2f} pp"
        f" with {', '.join(best.fp32_layers) or 'none'} in FP32. Raise gate.max_accuracy_drop_pp or pick another method"
    )


def summary(kept: tuple[str, ...], trials: list[Trial], budget_pp: float) -> dict[str, object]:
    """What meta.json records of the search: the layers kept, the budget, and every configuration tried."""
    return {
        "fp32_layers": list(kept),
        "budget_pp": budget_pp,
        "validation_drop_pp": next(t.drop_pp for t in reversed(trials) if t.fp32_layers == kept),
        "tried": [{"fp32_layers": list(t.fp32_layers), "drop_pp": t.drop_pp, "logit_sqnr_db": round(t.logit_sqnr_db, 2)} for t in trials],
    }
