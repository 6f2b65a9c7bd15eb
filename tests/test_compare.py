"""The comparison report's pieces that see every pipeline: the reference's and each workload's."""

import shutil
import subprocess
from pathlib import Path

import pytest

from edgequant.report.compare import check_out, flatten, headline_rows, main, plot_order

from .conftest import ROOT


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
    with pytest.raises(ValueError, match="overlaps the pipeline.s input or output workloads/w/plots/training.png"):
        check_out(Path("workloads/w/plots"))


@pytest.mark.parametrize(("a", "b", "role"), [("", "HEAD", "A"), ("  ", "HEAD", "A"), ("main", "", "B"), ("-x", "main", "A")])
def test_an_empty_or_option_like_revision_is_refused_in_one_line(tmp_path, monkeypatch, capsys, a, b, role):
    monkeypatch.chdir(tmp_path)
    assert main(["--out", "reports/x", "--", a, b]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"compare: {role} (") and f"is {(a if role == 'A' else b)!r}" in err and err.count("\n") == 1, err
    assert not (tmp_path / "reports").exists()


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_compare_refuses_an_empty_revision():
    proc = subprocess.run(["make", "-o", "setup", "compare", "A="], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "compare: A (the base revision) is ''" in proc.stderr, proc.stderr


@pytest.mark.parametrize("recorded_in", ["dvc.yaml", "dvc.lock"])
def test_the_report_refuses_to_write_into_a_pipeline_input(tmp_path, monkeypatch, recorded_in):
    """machines/ is the fleet stage's input: a report written there would become a machine of the fleet."""
    monkeypatch.chdir(tmp_path)
    deps = "    deps:\n    - path: machines\n" if recorded_in == "dvc.lock" else "    deps:\n    - machines\n"
    (tmp_path / recorded_in).write_text(f"stages:\n  fleet:\n{deps}")
    with pytest.raises(ValueError, match="overlaps the pipeline's input or output machines;"):
        check_out(Path("machines/x"))
    check_out(Path("reports/x"))  # beside them: fine
