"""Accuracy-aware INT8: the search for the layers kept in FP32, and that the kept layers really stay FP32."""

import pytest
import torch

from edgequant.quantize.search import Trial, keep_fp32, summary

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def measured(costs: dict[str, float], base: float = 1.0, sqnr: dict[str, float] | None = None):
    """A stand-in measurement: each quantized layer adds its cost to `base`, FP32 layers add nothing."""
    calls = []

    def measure(kept: tuple[str, ...]) -> Trial:
        calls.append(kept)
        drop = base + sum(c for layer, c in costs.items() if layer not in kept)
        return Trial(kept, drop, (sqnr or {}).get(kept[0], 30.0) if len(kept) == 1 else 30.0)

    return measure, calls


def test_within_budget_keeps_nothing_and_tries_once():
    measure, calls = measured({"conv1": 0.0, "conv2": 0.0}, base=0.05)
    kept, trials = keep_fp32(LAYERS, measure, 0.1)
    assert kept == () and calls == [()] and trials[0].drop_pp == 0.05


def test_keeps_the_most_sensitive_layers_first_until_the_budget_holds():
    measure, _ = measured({"conv1": 0.1, "conv2": 0.5, "fc1": 0.3, "fc2": 0.0}, base=0.0)
    kept, trials = keep_fp32(LAYERS, measure, 0.15)
    assert kept == ("conv2", "fc1")  # 0.9 -> 0.4 with conv2 -> 0.1 with fc1 too
    record = summary(kept, trials, 0.15)
    assert record["fp32_layers"] == ["conv2", "fc1"] and record["validation_drop_pp"] == pytest.approx(0.1)
    assert [t["fp32_layers"] for t in record["tried"]] == [[], ["conv1"], ["conv2"], ["fc1"], ["fc2"], ["conv2", "fc1"]]


def test_equal_drops_are_ranked_by_logit_sqnr():
    measure, _ = measured({"conv1": 0.2, "conv2": 0.2}, base=0.0, sqnr={"conv1": 35.0, "conv2": 25.0})
    # keeping either alone leaves 0.2 pp; keeping conv2 leaves the logits further from FP32 (25 < 35 dB),
    # i.e. conv1's quantization is the one that costs more, so conv1 goes first
    kept, _ = keep_fp32(LAYERS, measure, 0.2)
    assert kept == ("conv1",)


def test_an_unreachable_budget_says_what_was_tried_and_the_best_reached():
    measure, calls = measured(
        {"conv1": 0.1, "conv2": 0.1, "fc1": 0.1, "fc2": 0.1}, base=0.5
    )  # 0.5 pp lost whatever stays FP32: 0.7 at best
    with pytest.raises(
        ValueError,
        match=r"up to 2 of 4 layers .* within 0.1 pp: tried 6 configurations \(all INT8: 0.90 pp\); best 0.70 pp with conv1, conv2 in FP32",
    ):
        keep_fp32(LAYERS, measure, 0.1)
    assert max(len(kept) for kept in calls) == 2  # never more than half the layers in FP32


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
