"""Saving a run on other params as a workload folder, and the README table made from it."""

import json

import pytest
import yaml

from edgequant.readme import workload_table
from edgequant.workloads import save

from .conftest import ROOT


def fake_run(work, methods):
    (work / "metrics").mkdir(parents=True)
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (work / "metrics/train.json").write_text("{}")
    (work / "metrics/benchmark.json").write_text(json.dumps({"model": "cnn", "methods": {m: {} for m in methods}}))
    for m in methods:
        (work / "models/quantized" / m).mkdir(parents=True)
        (work / "models/quantized" / m / "meta.json").write_text(
            json.dumps({"settings": {"fp32_layers": ["conv1"]} if m != "fp32" else None})
        )


def test_save_copies_the_run_and_each_methods_settings(tmp_path):
    fake_run(tmp_path / "ws", ["fp32", "onnx_qdq_int8_per_tensor_aware"])
    files = save(tmp_path / "ws", tmp_path / "out")
    assert files == ["benchmark.json", "params.yaml", "settings.json", "train.json"]
    assert json.loads((tmp_path / "out/settings.json").read_text()) == {
        "fp32": None,
        "onnx_qdq_int8_per_tensor_aware": {"fp32_layers": ["conv1"]},
    }


def test_save_refuses_metrics_of_another_model_than_the_params_name(tmp_path):
    fake_run(tmp_path / "ws", ["fp32"])
    params = yaml.safe_load((tmp_path / "ws/params.yaml").read_text())
    (tmp_path / "ws/params.yaml").write_text(yaml.safe_dump({**params, "train": {**params["train"], "model": "dwsep_cnn"}}))
    with pytest.raises(ValueError, match="benchmark.json is of model 'cnn', params.yaml says 'dwsep_cnn'"):
        save(tmp_path / "ws", tmp_path / "out")


def test_save_refuses_a_workspace_without_a_benchmark(tmp_path):
    (tmp_path / "ws").mkdir()
    with pytest.raises(ValueError, match="has no params.yaml, metrics/benchmark.json, metrics/train.json: run `dvc repro benchmark`"):
        save(tmp_path / "ws", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_significant_drop_is_bold_and_kept_layers_are_listed():
    def row(acc, drop, lost, gained, p):
        return {
            "precision": "int8",
            "accuracy_pct": acc,
            "accuracy_drop_pp": drop,
            "flips_lost": lost,
            "flips_gained": gained,
            "mcnemar_p": p,
            "size_ratio_vs_runtime_fp32": 0.3,
            "threads_1": {"throughput_speedup_vs_runtime_fp32": 2.0},
        }

    metrics = {
        "machine": {"name": "test-cpu"},
        "peak": {"threads_1": {}},
        "methods": {
            "fp32": {"precision": "fp32", "accuracy_pct": 90.0, "threads_1": {}},
            "noisy": row(89.9, 0.1, 40, 30, 0.28),
            "worse": row(89.6, 0.4, 60, 20, 0.00001),
        },
    }
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    table = workload_table("w", metrics, params, {"worse": {"fp32_layers": ["conv1", "blocks.0.0"], "validation_drop_pp": 0.05}})
    lines = table.splitlines()
    assert lines[2].startswith("| `fp32` | 90.00 |")
    assert "| `noisy` | 89.90 | +0.10 | 40 / 30 | 0.28 |" in table  # within noise: not bold
    assert "| `worse` | 89.60 | **+0.40** | 60 / 20 | 1e-05 |" in table and "`conv1`, `blocks.0.0` (+0.05 pp)" in table
