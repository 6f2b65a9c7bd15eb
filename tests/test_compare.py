"""The comparison report's pieces that see every pipeline: the reference's and each workload's."""

from pathlib import Path

import pytest

from edgequant.compare import check_out, flatten, headline_rows, plot_order


def test_a_workloads_headline_rows_say_which_workload_they_are_of():
    metrics = {
        "metrics/benchmark.json: methods.onnx_qdq_int8.accuracy_pct": {"old": 98.9, "new": 98.8},
        "workloads/fashion_mnist-dwsep_cnn/metrics/benchmark.json: methods.onnx_qdq_int8.accuracy_pct": {"old": 86.0, "new": 85.7},
    }
    labels = sorted(row[0] for row in headline_rows(metrics))
    assert labels == ["`onnx_qdq_int8`", "`onnx_qdq_int8` (fashion_mnist-dwsep_cnn)"]
    only_workload = flatten({"workloads/w/metrics/benchmark.json": {"methods.fp32.accuracy_pct": {"old": 86.0, "new": 86.1}}})
    assert [row[0] for row in headline_rows(only_workload)] == ["`fp32` (w)"]  # even when no other file changed


def test_each_chart_shows_its_two_revisions_together_and_workloads_apart():
    names = [
        "main_plots_accuracy.png",
        "main_workloads_w_plots_accuracy.png",
        "exp_plots_accuracy.png",
        "exp_workloads_w_plots_accuracy.png",
    ]
    ordered = sorted(names, key=lambda p: plot_order(p, "main", "exp"))
    assert ordered == [
        "main_plots_accuracy.png",
        "exp_plots_accuracy.png",
        "main_workloads_w_plots_accuracy.png",
        "exp_workloads_w_plots_accuracy.png",
    ]


def test_the_report_refuses_to_replace_a_workloads_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "workloads/w").mkdir(parents=True)
    (tmp_path / "workloads/w/dvc.lock").write_text("stages:\n  plot:\n    outs:\n    - path: workloads/w/plots/training.png\n")
    with pytest.raises(ValueError, match="overlaps the pipeline output workloads/w/plots/training.png"):
        check_out(Path("workloads/w/plots"))
