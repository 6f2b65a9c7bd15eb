"""Accuracy-aware INT8: which layers stay FP32 so that the accuracy lost stays within a budget.

How the search decides (`keep_fp32`), each configuration measured on the runtime that ships it, over
every validation image:

- Rank. Each layer alone is kept FP32, the rest INT8 (NNCF's accuracy control reverts one group of
  quantizers at a time the same way, and ranks by how far the outputs then are from FP32's). The
  layers are ranked by the mean KL divergence of that configuration's softmax from FP32's, an average
  over every image. Its accuracy drop is not used to rank: a difference of a few flipped images (0.1 pp
  of 10,000 is 10) lies well inside the drop's own 95 % interval, so it orders layers by chance. Logit
  SQNR is as steady but weighs confident images' large logits, which decide nothing.
- Walk. Layers are added in rank order; one whose addition does not lower the KL divergence is passed
  over (it bought nothing there), so the walk need not be a prefix of the ranking.
- Stop. The budget holds when the upper end of the drop's exact 95 % interval (edgequant.measure.summary's, the
  one every reported drop carries) is within it, not the point estimate: a drop that only reads within
  budget on these images may not on the next ones, where the gate measures it.
- Prune. Having met it, each kept layer but the last added is tried back in INT8 (least sensitive
  first) and left there where the bound still holds and the outputs stay closer to FP32's than every
  configuration that missed: a configuration further from FP32 that meets the budget anyway does so
  by a gain on these particular images.
- Limit. Every layer but one may stay FP32: all of them is the FP32 model, no INT8 method. What the
  kept layers cost in size and speed is the gate's to judge, as for any method.
- Miss. A budget the walk cannot meet is not an error: the configuration closest to FP32's outputs
  ships (the lowest bound among those that missed would be the luckiest, not the best), recorded with
  `budget_met: false`, and the gate fails it (or reports it, gate.enforce: false).

docs/accuracy-search.md has the measurements behind each rule.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from edgequant.data.splits import predict
from edgequant.measure.summary import drop_interval_pp
from edgequant.model.layers import sqnr_db
from edgequant.quantize.catalog import Labelled

HELD_TO = "validation_drop_pp_ci95_high"  # the statistic the budget is compared with, as benchmark.json names it
RULE = "the upper end of the validation drop's exact 95 % interval is within the budget"


@dataclasses.dataclass(frozen=True)
class Trial:
    """One configuration tried: the layers kept in FP32 and what that measured on the validation images."""

    fp32_layers: tuple[str, ...]
    lost: int  # validation images FP32 got right and this configuration wrong
    gained: int  # and the other way round
    images: int
    kl_nats: float  # mean KL divergence of its softmax from FP32's per image: the ranking signal
    logit_sqnr_db: float  # the same closeness as logit SQNR, recorded for readers

    @property
    def drop_pp(self) -> float:
        return round(100.0 * (self.lost - self.gained) / self.images, 6)

    @functools.cached_property
    def interval_pp(self) -> tuple[float, float]:
        return drop_interval_pp(self.lost, self.gained, self.images)

    @property
    def held_to_pp(self) -> float:
        """The statistic compared with the budget (HELD_TO)."""
        return self.interval_pp[1]


def logits_of(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module`'s logits for `x`, a batch of 500 at a time: one call on 10,000 images held gigabytes of
    activations and ran several times slower than the same work in cache-sized batches."""
    with torch.no_grad():
        return predict(module, x, 500)


def kl_nats(reference: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) per row, in nats, computed in float64."""
    p_log, q_log = torch.log_softmax(reference.double(), 1), torch.log_softmax(logits.double(), 1)
    return float((p_log.exp() * (p_log - q_log)).sum(1).mean())


def score(labelled: Labelled, fp32_logits: torch.Tensor, logits: torch.Tensor, fp32_layers: tuple[str, ...]) -> Trial:
    """What a quantized model's `logits` on the validation images say against the FP32 model's."""
    # Counted in integers: a float32 mean made 10 images of 10,000 read 0.100004 pp and miss a 0.1 pp budget.
    fp32_right, right = fp32_logits.argmax(1) == labelled.val_labels, logits.argmax(1) == labelled.val_labels
    lost, gained = int((fp32_right & ~right).sum()), int((~fp32_right & right).sum())
    closeness = min(sqnr_db(fp32_logits, logits), 200.0)  # identical logits: capped, JSON has no inf
    return Trial(fp32_layers, lost, gained, len(labelled.val_labels), kl_nats(fp32_logits, logits), closeness)


@dataclasses.dataclass(frozen=True)
class Search:
    """What the search found: the layers kept in FP32, every configuration it measured, and whether the budget holds."""

    kept: tuple[str, ...]
    trials: list[Trial]
    ranked: tuple[str, ...]  # the layers by sensitivity, most sensitive first
    budget_pp: float
    max_fp32_layers: int

    @property
    def chosen(self) -> Trial:
        return next(t for t in self.trials if set(t.fp32_layers) == set(self.kept))

    @property
    def budget_met(self) -> bool:
        return self.chosen.held_to_pp <= self.budget_pp


def keep_fp32(layers: list[str], measure: Callable[[tuple[str, ...]], Trial], budget_pp: float) -> Search:
    """The layers to keep in FP32 so that the drop `measure` reports meets `budget_pp` (the module's
    docstring says how); each configuration is measured once."""
    measured: dict[frozenset[str], Trial] = {}

    def trial(kept: tuple[str, ...]) -> Trial:
        key = frozenset(kept)
        if key not in measured:
            measured[key] = measure(kept)
        return measured[key]

    def meets(t: Trial) -> bool:
        return t.held_to_pp <= budget_pp

    limit = max(0, len(layers) - 1)
    current = trial(())
    if meets(current) or limit == 0:
        return Search((), list(measured.values()), tuple(layers), budget_pp, limit)
    alone = {layer: trial((layer,)) for layer in layers}
    ranked = tuple(sorted(layers, key=lambda layer: (alone[layer].kl_nats, layers.index(layer))))
    kept: tuple[str, ...] = ()
    for layer in ranked:
        if len(kept) == limit:
            break
        t = trial((*kept, layer))
        if meets(t) or t.kl_nats < current.kl_nats:
            kept, current = (*kept, layer), t
        if meets(t):
            break
    if not meets(current):  # the walk ended closest to FP32's outputs; a lower bound elsewhere would be luck
        return Search(min(measured.values(), key=lambda t: t.kl_nats).fp32_layers, list(measured.values()), ranked, budget_pp, limit)
    for layer in reversed(kept[:-1]):  # the last one added is what met the budget
        fewer = tuple(x for x in kept if x != layer)
        closest_miss = min(t.kl_nats for t in measured.values() if not meets(t))
        t = trial(fewer)
        # Only as close to FP32's outputs as no configuration that missed: dropping a layer whose outputs
        # moved away and meeting the budget anyway is a gain on these validation images, not the model's.
        if meets(t) and t.kl_nats < closest_miss:
            kept = fewer
    return Search(tuple(kept), list(measured.values()), ranked, budget_pp, limit)


def summary(search: Search) -> dict[str, object]:
    """What meta.json records of the search: the layers kept, whether the budget holds and on what, and every configuration tried."""
    chosen = search.chosen
    low, high = chosen.interval_pp
    return {
        "fp32_layers": list(search.kept),
        "budget_pp": search.budget_pp,
        "budget_met": search.budget_met,
        "budget_rule": RULE,
        "budget_held_to": HELD_TO,
        "validation_images": chosen.images,
        "validation_drop_pp": chosen.drop_pp,
        "validation_drop_pp_ci95_low": low,
        "validation_drop_pp_ci95_high": high,
        "validation_flips_lost": chosen.lost,
        "validation_flips_gained": chosen.gained,
        "max_fp32_layers": search.max_fp32_layers,
        "ranked": list(search.ranked),
        "configurations_tried": len(search.trials),
        "tried": [
            {
                "fp32_layers": list(t.fp32_layers),
                "drop_pp": t.drop_pp,
                "drop_pp_ci95": list(t.interval_pp),
                "kl_nats": round(t.kl_nats, 6),
                "logit_sqnr_db": round(t.logit_sqnr_db, 2),
            }
            for t in search.trials
        ],
    }


SEARCH_METRICS = (
    "budget_met",
    "budget_held_to",
    "validation_drop_pp",
    "validation_drop_pp_ci95_low",
    "validation_drop_pp_ci95_high",
    "validation_images",
    "configurations_tried",
)


def search_metrics(settings: dict | None) -> dict[str, object]:
    """The search's outcome for a method's entry in benchmark.json, where the gate reads it; {} for a method that did not search."""
    if not settings or "budget_met" not in settings:
        return {}
    return {"fp32_layers_kept": len(settings["fp32_layers"]), **{key: settings[key] for key in SEARCH_METRICS if key in settings}}
