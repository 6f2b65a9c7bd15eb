"""The quality gate on hand-made metrics: each limit can fail, and the report says which and by how much."""

import pytest

from edgequant.gate import check, report
from edgequant.params import GateParams


def metrics(drop=0.0, ratio=0.25, speedups=(3.0, 2.5)) -> dict:
    threads = {f"threads_{t}": {"throughput_speedup_vs_runtime_fp32": s} for t, s in zip((1, 2), speedups, strict=True)}
    return {"methods": {"onnx_qdq_int8": {"accuracy_drop_pp": drop, "size_ratio_vs_runtime_fp32": ratio, **threads}}}


GATE = GateParams(methods=["onnx_qdq_int8"], max_accuracy_drop_pp=0.1, min_speedup=2.0, max_size_ratio=0.27)


def test_passing_method_passes_every_check():
    checks = check(metrics(), GATE)
    assert len(checks) == 4 and all(c.passed for c in checks)
    assert report(checks) == {"passed": True, "failures": 0, "checks": report(checks)["checks"]}


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
    assert report(checks)["passed"] is False


def test_gating_a_method_that_was_not_benchmarked_is_an_error():
    gate = GateParams(methods=["executorch_xnnpack_int8"], max_accuracy_drop_pp=0.1, min_speedup=2.0, max_size_ratio=0.27)
    with pytest.raises(ValueError, match=r"gate.methods \['executorch_xnnpack_int8'\] were not benchmarked"):
        check(metrics(), gate)
