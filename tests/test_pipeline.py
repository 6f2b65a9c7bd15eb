"""End to end: the real dvc.yaml on tiny generated data in a temp git repo — run, no-op re-run, partial re-runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from .conftest import TINY, is_up_to_date, set_params, sh, stages_run


@pytest.mark.slow
def test_first_run_runs_every_stage_and_writes_real_results(tiny_origin):
    work = tiny_origin.work
    assert {"validate", "download", "prepare", "train", "benchmark", "loadgen", "vendor", "gate", "plot"} <= stages_run(
        tiny_origin.first_run
    )
    assert {f"quantize@{m}" for m in TINY["quantize"]["methods"]} <= stages_run(tiny_origin.first_run)
    metrics = json.loads((work / "metrics/benchmark.json").read_text())
    assert set(metrics["methods"]) == set(TINY["quantize"]["methods"])
    q = metrics["methods"]["onnx_qdq_int8"]
    assert q["size_ratio_vs_runtime_fp32"] < 0.3 and 0 <= q["accuracy_pct"] <= 100
    assert q["threads_1"]["latency_ms_p50"] > 0 and metrics["machine"]["versions"]["torch"].startswith("2.13")
    quantize = json.loads((work / "metrics/quantize/onnx_qdq_int8.json").read_text())
    assert 0 < q["threads_1"]["peak_rss_mib"] < 2048 and 0 < quantize["peak_rss_mib"] < 2048 and quantize["export_time_s"] > 0
    # The accuracy-aware method got the validation split and the gate's budget (100 pp here: nothing kept FP32).
    aware = json.loads((work / "models/quantized/onnx_qdq_int8_per_tensor_aware/meta.json").read_text())["settings"]
    assert aware["budget_pp"] == TINY["gate"]["max_accuracy_drop_pp"] and aware["fp32_layers"] == [] and len(aware["tried"]) == 1
    # The size is that of the shipped file, measured by the benchmark.
    assert q["size_bytes"] == (work / "models/quantized/onnx_qdq_int8/model.onnx").stat().st_size
    for png in ("training", "tradeoffs", "speedups", "layers", "ops"):
        assert (work / f"plots/{png}.png").stat().st_size > 10_000
    ops = pd.read_csv(work / "plots/ops.csv")
    assert set(ops["method"]) == set(TINY["quantize"]["methods"]) and (ops["ms_per_batch"] >= 0).all()
    assert ops.groupby("method")["share_pct"].sum().round().eq(100).all()
    train = json.loads((work / "metrics/train.json").read_text())
    assert len(train["train_loss_per_epoch"]) == 1 and 0 < train["peak_rss_mib"] < 2048
    assert json.loads((work / "metrics/gate.json").read_text())["passed"] is True
    loadgen = json.loads((work / "metrics/loadgen.json").read_text())
    assert set(loadgen["methods"]) == set(TINY["quantize"]["methods"]) and loadgen["skipped"] == {}
    for m, scenarios in loadgen["methods"].items():
        assert scenarios["SingleStream"]["latency_ms_p90"] > 0 and scenarios["Offline"]["samples_per_s"] > 0, m
        assert (work / f"plots/loadgen/{m}/Offline/mlperf_log_summary.txt").is_file()


@pytest.mark.slow
def test_new_calibration_size_reruns_quantize_but_not_train(tiny_origin):
    # prepare writes three files, so only calib.pt changes and train's inputs stay the same.
    expected = {"validate", "prepare", "benchmark", "loadgen", "gate", "npu", "bundle", "fleet", "plot", "vendor"}
    expected |= {f"quantize@{m}" for m in TINY["quantize"]["methods"]}
    assert stages_run(tiny_origin.branch_run) == expected, tiny_origin.branch_run


@pytest.mark.slow
def test_noop_mirror_switch_and_one_param_reruns_only_its_stages(clone, tiny_origin):
    work, env = clone
    again = sh(["dvc", "repro"], work, env)
    assert stages_run(again) == set(), again
    assert is_up_to_date(work, env)

    # Another mirror serving the same verified bytes: download re-runs, nothing downstream is stale.
    sh(["dvc", "repro", "-f", "download"], work, dict(env, MNIST_MIRROR=tiny_origin.mirror.as_uri()))
    assert is_up_to_date(work, env)

    # One benchmark param: only benchmark and what reads its metrics re-run, and the vendor stage, whose runtime clocks
    # make repeats x latency_runs calls.
    set_params(work, "benchmark", latency_runs=6)
    partial = sh(["dvc", "repro"], work, env)
    assert stages_run(partial) == {"validate", "benchmark", "vendor", "gate", "fleet", "plot"}, partial

    diff = sh(["dvc", "params", "diff", "--md"], work, env)
    assert "benchmark.latency_runs" in diff and "| 5 " in diff and "| 6 " in diff
    assert "methods.fp32.threads_1.latency_ms_p50" in sh(["dvc", "metrics", "diff", "--md"], work, env)
