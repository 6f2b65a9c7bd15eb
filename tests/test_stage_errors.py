"""Each stage turns a damaged input, a full disk or a read-only checkout into one line naming the file and the fix."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from edgequant.model.zoo import Net
from stages import benchmark, gate, quantize, train

from .conftest import ROOT, make_digits, stat_fields


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Real params, tiny prepared splits and one truncated copy, in a temp dir that is the cwd."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(epochs=1, threads=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    images, labels = make_digits(64, 0)
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, tmp_path / "good.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:3000])
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line(capsys, stage: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"{stage}: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


TRUNCATED = r"truncated.pt: not a readable edgequant model \(.*\); re-run `dvc repro prepare`"


def test_truncated_prepared_split_in_train(workdir, capsys):
    args = ["--train", "truncated.pt", "--test", "good.pt", "--model", "m.pt", "--metrics", "t.json", "--live", "live"]
    assert train.main(args) == 1
    assert re.search(TRUNCATED, one_line(capsys, "train"))
    assert not os.path.exists("m.pt")


def test_truncated_prepared_split_in_quantize_and_benchmark(workdir, capsys):
    torch.save(Net().state_dict(), "fp32.pt")
    args = [
        "--method",
        "fp32",
        "--model",
        "fp32.pt",
        "--calib",
        "truncated.pt",
        "--val",
        "good.pt",
        "--test",
        "good.pt",
        "--out",
        "q",
        "--metrics",
        "q.json",
    ]
    assert quantize.main(args) == 1
    assert re.search(TRUNCATED, one_line(capsys, "quantize"))
    args = [
        "--artifacts",
        "none",
        "--test",
        "truncated.pt",
        "--machine",
        "m.json",
        "--metrics",
        "b.json",
        "--sqnr",
        "s.json",
        "--csv",
        "b.csv",
    ]
    assert benchmark.main([*args, "--layers-csv", "l.csv", "--ops-csv", "o.csv", "--settings", "s.json"]) == 1
    assert "re-run `dvc repro quantize@fp32`" in one_line(capsys, "benchmark")  # artifacts are looked at first


def test_truncated_benchmark_metrics_given_to_the_gate(workdir, capsys):
    (workdir / "b.json").write_text('{"methods": {"onnx_qdq_int8": {"accuracy_drop')
    assert gate.main(["--metrics", "b.json", "--out", "g.json"]) == 1
    assert "b.json: not complete JSON" in one_line(capsys, "gate") and not (workdir / "g.json").exists()


@pytest.mark.parametrize(("enforce", "code"), [(True, 1), (False, 0)])
def test_a_gate_that_is_not_enforced_records_every_failure_and_lets_the_run_go_on(workdir, capsys, enforce, code):
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["gate"].update(methods=["onnx_qdq_int8"], enforce=enforce)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    (workdir / "b.json").write_text(json.dumps({"peak": {"threads_1": {}}, "methods": {}}))  # nothing measured: every check fails
    assert gate.main(["--metrics", "b.json", "--out", "g.json"]) == code
    verdict = json.loads((workdir / "g.json").read_text())
    assert verdict["passed"] is False and verdict["failures"] >= 3
    out = capsys.readouterr()
    assert out.err.count("FAIL: onnx_qdq_int8") == verdict["failures"]  # printed either way
    assert ("gate.enforce is false: recorded, not enforced" in out.out) is not enforce


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_full_disk_or_read_only_checkout(workdir, capsys, monkeypatch, code):
    (workdir / "b.json").write_text(json.dumps({"peak": {"threads_1": {}}, "methods": {}}))

    def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own keyword
        raise OSError(code, os.strerror(code), str(dir))

    monkeypatch.setattr("edgequant.files.tempfile.mkstemp", refuse)
    assert gate.main(["--metrics", "b.json", "--out", "g.json"]) == 1
    err = one_line(capsys, "gate")
    assert f"gate: cannot access g.json: {os.strerror(code)} (free disk space or make the checkout writable, then re-run)" in err


def test_a_write_that_runs_out_of_space_names_the_output(workdir, capsys, monkeypatch):
    (workdir / "b.json").write_text(json.dumps({"peak": {"threads_1": {}}, "methods": {}}))

    def full(self, *args, **kwargs):  # what a real full disk raises from write(): ENOSPC with no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pathlib.Path.write_text", full)
    assert gate.main(["--metrics", "b.json", "--out", "g.json"]) == 1
    assert f"gate: cannot access g.json: {os.strerror(errno.ENOSPC)}" in one_line(capsys, "gate")
    assert not list(workdir.glob(".g.json.*"))  # the temporary is gone


def test_a_benchmark_refuses_a_full_disk_before_measuring(workdir, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(1 << 40, (1 << 40) - (1 << 20), 1 << 20))
    monkeypatch.setattr("stages.benchmark.measure_all", lambda *a, **k: pytest.fail("measured on a full disk"))
    args = ["--artifacts", "none", "--test", "good.pt", "--machine", "m.json", "--metrics", "b.json", "--sqnr", "s.json"]
    assert benchmark.main([*args, "--csv", "b.csv", "--layers-csv", "l.csv", "--ops-csv", "o.csv", "--settings", "t.json"]) == 1
    assert "benchmark: cannot access b.json: 1 MiB free, 64 MiB needed before starting" in one_line(capsys, "benchmark")


@pytest.mark.slow
def test_training_that_diverges_stops_at_the_first_non_finite_loss():
    from edgequant.model.train import train as fit

    from .conftest import tiny_train_params

    images, labels = make_digits(256, 0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    with pytest.raises(ValueError, match=r"training diverged: loss is (nan|inf) at epoch 1, batch \d+; lower train.lr \(now 1e\+30\)"):
        fit(tiny_train_params(lr=1e30, optimizer="adam", epochs=50), x, y, x[:32], y[:32])


@pytest.mark.parametrize(
    "stuck",
    [
        # stuck while unwinding, as a library caught mid-write can be
        "print('ready', flush=True)\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    time.sleep(60)\n",
        # stuck in C code, where no Python handler runs until it returns: one 6000^2 GEMM outlasts the 0.2 s grace here.
        # Ready once the operand is filled, so that SIGINT lands in a GEMM however slowly a busy core allocates it.
        "x = torch.ones(6000, 6000)\nprint('ready', flush=True)\nfor _ in range(20):\n    x @ x\n",
    ],
    ids=["while-unwinding", "in-c-code"],
)
@pytest.mark.slow
def test_a_stage_stuck_after_ctrl_c_still_exits(stuck):
    code = "import time\nimport torch\nfrom edgequant import stage\nstage.stop_promptly_on_interrupt(grace_s=0.2)\n" + stuck
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)  # inside the stuck call
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT and time.monotonic() - start < 10


def is_live(pid: int) -> bool:
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


@pytest.mark.parametrize(
    ("launch", "under_dvc", "stops"),
    [
        # DVC runs a cmd as `$SHELL -c cmd`; dash (Debian's /bin/sh) stays as the stage's parent where bash execs it,
        # so when DVC dies it is the shell that is orphaned, and the stage's own parent lives on
        (["/bin/sh", "-c", "{stage}"], True, True),
        (["/bin/sh", "-c", "/bin/sh -c '{stage}'"], True, True),  # a cmd that runs the stage through another shell
        (["{stage}"], False, True),  # the parent itself dies
        (["/bin/sh", "-c", "{stage}"], False, False),  # outside DVC, as `nohup bash run.sh` from a terminal that closes
    ],
    ids=["dvc-sh", "dvc-sh-in-sh", "no-shell", "shell-outside-dvc"],
)
@pytest.mark.slow
def test_a_stage_stops_when_dvc_dies_behind_any_shells_and_only_then(tmp_path, launch, under_dvc, stops):
    if not os.path.exists("/bin/sh"):
        pytest.skip("no /bin/sh")
    stage = tmp_path / "stage.py"
    stage.write_text(
        "import os, time\nfrom edgequant import stage\n"
        "stage.watch_parent(poll_s=0.05, grace_s=1)\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n"
    )
    command = [arg.format(stage=f"{sys.executable} {stage}") for arg in launch]
    command = command[0].split() if len(command) == 1 else command
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"} | {"PYTHONPATH": str(ROOT)}
    if under_dvc:
        env["DVC_STAGE"] = "train"
    launcher = subprocess.Popen(  # stands in for dvc: a process that starts the command and is then killed alone
        [sys.executable, "-c", f"import subprocess\nsubprocess.run({command!r})\n"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait(timeout=10)
    deadline = time.monotonic() + (10 if stops else 3)  # past the 1 s grace after which a stopping stage exits
    while is_live(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = is_live(pid)
    if alive:
        os.kill(pid, signal.SIGKILL)
    assert alive is not stops, f"{launch} under_dvc={under_dvc}: the stage {'kept running' if alive else 'stopped'}"
