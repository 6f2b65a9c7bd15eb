"""The fleet view: each machine ranked on its own measurements, the shipping rule applied as stated, old records read."""

from __future__ import annotations

import json

import pytest

from edgequant import fleet
from edgequant.params import GateParams

GATE = GateParams(
    methods=["onnx_qdq_int8", "executorch_xnnpack_int8"], max_accuracy_drop_pp=0.1, min_speedup=1.3, max_size_ratio=0.27, enforce=True
)


def method(precision, ips, p50, own=2.0, drop=0.0, fraction=0.5):
    per_thread = {
        "throughput_ips": ips,
        "latency_ms_p50": p50,
        "throughput_speedup_vs_fp32_eager": ips / 1000,
        "throughput_speedup_vs_runtime_fp32": own,
        "peak_fraction": fraction,
    }
    return {"precision": precision, "accuracy_drop_pp": drop, "size_ratio_vs_runtime_fp32": 0.25, "threads_1": per_thread}


def metrics(name, xnnpack_ips, ort_ips, ort_own=2.0, engine=True):
    peak = {"int8_gmacs": 100.0, "fp32_gmacs": 50.0, **({"int8_engine": "onnxruntime MatMulInteger"} if engine else {})}
    machine = {"name": name, "isa": {"int8_dot": "avx2 vpmaddubsw (int16 pairs saturate)"}}
    return {
        "machine": machine,
        "peak": {"threads_1": peak},
        "methods": {
            "fp32": method("fp32", 1000, 0.5, own=1.0),
            "executorch_xnnpack_int8": method("int8", xnnpack_ips, 0.10),
            "onnx_qdq_int8": method("int8", ort_ips, 0.12, own=ort_own),
        },
    }


def entry(m):
    return {"name": m["machine"]["name"], "metrics": m, "source": "x"}


def test_each_machine_is_ranked_on_its_own_numbers():
    vnni, avx2 = fleet.summarize(entry(metrics("vnni", 13000, 11000)), GATE), fleet.summarize(entry(metrics("avx2", 3200, 5400)), GATE)
    assert (vnni["fastest_int8"], avx2["fastest_int8"]) == ("executorch_xnnpack_int8", "onnx_qdq_int8")
    assert avx2["speedup_vs_fp32_eager"] == pytest.approx(5.4) and avx2["peak_fraction"] == 0.5
    assert vnni["ship_throughput"] == "executorch_xnnpack_int8" and vnni["lowest_latency_int8"] == "executorch_xnnpack_int8"


def test_the_shipping_rule_skips_a_candidate_that_fails_the_gate():
    row = fleet.summarize(entry(metrics("avx2", 3200, 5400, ort_own=1.1)), GATE)  # ORT fastest, but 1.1x its own FP32 < 1.3
    assert row["fastest_int8"] == "onnx_qdq_int8" and row["ship_throughput"] == "executorch_xnnpack_int8"


def test_a_record_from_before_the_probe_is_named_and_its_single_engine_peak_not_shown():
    old = metrics("ignored", 3200, 5400, engine=False)
    old["machine"] = {"cpu": "AMD EPYC", "arch": "x86_64", "flag_avx2": True, "flag_avx512_vnni": False}
    row = fleet.summarize({"name": fleet.machine_name(old["machine"]), "metrics": old, "source": "x"}, GATE)
    assert row["machine"] == "amd-epyc-avx2" and row["int8_dot"] == "avx2 vpmaddubsw (int16 pairs saturate)"
    assert row["peak_fraction"] is None and "n/a¹" in fleet.markdown([row])


def test_markdown_states_the_rule_and_one_row_per_machine():
    rows = [fleet.summarize(entry(metrics(n, a, b)), GATE) for n, a, b in (("vnni", 13000, 11000), ("avx2", 3200, 5400))]
    text = fleet.markdown(rows)
    assert text.count("\n| `") == 2 and fleet.SHIP_RULE in text
    assert "| `avx2` | avx2 vpmaddubsw (int16 pairs saturate) | `onnx_qdq_int8` | 5.4× |" in text


def test_save_puts_a_run_under_its_machine_name(tmp_path):
    (tmp_path / "machine.json").write_text(json.dumps({"name": "amd-epyc-avx2"}))
    (tmp_path / "benchmark.json").write_text(json.dumps(metrics("amd-epyc-avx2", 1, 2)))
    folder = fleet.save([tmp_path / "benchmark.json"], tmp_path / "machine.json", tmp_path / "machines")
    assert folder.name == "amd-epyc-avx2" and fleet.load(folder)["name"] == "amd-epyc-avx2"


def test_a_folder_that_is_not_a_benchmark_record_is_named(tmp_path):
    (tmp_path / "benchmark.json").write_text("{}")
    with pytest.raises(ValueError, match=r"benchmark.json: not an edgequant benchmark record"):
        fleet.load(tmp_path)
