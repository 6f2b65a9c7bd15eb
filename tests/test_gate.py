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
