"""The quality gate on hand-made metrics: each limit can fail, a missing value fails, and the report says which."""

import json

import pytest
import yaml

from edgequant.gate import check, report
from edgequant.params import GateParams


def metrics(drop=0.0, ratio=0.25, speedups=(3.0, 2.5)) -> dict:
    threads = {f"threads_{t}": {"throughput_speedup_vs_runtime_fp32": s} for t, s in zip((1, 2), speedups, strict=True)}
    return {
        "peak": {"threads_1": {}, "threads_2": {}},
        "methods": {"onnx_qdq_int8": {"accuracy_drop_pp": drop, "size_ratio_vs_runtime_fp32": ratio, **threads}},
    }


GATE = GateParams(methods=["onnx_qdq_int8"], max_accuracy_drop_pp=0.1, min_speedup=2.0, max_size_ratio=0.27, enforce=True)


def test_passing_method_passes_every_check():
    checks = check(metrics(), GATE)
    assert [c.describe() for c in checks] == [
        "ok: onnx_qdq_int8: accuracy drop vs fp32 (pp) 0, limit <= 0.1 (gate.max_accuracy_drop_pp)",
        "ok: onnx_qdq_int8: size vs own-runtime fp32 0.25, limit <= 0.27 (gate.max_size_ratio)",
        "ok: onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 1 thread(s) 3, limit >= 2 (gate.min_speedup)",
        "ok: onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 2 thread(s) 2.5, limit >= 2 (gate.min_speedup)",
    ]
    verdict = report(checks)
    assert verdict["passed"] is True and verdict["failures"] == 0 and len(verdict["checks"]) == 4
    assert all(c["passed"] for c in verdict["checks"]) and verdict["checks"][2]["measured"] == 3.0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"drop": 0.2}, "FAIL: onnx_qdq_int8: accuracy drop vs fp32 (pp) 0.2, limit <= 0.1 (gate.max_accuracy_drop_pp)"),
        ({"ratio": 0.3}, "FAIL: onnx_qdq_int8: size vs own-runtime fp32 0.3, limit <= 0.27 (gate.max_size_ratio)"),
        ({"speedups": (3.0, 1.5)}, "FAIL: onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 2 thread(s) 1.5, limit >= 2"),
    ],
)
def test_each_limit_can_fail_with_a_message_naming_method_value_and_limit(kwargs, expected):
    checks = check(metrics(**kwargs), GATE)
    failed = [c.describe() for c in checks if not c.passed]
    assert len(failed) == 1 and failed[0].startswith(expected)
    assert report(checks)["passed"] is False and report(checks)["failures"] == 1


def test_a_missing_value_is_a_failed_check_never_a_skipped_one():
    m = metrics()
    del m["methods"]["onnx_qdq_int8"]["threads_2"]
    m["methods"]["onnx_qdq_int8"]["size_ratio_vs_runtime_fp32"] = None  # its baseline was not measured
    failed = [c.describe() for c in check(m, GATE) if not c.passed]
    assert failed == [
        "FAIL: onnx_qdq_int8: size vs own-runtime fp32 missing from the benchmark's metrics, limit <= 0.27 (gate.max_size_ratio)",
        "FAIL: onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 2 thread(s) missing from the benchmark's metrics, limit >= 2"
        " (gate.min_speedup)",
    ]


def test_gating_a_method_that_was_not_benchmarked_fails_all_its_checks():
    gate = GateParams(methods=["executorch_xnnpack_int8"], max_accuracy_drop_pp=0.1, min_speedup=2.0, max_size_ratio=0.27, enforce=True)
    checks = check(metrics(), gate)
    assert len(checks) == 4 and not any(c.passed for c in checks)
    assert report(checks)["failures"] == 4


def test_the_accuracy_check_says_whether_a_drop_is_noise():
    m = metrics(drop=0.05)
    m["methods"]["onnx_qdq_int8"].update(flips_lost=8, flips_gained=3, mcnemar_p=0.227)
    described = check(m, GATE)[0].describe()
    assert described.endswith("[8 images lost, 3 gained vs fp32; McNemar p=0.23: within noise]") and described.startswith("ok:")
    m["methods"]["onnx_qdq_int8"].update(flips_lost=30, flips_gained=2, mcnemar_p=1e-7)
    assert check(m, GATE)[0].describe().endswith("McNemar p=1e-07: significant]")


def searched(budget_met: bool, high: float) -> dict:
    """What the benchmark copies into an accuracy-aware method's metrics from its search (edgequant.quantize.search.search_metrics)."""
    return {
        "budget_met": budget_met,
        "budget_held_to": "validation_drop_pp_ci95_high",
        "validation_drop_pp": 0.05,
        "validation_drop_pp_ci95_low": -0.04,
        "validation_drop_pp_ci95_high": high,
        "validation_images": 10000,
        "configurations_tried": 18,
        "fp32_layers_kept": 3,
    }


def test_a_search_that_missed_its_budget_fails_the_gate_and_says_why():
    m = metrics(drop=0.05)
    m["methods"]["onnx_qdq_int8"].update(searched(False, 0.13))
    failed = [c.describe() for c in check(m, GATE) if not c.passed]
    assert failed == [
        "FAIL: onnx_qdq_int8: accuracy-aware search: validation_drop_pp_ci95_high on the validation images 0.13, limit <= 0.1"
        " (gate.max_accuracy_drop_pp) [search budget NOT met: validation drop +0.05 [-0.04, +0.13] pp on 10000 images,"
        " 3 layer(s) FP32 after 18 configurations]"
    ]
    m["methods"]["onnx_qdq_int8"].update(searched(True, 0.09))
    assert report(check(m, GATE))["passed"] is True


def test_a_search_record_without_its_bound_fails_rather_than_passes():
    m = metrics()
    m["methods"]["onnx_qdq_int8"].update(searched(True, 0.09))
    del m["methods"]["onnx_qdq_int8"]["validation_drop_pp_ci95_high"]
    failed = [c.describe() for c in check(m, GATE) if not c.passed]
    assert len(failed) == 1 and "missing from the benchmark's metrics" in failed[0] and "record is incomplete" in failed[0]


@pytest.mark.parametrize(("enforce", "code"), [(True, 1), (False, 0)])
def test_a_missed_budget_fails_the_gate_stage_only_where_it_is_enforced(enforce, code, tmp_path, capsys):
    from stages import gate as gate_stage

    m = metrics()
    m["methods"]["onnx_qdq_int8"].update(searched(False, 0.13))
    (tmp_path / "benchmark.json").write_text(json.dumps(m))
    limits = {"methods": ["onnx_qdq_int8"], "max_accuracy_drop_pp": 0.1, "min_speedup": 2.0, "max_size_ratio": 0.27, "enforce": enforce}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"gate": limits}))
    out = tmp_path / "gate.json"
    args = ["--metrics", str(tmp_path / "benchmark.json"), "--out", str(out), "--params", str(tmp_path / "params.yaml")]
    assert gate_stage.main(args) == code
    verdict = json.loads(out.read_text())  # written either way: the verdict is the evidence
    assert verdict["passed"] is False and verdict["failures"] == 1
    printed = capsys.readouterr()
    assert "FAIL: onnx_qdq_int8: accuracy-aware search" in printed.err
    assert ("recorded, not enforced" in printed.out) is not enforce


def two_candidates(slow_speedups: tuple[float, float]) -> dict:
    """onnx_qdq_int8 passes everything; litert_int8 is as accurate and small, at the given speed-ups."""
    m = metrics()
    slow = {f"threads_{t}": {"throughput_speedup_vs_runtime_fp32": s} for t, s in zip((1, 2), slow_speedups, strict=True)}
    m["methods"]["litert_int8"] = {"accuracy_drop_pp": 0.0, "size_ratio_vs_runtime_fp32": 0.25, **slow}
    return m


@pytest.mark.parametrize(("require", "passed"), [("all", False), ("any", True)])
def test_a_candidate_slower_than_its_fp32_fails_only_an_all_gate(require, passed):
    """LiteRT INT8 at 0.88x its FP32, as on an AVX2 CPU without VNNI: a release that ships any passing candidate
    still passes, and the verdict names what passes here."""
    gate = GateParams(["onnx_qdq_int8", "litert_int8"], 0.1, 2.0, 0.27, True, require)
    verdict = report(check(two_candidates((0.88, 0.76)), gate), gate.require)
    assert verdict["passed"] is passed and verdict["failures"] == 2
    assert verdict["shippable"] == ["onnx_qdq_int8"] and verdict["require"] == require


def test_an_any_gate_fails_when_no_candidate_passes_every_check():
    gate = GateParams(["onnx_qdq_int8", "litert_int8"], 0.1, 2.0, 0.27, True, "any")
    m = two_candidates((0.88, 0.76))
    m["methods"]["onnx_qdq_int8"]["size_ratio_vs_runtime_fp32"] = 0.3  # each misses one limit: nothing to ship
    verdict = report(check(m, gate), gate.require)
    assert verdict["passed"] is False and verdict["shippable"] == []


def test_an_unknown_require_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match=r"gate.require must be one of all, any, got 'most'"):
        GateParams(["onnx_qdq_int8"], 0.1, 2.0, 0.27, True, "most")


def with_interval(low: float, high: float, point: float = 2.5) -> dict:
    """The speed-up at 1 thread as the benchmark writes it after its repeats: the median and its 95 % interval."""
    m = metrics(speedups=(point, 3.0))
    m["methods"]["onnx_qdq_int8"]["threads_1"].update(
        throughput_speedup_vs_runtime_fp32_ci95_low=low, throughput_speedup_vs_runtime_fp32_ci95_high=high
    )
    return m


def test_a_speedup_interval_above_the_limit_passes_below_fails_and_straddling_is_decided_by_its_median():
    """Against a limit of 2: an interval above it passes, one below fails; one that straddles it is within noise and
    its median decides (2.5 passes, 1.6 fails), saying so. The interval's high end alone would pass the 1.6."""
    above, straddling = check(with_interval(2.1, 2.9), GATE)[2], check(with_interval(1.8, 2.9), GATE)[2]
    assert above.passed and not above.within_noise
    assert straddling.passed and straddling.within_noise
    assert straddling.describe() == (
        "ok (within noise: the median decides): onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 1 thread(s) 2.5"
        " (95 % interval 1.8–2.9), the interval straddles 2 (gate.min_speedup)"
    )
    short = check(with_interval(1.2, 2.4, point=1.6), GATE)[2]
    assert not short.passed and short.within_noise and short.describe().startswith("FAIL (within noise: the median decides)")
    below = check(with_interval(1.5, 1.9, point=1.7), GATE)[2]
    assert not below.passed and not below.within_noise and "the interval lies below 2" in below.describe()
    recorded = report([straddling])["checks"][0]
    assert (recorded["measured"], recorded["ci95_low"], recorded["ci95_high"], recorded["within_noise"]) == (2.5, 1.8, 2.9, True)


def test_a_record_without_an_interval_is_judged_on_its_value_and_half_an_interval_fails():
    assert check(metrics(speedups=(2.5, 3.0)), GATE)[2].passed  # a single run, or metrics from before the repeats
    m = with_interval(2.1, 2.9)
    del m["methods"]["onnx_qdq_int8"]["threads_1"]["throughput_speedup_vs_runtime_fp32_ci95_high"]
    half = check(m, GATE)[2]
    assert not half.passed and "its 95 % interval lacks its high end; re-run the benchmark" in half.describe()
