"""The quality gate on hand-made metrics: each limit can fail, a missing value fails, and the report says which."""

import pytest

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
