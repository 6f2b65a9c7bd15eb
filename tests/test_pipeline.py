"""End to end: the real dvc.yaml on tiny generated data in a temp git repo — run, no-op re-run, partial re-run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

TINY = {
    "prepare": {"calib_size": 32, "calib_seed": 0},
    "train": {
        "seed": 0,
        "epochs": 1,
        "batch_size": 32,
        "test_batch_size": 64,
        "optimizer": "adadelta",
        "lr": 1.0,
        "gamma": 0.7,
        "dropout_conv": 0.25,
        "dropout_fc": 0.5,
        "threads": 1,
    },
    "quantize": {"methods": ["fp32", "dynamic_int8", "onnx_fp32", "onnx_qdq_int8"]},
    "benchmark": {
        "threads": [1],
        "latency_batch": 1,
        "throughput_batch": 16,
        "warmup_runs": 1,
        "latency_runs": 5,
        "min_run_time_s": 0.02,
        "peak_gemm_size": 64,
    },
}


def sh(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


@pytest.fixture
def repo(tmp_path, tiny_mirror, subprocess_env):
    mirror, checksums = tiny_mirror
    work = tmp_path / "repo"
    work.mkdir()
    for item in ("dvc.yaml", "stages", "edgequant"):
        src = ROOT / item
        (shutil.copytree(src, work / item, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, work / item))
    (work / "params.yaml").write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = dict(subprocess_env, MNIST_MIRROR=str(mirror), MNIST_CHECKSUMS=str(checksums))
    env.pop("PYTHONPATH")  # the copy in the temp repo is what the stages must import
    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh(["dvc", "init", "-q"], work, env)
    sh(["dvc", "config", "core.analytics", "false"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "tiny"], work, env)
    return work, env, mirror


@pytest.mark.slow
def test_repro_noop_and_partial_rerun(repo):
    work, env, mirror = repo
    out = sh(["dvc", "repro"], work, env)
    assert {"download", "prepare", "train", "benchmark", "plot"} <= stages_run(out)
    assert {f"quantize@{m}" for m in TINY["quantize"]["methods"]} <= stages_run(out)

    metrics = json.loads((work / "metrics/benchmark.json").read_text())
    assert set(metrics["methods"]) == set(TINY["quantize"]["methods"])
    q = metrics["methods"]["onnx_qdq_int8"]
    assert q["size_ratio_vs_runtime_fp32"] < 0.3 and 0 <= q["accuracy_pct"] <= 100
    assert q["threads_1"]["latency_ms_p50"] > 0 and metrics["machine"]["torch"].startswith("2.13")
    for png in ("training", "tradeoffs", "speedups", "layers"):
        assert (work / f"plots/{png}.png").stat().st_size > 10_000
    train = json.loads((work / "metrics/train.json").read_text())
    assert len(train["train_loss_per_epoch"]) == 1

    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "run"], work, env)

    # An immediate re-run does nothing.
    again = sh(["dvc", "repro"], work, env)
    assert stages_run(again) == set(), again
    assert "up to date" in sh(["dvc", "status"], work, env)

    # Another mirror serving the same verified bytes: download re-runs, nothing downstream is stale.
    sh(["dvc", "repro", "-f", "download"], work, dict(env, MNIST_MIRROR=mirror.as_uri()))
    assert "up to date" in sh(["dvc", "status"], work, env)

    # One benchmark param: only benchmark and plot re-run.
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["benchmark"]["latency_runs"] = 6
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    partial = sh(["dvc", "repro"], work, env)
    assert stages_run(partial) == {"benchmark", "plot"}, partial

    diff = sh(["dvc", "params", "diff", "--md"], work, env)
    assert "benchmark.latency_runs" in diff and "| 5 " in diff and "| 6 " in diff
    assert "methods.fp32.threads_1.latency_ms_p50" in sh(["dvc", "metrics", "diff", "--md"], work, env)
