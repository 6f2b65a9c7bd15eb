"""Accuracy-aware INT8: the search for the layers kept in FP32, and that the kept layers really stay FP32."""

import json

import pytest
import torch

from edgequant.data.splits import to_input
from edgequant.gate import check
from edgequant.params import GateParams
from edgequant.quantize.catalog import Labelled, get_method, missing_modules
from edgequant.quantize.search import HELD_TO, Trial, keep_fp32, kl_nats, search_metrics, summary

from .conftest import make_digits

LAYERS = ["conv1", "conv2", "fc1", "fc2"]
IMAGES = 10_000  # validation images: 10 of them are the 0.1 pp budget
BUDGET_PP = 0.1


def measured(lost: dict[str, int], kl: dict[str, float], gained: dict[str, int] | None = None, interaction: dict | None = None):
    """A stand-in measurement on IMAGES validation images: each INT8 layer flips `lost` (and `gained`) images
    and adds `kl` to the output divergence; FP32 layers add nothing. `interaction` maps a set of FP32 layers
    to extra KL, for the cases where keeping two layers FP32 is worse than keeping one."""
    calls = []

    def measure(kept: tuple[str, ...]) -> Trial:
        calls.append(kept)
        int8 = [layer for layer in LAYERS if layer not in kept]
        extra = sum(v for k, v in (interaction or {}).items() if set(k) <= set(kept))
        return Trial(
            kept,
            sum(lost.get(layer, 0) for layer in int8),
            sum((gained or {}).get(layer, 0) for layer in int8),
            IMAGES,
            sum(kl.get(layer, 0.0) for layer in int8) + extra,
            30.0,
        )

    return measure, calls


def test_within_budget_keeps_nothing_and_tries_once():
    measure, calls = measured({"conv1": 3}, {"conv1": 0.01}, gained={"conv2": 2})
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert search.kept == () and calls == [()] and search.budget_met
    assert search.chosen.drop_pp == 0.01 and search.chosen.interval_pp[1] <= BUDGET_PP


def test_the_ranking_follows_the_output_divergence_not_the_flipped_images():
    # Alone in FP32, conv1 leaves the fewest flipped images (11 of 10,000 against conv2's 13: two images,
    # noise), but the outputs furthest from FP32's (KL): conv2 and fc1 are what the model's outputs say costs most.
    measure, _ = measured({"conv1": 8, "conv2": 6, "fc1": 5}, {"conv1": 0.001, "conv2": 0.02, "fc1": 0.01})
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert search.ranked == ("conv2", "fc1", "conv1", "fc2")
    assert search.kept == ("conv2", "fc1") and search.budget_met  # 8 images left, all lost: 0.08 pp, bound 0.08
    # ranked by the flips, conv1 (11 left) then conv2 (5 left) would have been kept


def test_a_drop_that_only_reads_within_budget_does_not_stop_the_search():
    # All INT8 reads 0.05 pp (60 lost, 55 gained), within 0.1 pp, but its 95 % interval reaches 0.26 pp:
    # those 115 flips say nothing about whether the next 10,000 images lose 0.1 pp or more.
    measure, _ = measured({"conv1": 57, "fc2": 3}, {"conv1": 0.05, "fc2": 0.001}, gained={"conv1": 55})
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    all_int8 = search.trials[0]
    assert all_int8.fp32_layers == () and all_int8.drop_pp <= BUDGET_PP < all_int8.interval_pp[1]
    assert search.kept == ("conv1",) and search.budget_met and search.chosen.interval_pp[1] == 0.03  # 3 lost, none gained


def test_the_budget_may_need_more_than_half_the_layers():
    measure, _ = measured({"conv1": 30, "conv2": 30, "fc1": 30, "fc2": 5}, {"conv1": 0.3, "conv2": 0.2, "fc1": 0.1, "fc2": 0.01})
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert search.kept == ("conv1", "conv2", "fc1") and search.budget_met and search.max_fp32_layers == 3


def test_a_layer_that_does_not_bring_the_outputs_closer_is_passed_over():
    # Kept together, conv1 and conv2 leave the outputs further from FP32's than conv1 alone (their
    # quantization errors had cancelled): the walk passes conv2 over and goes on to fc1.
    measure, calls = measured(
        {"conv1": 20, "conv2": 6, "fc1": 11}, {"conv1": 0.3, "conv2": 0.2, "fc1": 0.1}, interaction={("conv1", "conv2"): 0.25}
    )
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert search.ranked[:3] == ("conv1", "conv2", "fc1") and ("conv1", "conv2") in calls
    assert search.kept == ("conv1", "fc1") and search.budget_met


@pytest.mark.parametrize(("together", "kept"), [(0.1, ("conv1", "fc1")), (0.02, ("conv1", "conv2", "fc1"))])
def test_a_kept_layer_goes_back_to_int8_only_where_the_outputs_stay_closer_than_every_miss(together, kept):
    # The walk meets the budget with conv1, conv2 and fc1 in FP32 (conv1 and conv2 together leave KL `together`
    # more than apart: their errors had cancelled). Without conv2 the budget still holds (2 images lost), and
    # its outputs (KL 0.25) are closer to FP32's than {conv1, conv2}'s, which missed, only when `together` is 0.1.
    measure, calls = measured(
        {"conv1": 10, "conv2": 2, "fc1": 11}, {"conv1": 0.3, "conv2": 0.25, "fc1": 0.2}, interaction={("conv1", "conv2"): together}
    )
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert ("conv1", "conv2", "fc1") in calls and ("conv1", "fc1") in calls
    assert search.kept == kept and search.budget_met


def test_an_unreachable_budget_ships_the_best_configuration_and_says_so():
    # Each INT8 layer loses 15 images and gains 10: with one layer left INT8, 0.05 pp reads within budget,
    # but its interval reaches past 0.1 pp, and keeping every layer FP32 would be no INT8 model.
    each = dict.fromkeys(LAYERS, 15)
    measure, calls = measured(each, {"conv1": 0.4, "conv2": 0.3, "fc1": 0.2, "fc2": 0.1}, gained=dict.fromkeys(LAYERS, 10))
    search = keep_fp32(LAYERS, measure, BUDGET_PP)
    assert not search.budget_met and max(len(kept) for kept in calls) == 3  # every layer but one, never all of them
    assert search.chosen == min(search.trials, key=lambda t: t.kl_nats) and search.kept == ("conv1", "conv2", "fc1")
    record = summary(search)
    assert record["budget_met"] is False and record["fp32_layers"] == ["conv1", "conv2", "fc1"]
    assert record["configurations_tried"] == len(calls) == 7  # all INT8, each layer alone, two more steps of the walk
    assert record["validation_drop_pp"] == 0.05 and record["validation_drop_pp_ci95_high"] == search.chosen.interval_pp[1] > BUDGET_PP
    assert [t["fp32_layers"] for t in record["tried"]][:5] == [[], ["conv1"], ["conv2"], ["fc1"], ["fc2"]]
    metrics = search_metrics(record)
    assert metrics["budget_met"] is False and metrics["fp32_layers_kept"] == 3 and metrics["budget_held_to"] == HELD_TO
    assert metrics[HELD_TO] == record["validation_drop_pp_ci95_high"] and search_metrics({"weights": "int8"}) == {}


def test_the_divergence_is_zero_for_the_same_outputs_and_grows_with_the_difference():
    reference = torch.randn(64, 10)
    assert kl_nats(reference, reference) == pytest.approx(0.0, abs=1e-12)
    near, far = kl_nats(reference, reference + 0.1 * torch.randn(64, 10)), kl_nats(reference, reference + torch.randn(64, 10))
    assert 0 < near < far


def boundary_images(model: torch.nn.Module, n: int) -> torch.Tensor:
    """`n` images on FP32's decision boundary: mixes of two digits it classes differently, bisected until its
    top two logits all but tie. Quantizing any layer moves some of them across, so no INT8 layer is free."""
    images = to_input(torch.from_numpy(make_digits(2 * n, 3)[0]))
    with torch.no_grad():
        a, b = images[:n], images[n:]
        keep = model.eval()(a).argmax(1) != model(b).argmax(1)
        a, b = a[keep], b[keep]
        side = model(a).argmax(1)
        low, high = torch.zeros(len(a), 1, 1, 1), torch.ones(len(a), 1, 1, 1)
        for _ in range(40):
            mid = (low + high) / 2
            same = (model((1 - mid) * a + mid * b).argmax(1) == side).view(-1, 1, 1, 1)
            low, high = torch.where(same, mid, low), torch.where(same, high, mid)
        return (1 - low) * a + low * b


@pytest.mark.parametrize(
    "name", ["onnx_qdq_int8_per_tensor_aware", pytest.param("executorch_xnnpack_int8_per_tensor_aware", marks=pytest.mark.slow)]
)
def test_a_search_that_cannot_meet_its_budget_ships_its_artifact_and_the_gate_fails_it(name, tiny_model, tmp_path):
    method = get_method(name)
    if missing_modules(method):
        pytest.skip(f"{name} needs {', '.join(missing_modules(method))}, not installed (pip install -e '.[runtimes]')")
    val = boundary_images(tiny_model, 64)
    with torch.no_grad():
        labels = tiny_model(val).argmax(1)  # FP32 gets every one right: each image an INT8 layer moves is lost
    calib_images, calib_labels = make_digits(64, 5)
    labelled = Labelled(torch.from_numpy(calib_labels).long(), val, labels, 0.0, 1)
    exported = method.export(tiny_model, to_input(torch.from_numpy(calib_images)), val[:16], tmp_path, (8,), labelled=labelled)
    record = exported.settings
    assert exported.shipped.is_file() and record["budget_met"] is False and record["validation_drop_pp_ci95_high"] > 0
    assert record["validation_flips_lost"] > 0 and len(record["fp32_layers"]) <= 3  # of tiny_model's 4 layers
    (tmp_path / "meta.json").write_text(json.dumps({"shipped": exported.shipped.name, "model": "cnn"}))
    assert method.load(tmp_path, 8, 1)(val[:8].contiguous()).shape == (8, 10)  # what ships runs
    metrics = {"peak": {"threads_1": {}}, "methods": {name: {"accuracy_drop_pp": 0.0, **search_metrics(record)}}}
    gate = GateParams(methods=[name], max_accuracy_drop_pp=0.0, min_speedup=1.0, max_size_ratio=1.0, enforce=True)
    (verdict,) = [c for c in check(metrics, gate) if c.what.startswith("accuracy-aware search")]
    assert not verdict.passed and "search budget NOT met" in verdict.describe()


@pytest.mark.parametrize(("model", "layer", "groups"), [("tiny_model", "conv1", 1), ("tiny_stress_model", "blocks.0.0", 32)])
def test_onnx_excluded_nodes_keep_float_weights(model, layer, groups, tmp_path, request):
    import onnx

    from edgequant.quantize.methods.onnx import _preprocess, _qdq, compute_nodes

    net = request.getfixturevalue(model)
    pre = _preprocess(net, tmp_path)
    node_of = compute_nodes(net, pre)  # paired by order, checked by weight shape
    _qdq(pre, tmp_path / "q.onnx", torch.rand(16, 1, 28, 28), False, "MinMax", exclude=(node_of[layer],))
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    produced_by = {out: n for n in graph.node for out in n.output}
    nodes = {n.name: n for n in graph.node}

    def weight_is_int8(name: str) -> bool:
        source = produced_by.get(nodes[name].input[1])
        return source is not None and source.op_type == "DequantizeLinear"

    kept = nodes[node_of[layer]]
    assert next(a.i for a in kept.attribute if a.name == "group") == groups  # the layer asked for, not a neighbour
    assert not weight_is_int8(kept.name) and all(weight_is_int8(n) for other, n in node_of.items() if other != layer)


@pytest.mark.parametrize(("model", "layer", "groups"), [("tiny_model", "conv1", 1), ("tiny_stress_model", "blocks.0.0", 32)])
def test_xnnpack_skipped_layers_stay_fp32(model, layer, groups, request):
    from edgequant.quantize.methods.executorch import _quantizer
    from edgequant.quantize.methods.pt2e import calibrate_and_convert

    net = request.getfixturevalue(model)

    def convs(fp32_layers: tuple[str, ...]) -> list[tuple[bool, int]]:
        """(INT8 weights?, groups) of each conv of the converted graph."""
        graph = calibrate_and_convert(net, torch.rand(16, 1, 28, 28), _quantizer(True, fp32_layers)).graph
        found = [n for n in graph.nodes if n.target == torch.ops.aten.conv2d.default]
        return [
            (str(getattr(c.args[1], "target", "")).startswith("quantized_decomposed.dequantize"), c.args[6] if len(c.args) > 6 else 1)
            for c in found
        ]

    all_int8, one_kept = convs(()), convs((layer,))
    assert all(q for q, _ in all_int8)
    assert [g for q, g in one_kept if not q] == [groups] and sum(q for q, _ in one_kept) == len(all_int8) - 1
