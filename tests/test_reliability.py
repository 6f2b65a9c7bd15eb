"""Faults a user hits: a stage killed mid-run, too many threads asked for, damaged inputs and artifacts, a full disk."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from edgequant.measure.machine import probe
from edgequant.measure.processes import clamp_threads, fresh_server, measure
from edgequant.stage import StageError

from .conftest import ROOT, make_digits, stat_fields

# Every test here exports artifacts or starts processes: the slow tier (make test-fast leaves it out).
pytestmark = pytest.mark.slow


@pytest.fixture
def prepared(tmp_path):
    images, labels = make_digits(512, 0)
    data = tmp_path / "prepared"
    data.mkdir()
    for name in ("train", "test"):
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, data / f"{name}.pt")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=200, batch_size=32, threads=1)  # long enough to be killed mid-run
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_train_stage_leaves_no_partial_outputs(prepared, subprocess_env, sig):
    out = prepared / "out"
    data = prepared / "prepared"
    cmd = [sys.executable, "-m", "stages.train", "--train", str(data / "train.pt"), "--test", str(data / "test.pt")]
    cmd += ["--model", str(out / "fp32.pt")]
    cmd += ["--metrics", str(out / "train.json"), "--live", str(out / "live"), "--params", str(prepared / "params.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list(out.glob(".live.*.tmp/**/*.tsv")):  # mid-run: the first epoch has been logged
        assert proc.poll() is None and time.monotonic() < deadline, "train stage ended before it could be interrupted"
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait(timeout=30)
    assert proc.returncode != 0
    assert not (out / "fp32.pt").exists() and not (out / "train.json").exists() and not (out / "live").exists()

    # The next run completes normally and sweeps what a SIGKILL left behind.
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["train"]["epochs"] = 1
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    subprocess.run(cmd, cwd=ROOT, env=subprocess_env, check=True, capture_output=True)
    assert (out / "fp32.pt").is_file() and (out / "live").is_dir()
    assert not list(out.glob(".*.tmp"))


def test_threads_above_cores_are_clamped_with_a_message(capsys, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert clamp_threads([1, 2, 8]) == [1, 2]
    assert "has 2 cores; thread counts [1, 2, 8] clamped to [1, 2]" in capsys.readouterr().err
    assert clamp_threads([1]) == [1] and capsys.readouterr().err == ""


def test_benchmark_of_a_corrupted_artifact_names_it_and_writes_nothing(prepared, subprocess_env, tiny_model):
    from edgequant.quantize.catalog import get_method, record

    artifacts = prepared / "artifacts"
    for name in ("fp32", "dynamic_int8"):
        out = artifacts / name
        out.mkdir(parents=True)
        exported = get_method(name).export(tiny_model, torch.zeros(8, 1, 28, 28), torch.zeros(8, 1, 28, 28), out, (1,))
        (out / "meta.json").write_text(json.dumps(record(get_method(name), tiny_model.NAME, exported, (1,))))
    # Damaged after quantize wrote it (a bad copy to the device, a disk error): loading it must fail.
    (artifacts / "dynamic_int8" / "model.pt").write_bytes(b"not a model")
    params = yaml.safe_load((prepared / "params.yaml").read_text())
    params["quantize"]["methods"] = ["fp32", "dynamic_int8"]
    params["gate"]["methods"] = ["dynamic_int8"]
    params["benchmark"].update(threads=[1], throughput_batch=8, latency_runs=5, warmup_runs=1, min_run_time_s=0.02, peak_gemm_size=64)
    (prepared / "params.yaml").write_text(yaml.safe_dump(params))
    out = prepared / "out"
    (prepared / "machine.json").write_text(json.dumps(probe()))
    cmd = [sys.executable, "-m", "stages.benchmark", "--artifacts", str(artifacts), "--test", str(prepared / "prepared" / "test.pt")]
    cmd += ["--machine", str(prepared / "machine.json")]
    cmd += ["--metrics", str(out / "b.json"), "--sqnr", str(out / "s.json")]
    cmd += [
        "--csv",
        str(out / "b.csv"),
        "--layers-csv",
        str(out / "l.csv"),
        "--ops-csv",
        str(out / "o.csv"),
        "--settings",
        str(out / "s.json"),
    ]
    proc = subprocess.run(cmd + ["--params", str(prepared / "params.yaml")], cwd=ROOT, env=subprocess_env, capture_output=True, text=True)
    assert proc.returncode == 1
    # One line: the measurement, the worker's own error naming the file, and what to do.
    assert proc.stderr.startswith("benchmark: measuring dynamic_int8 with 1 thread(s) failed: ") and proc.stderr.count("\n") == 1
    assert "dynamic_int8/model.pt: not a readable edgequant model" in proc.stderr and "dvc repro quantize@dynamic_int8" in proc.stderr
    assert not out.exists() or not list(out.iterdir())


def _fail_to_start():
    raise RuntimeError("unpickling the request failed")


class _Unpicklable:
    """Pickles fine in the parent; unpickling it in the worker raises, before the worker runs at all."""

    def __reduce__(self):
        return (_fail_to_start, ())


@dataclasses.dataclass(frozen=True)
class _PoisonedRequest:
    poison: object
    what: str = "fp32 with 1 thread(s)"


def test_a_worker_that_dies_while_starting_is_reported_as_such(capfd):
    with pytest.raises(RuntimeError, match=r"(?s)measuring fp32 with 1 thread\(s\) failed .*died before opening its log"):
        measure(multiprocessing.get_context("spawn"), _PoisonedRequest(_Unpicklable()))
    assert "unpickling the request failed" in capfd.readouterr().err  # the child's own traceback still shows


def test_a_fresh_server_forks_the_next_worker_and_the_one_before_it_has_exited():
    """The benchmark's rounds each fork from their own server (edgequant/measure/processes.py: `fresh_server`)."""
    context = multiprocessing.get_context("forkserver")

    def parent_of_a_worker() -> int:
        worker = context.Process(target=time.sleep, args=(60,))
        worker.start()
        try:
            return int(stat_fields(worker.pid)[1])
        finally:
            worker.kill()
            worker.join()

    first = parent_of_a_worker()
    assert parent_of_a_worker() == first  # a server serves every worker until it is replaced
    fresh_server(context)
    second = parent_of_a_worker()
    assert second != first and stat_fields(first) is None, (first, second)


def test_a_damaged_pte_fails_its_measurement_in_one_line_with_the_remedy(tmp_path):
    """What the benchmark stage shows for a truncated or scrambled .pte: the worker's one-line refusal, not its traceback."""
    from edgequant.measure.timing import MethodRequest

    from .test_artifacts import tiny_pte

    remedy = r"re-run `dvc repro quantize@executorch_xnnpack_fp32`"

    pte = tiny_pte(tmp_path / "quantized" / "executorch_xnnpack_fp32")
    images, labels = make_digits(16, 0)
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "test.pt")
    request = MethodRequest("executorch_xnnpack_fp32", 1, str(pte.parent), str(tmp_path / "test.pt"), 1, 1, 0, 1, 0.01, False, False, 0)
    good = pte.read_bytes()
    damages = {
        "truncated": good[: len(good) // 2],
        "scrambled": good.replace(b"XnnpackBackend", b"XnnpackBackenX"),  # passes the checks; ExecuTorch refuses it
    }
    for damage, data in damages.items():
        pte.write_bytes(data)
        with pytest.raises(StageError) as failed:
            measure(multiprocessing.get_context("forkserver"), request)
        message = str(failed.value)
        assert "\n" not in message, f"{damage}: {message[-2000:]}"
        assert re.fullmatch(
            rf"measuring executorch_xnnpack_fp32 with 1 thread\(s\) failed: .*model_b1.pte: .*; {remedy}",
            message,
        ), message


def test_a_kill_between_the_two_renames_of_a_folder_swap_keeps_the_earlier_copy(tmp_path):
    from edgequant.files import atomic_dir

    out = tmp_path / "raw"
    with atomic_dir(out) as tmp:
        (tmp / "a.gz").write_text("earlier")
    # What SIGKILL between `os.replace(path, old)` and `os.replace(tmp, path)` leaves: no output, the earlier copy aside.
    os.replace(out, tmp_path / ".raw.old.tmp")
    (tmp_path / ".raw.x1.tmp").mkdir()  # the new copy that never got its name
    with pytest.raises(RuntimeError), atomic_dir(out):  # the next run fails before it writes anything
        raise RuntimeError("a mirror failed")
    assert (out / "a.gz").read_text() == "earlier" and not list(tmp_path.glob(".*.tmp"))
