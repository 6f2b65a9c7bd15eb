"""Faults met through `dvc repro` itself, on the tiny repo: DVC deletes a stage's outputs before running it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .conftest import TINY, fingerprint, is_up_to_date, members_left, set_params, sh, stages_run

pytestmark = pytest.mark.slow


def repro_fails(work: Path, env: dict, *args: str) -> str:
    proc = subprocess.run(["dvc", "repro", *args], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_a_path_like_method_name_deletes_nothing(clone):
    work, env = clone
    (work / "victim").mkdir()
    (work / "victim" / "keep.txt").write_text("tracked by git")
    sh(["git", "add", "victim"], work, env)
    sh(["git", "commit", "-qm", "a folder a method name must not reach"], work, env)
    before = fingerprint(work)
    set_params(work, "quantize", methods=[*TINY["quantize"]["methods"], "../../victim"])
    out = repro_fails(work, env)
    assert "'../../victim' is not a method name" in out and stages_run(out) == {"validate"}, out
    assert (work / "victim" / "keep.txt").read_text() == "tracked by git"
    assert fingerprint(work) == before


# A refused value for each stage, in a section that stage reads: `dvc repro -s <stage>` runs it without the
# validate stage, so the stage's own check is all that stands between the value and its outputs.
SINGLE_STAGE_REFUSALS = [
    ("validate", "train", {"epochs": 0}, "train.epochs must be > 0"),
    ("download", "download", {"dataset": "kmnist"}, "download.dataset 'kmnist' is not known"),
    ("prepare", "prepare", {"calib_seed": -1}, "prepare.calib_seed must be >= 0"),
    ("train", "train", {"seed": 2**70}, "train.seed: expected an integer in"),
    ("quantize", "quantize", {"methods": [*TINY["quantize"]["methods"], "../../victim"]}, "'../../victim' is not a method name"),
    ("benchmark", "benchmark", {"threads": [0]}, "benchmark.threads must all be in [1, 1024]"),
    ("gate", "gate", {"max_size_ratio": 2.0}, "gate.max_size_ratio must be in (0, 1]"),
    ("npu", "benchmark", {"latency_batch": 0}, "benchmark.latency_batch must be > 0"),
    ("bundle", "benchmark", {"throughput_batch": -1}, "benchmark.throughput_batch must be > 0"),
    ("fleet", "gate", {"min_speedup": 0}, "gate.min_speedup must be > 0"),
    ("plot", "download", {"dataset": "kmnist"}, "download.dataset 'kmnist' is not known"),
]


def tracked(work: Path, env: dict) -> dict[str, str]:
    """md5 of every file git tracks (the committed metrics and plots among them), params.yaml aside."""
    files = sh(["git", "ls-files"], work, env).split()
    return {f: hashlib.md5((work / f).read_bytes()).hexdigest() for f in files if f != "params.yaml" and (work / f).is_file()}


def test_dvc_repro_single_stage_with_a_refused_param_loses_nothing(clone):
    work, env = clone
    (work / "victim").mkdir()
    (work / "victim" / "keep.txt").write_text("tracked by git")
    sh(["git", "add", "victim"], work, env)
    sh(["git", "commit", "-qm", "a folder a method name must not reach"], work, env)
    before, committed, original = fingerprint(work), tracked(work, env), (work / "params.yaml").read_text()
    for stage, section, values, message in SINGLE_STAGE_REFUSALS:
        set_params(work, section, **values)
        out = repro_fails(work, env, "-s", stage)
        assert message in out, f"{stage}: {out}"
        assert fingerprint(work) == before, stage  # data, splits, models and the git-kept metrics all stay
        assert tracked(work, env) == committed, stage
        (work / "params.yaml").write_text(original)
    assert is_up_to_date(work, env)
    proc = subprocess.run(["dvc", "exp", "run", "-S", "benchmark.threads=[0]"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "benchmark.threads must all be in [1, 1024]" in proc.stdout + proc.stderr
    assert fingerprint(work) == before and tracked(work, env) == committed


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.update(trian=p["train"]), "unknown section 'trian'. Did you mean 'train'?"),
        (lambda p: p["train"].update(lr=float("inf")), "train.lr: expected a finite number, got inf"),
        (lambda p: p["prepare"].update(calib_size=0), "prepare.calib_size must be > 0"),
        (lambda p: p["quantize"].update(methods=[]), "quantize.methods is empty"),
        (lambda p: p["gate"].update(methods=["onnx_qdq_int8", "dynamic_int8x"]), "unknown quantization method 'dynamic_int8x'"),
        (lambda p: p["benchmark"].update(peak_gemm_size=80000), "benchmark.peak_gemm_size must be <= 8192"),
    ],
    ids=["section-typo", "inf-lr", "calib-0", "no-methods", "gate-typo", "huge-gemm"],
)
def test_a_refused_param_keeps_every_earlier_output(clone, edit, message):
    work, env = clone
    before = fingerprint(work)
    params = yaml.safe_load((work / "params.yaml").read_text())
    edit(params)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = repro_fails(work, env)
    assert message in out and stages_run(out) == {"validate"}, out
    assert fingerprint(work) == before  # models, data, prepared splits and the git-kept metrics all stay


def test_a_failed_mirror_under_dvc_repro_keeps_the_earlier_data(clone, tmp_path):
    work, env = clone
    before = fingerprint(work)
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    out = repro_fails(work, dict(env, MNIST_MIRROR=str(empty)), "-f", "download")
    assert "could not get a verified train-images-idx3-ubyte.gz" in out
    assert fingerprint(work) == before and is_up_to_date(work, env)  # data/raw persists: DVC removed nothing


def test_a_killed_stages_temporary_is_invisible_to_dvc_and_git(clone):
    work, env = clone
    # What SIGKILL during quantize leaves when the next `dvc repro` restores the stage from the run cache.
    leftover = work / "models/quantized/.onnx_qdq_int8.k1ll3d.tmp"
    leftover.mkdir()
    (leftover / "model.onnx").write_bytes(b"half an export")
    assert is_up_to_date(work, env)
    assert stages_run(sh(["dvc", "repro"], work, env)) == set()
    assert sh(["git", "status", "--porcelain"], work, env) == ""


def test_re_exporting_the_same_bytes_does_not_re_run_the_benchmark(clone):
    work, env = clone
    out = sh(["dvc", "repro", "-f", "-s", "quantize@onnx_qdq_int8"], work, env)
    assert stages_run(out) == {"quantize@onnx_qdq_int8"}, out
    assert is_up_to_date(work, env)  # the export's timing lives outside the artifacts


def test_the_dataset_is_a_tracked_input_of_download(clone):
    work, env = clone
    set_params(work, "download", dataset="fashion_mnist", md5={})
    status = sh(["dvc", "status", "download"], work, env)
    assert "download" in status and "modified:" in status and "download.dataset" in sh(["dvc", "params", "diff"], work, env)


@pytest.mark.parametrize("out", ["metrics", "models/quantized/onnx_qdq_int8", "plots"])
def test_compare_refuses_an_out_that_is_a_pipeline_output(clone, out):
    work, env = clone
    before = fingerprint(work)
    proc = subprocess.run(
        ["python", "-m", "edgequant.report.compare", "main", "calib-16", "--out", out], cwd=work, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.startswith(f"compare: --out {out} ") and proc.stderr.count("\n") == 1, proc.stderr
    assert fingerprint(work) == before


def test_killing_only_dvc_stops_the_stage_it_started(clone):
    work, env = clone
    before = fingerprint(work)
    set_params(work, "train", epochs=2000)  # long enough to outlive dvc by minutes if nothing stopped it
    # DVC runs the cmd through $SHELL, or /bin/sh where it is unset (as under CI runners): Debian's dash then
    # stays between DVC and the stage, so the stage's own parent outlives DVC
    env = dict(env, SHELL="/bin/sh")
    proc = subprocess.Popen(
        ["dvc", "repro"], cwd=work, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list((work / "metrics").glob(".train_live.*.tmp/**/*.tsv")):  # train is mid-run
        assert proc.poll() is None and time.monotonic() < deadline, "dvc repro ended before it could be interrupted"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # dvc alone, not its process group
    proc.wait(timeout=30)
    # The group now holds only the orphaned stage, until it notices and stops
    if running := members_left(proc.pid, timeout_s=30):
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the train stage kept running 30 s after dvc died: {running}")
    assert fingerprint(work) == before  # it wrote nothing after dvc died: the earlier outputs persist whole
    assert not list((work / "metrics").glob(".*.tmp"))  # it unwound through its atomic writers
