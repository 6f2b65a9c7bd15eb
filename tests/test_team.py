"""Team workflow on the tiny repo: shared remote, experiments, diffs across branches, the gate, plots in a browser."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from .conftest import ROOT, TINY, fingerprint, is_up_to_date, set_params, sh, stages_run

pytestmark = pytest.mark.slow
VEGA_DIR = Path(os.environ.get("EDGEQUANT_VEGA_DIR", ROOT / ".cache" / "vega"))


def test_clone_pull_is_clean_and_repro_is_a_noop(clone):
    work, env = clone
    assert (work / "models/fp32.pt").is_file() and (work / "models/quantized/onnx_qdq_int8/model.onnx").is_file()
    assert is_up_to_date(work, env)
    out = sh(["dvc", "repro"], work, env)
    assert stages_run(out) == set(), out


def test_diffs_between_branches(tiny_origin):
    work, env = tiny_origin.work, tiny_origin.env
    params = sh(["dvc", "params", "diff", "main", "calib-16", "--md"], work, env)
    assert "prepare.calib_size" in params and "| 32 " in params and "| 16 " in params
    metrics = json.loads(sh(["dvc", "metrics", "diff", "main", "calib-16", "--json"], work, env))
    sqnr = metrics["metrics/sqnr.json"]
    assert any(k.startswith("onnx_qdq_int8.") for k in sqnr), sqnr  # new calibration, new scales
    assert "metrics/train.json" not in metrics  # training did not re-run
    plots = work.parent / "plots-diff"
    sh(["dvc", "plots", "diff", "main", "calib-16", "-o", str(plots)], work, env)
    html = (plots / "index.html").read_text()
    assert '"rev": "main"' in html and '"rev": "calib-16"' in html  # both revisions overlaid


def test_compare_reports_params_metrics_and_both_revisions_plots(tiny_origin, tmp_path):
    out = tmp_path / "report"
    sh(["python", "-m", "edgequant.report.compare", "main", "calib-16", "--out", str(out)], tiny_origin.work, tiny_origin.env)
    md = (out / "compare.md").read_text()
    assert "| `prepare.calib_size` | 32 | 16 |" in md
    assert "## Headline metrics per method" in md and "`onnx_qdq_int8`" in md
    images = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(images) >= 8 and all((out / p).is_file() for p in images)  # 4 PNGs x 2 revisions
    assert (out / "plots/index.html").is_file()


def test_compare_refuses_unknown_revision_and_leaves_nothing(tiny_origin, tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        ["python", "-m", "edgequant.report.compare", "main", "no-such-branch", "--out", str(out)],
        cwd=tiny_origin.work,
        env=tiny_origin.env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "compare: `dvc params diff main no-such-branch` failed" in proc.stderr
    assert not out.exists()


def find_browser() -> str:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    reason = None
    if browser is None:
        reason = "no Chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
    elif not (VEGA_DIR / "vega-embed.min.js").is_file():
        reason = f"no vega scripts in {VEGA_DIR} (run `make vega`)"
    if reason:
        if os.environ.get("EDGEQUANT_REQUIRE_BROWSER"):
            pytest.fail(f"EDGEQUANT_REQUIRE_BROWSER is set but {reason}")
        pytest.skip(reason)
    return browser


def test_plots_render_in_headless_chromium(tiny_origin, tmp_path):
    browser = find_browser()
    out = tmp_path / "report"
    cmd = ["python", "-m", "edgequant.report.compare", "main", "calib-16", "--out", str(out), "--vega-dir", str(VEGA_DIR)]
    sh(cmd, tiny_origin.work, tiny_origin.env)
    page = (out / "plots/index.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += [f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--window-size=1400,2400"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "plots.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=120)

    # vega-embed replaces each container's inline script with a rendered chart (a canvas by default).
    charts = len(yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"])
    assert dom.count('class="vega-embed') >= charts, dom[:2000]
    assert dom.count("<canvas") >= charts

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    ink = (pixels < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    colours = len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    print(f"screenshot {shot.stat().st_size} bytes, {ink:.1%} ink, {colours} colours")
    assert 0.01 < ink < 0.9 and colours > 20  # not blank, not a solid error page


def test_gate_fails_naming_method_value_and_limit_and_keeps_metrics(clone):
    work, env = clone
    before = (work / "metrics/benchmark.json").read_bytes()
    set_params(work, "gate", min_speedup=1000.0)
    proc = subprocess.run(["dvc", "repro"], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert stages_run(out) == {"validate", "gate"}, out
    assert "FAIL: onnx_qdq_int8: throughput speed-up vs own-runtime fp32 at 1 thread(s)" in out
    assert "limit >= 1000 (gate.min_speedup)" in out
    assert (work / "metrics/benchmark.json").read_bytes() == before  # nothing lost
    verdict = json.loads((work / "metrics/gate.json").read_text())
    assert verdict["passed"] is False and verdict["failures"] >= 1


def test_experiments_single_and_queued_sweep(clone):
    work, env = clone
    # A queued sweep: each experiment runs in DVC's own copy of the repo (.dvc/tmp/exps), outputs checked out from the
    # cache, and re-runs what its param feeds. A gate limit feeds the gate alone (not the accuracy budget: accuracy-aware
    # quantizers meet it too), so the sweep checks the queue and the copies, not the pipeline again (the origin's
    # calib-16 branch re-runs quantize onwards, which costs minutes at any size).
    sh(["dvc", "exp", "run", "--queue", "-S", "gate.max_size_ratio=0.4,0.6"], work, env)
    sh(["dvc", "exp", "run", "--run-all"], work, env)
    table = sh(["dvc", "exp", "show", "--md", "--no-pager", "--keep", "gate.max_size_ratio", "--drop", ".*"], work, env)
    ratios = {line.split("|")[-2].strip() for line in table.splitlines() if line.startswith("|")}
    assert {"0.4", "0.6"} <= ratios, table
    # One experiment in the workspace, named, with a param override: it re-runs only the stages that param feeds (the
    # gate, and the fleet, whose ship columns read the gate's verdict).
    out = sh(["dvc", "exp", "run", "-S", "gate.min_speedup=0.02", "-n", "faster"], work, env)
    assert stages_run(out) == {"validate", "gate", "fleet"}, out
    checks = json.loads((work / "metrics/gate.json").read_text())["checks"]
    assert {c["limit"] for c in checks if c["param"] == "gate.min_speedup"} == {0.02}, checks
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], work, env))
    names = {exp.get("name") for commit in shown for exp in commit.get("experiments") or []}
    assert "faster" in names and len(names) >= 3, names


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_dvc_repro_killed_mid_stage_then_completes(clone, sig):
    work, env = clone
    before = fingerprint(work)
    set_params(work, "train", epochs=2000)  # long enough to be killed in the middle
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(["dvc", "repro"], cwd=work, env=env, start_new_session=True, **quiet)
    deadline = time.monotonic() + 120
    while not list((work / "metrics").glob(".train_live.*.tmp/**/*.tsv")):  # train is mid-run
        assert proc.poll() is None and time.monotonic() < deadline, "dvc repro ended before it could be interrupted"
        time.sleep(0.1)
    os.killpg(proc.pid, sig)  # like Ctrl-C in a terminal (the whole process group), or a hard kill
    proc.wait(timeout=60)
    assert fingerprint(work) == before  # outputs persist: the earlier run's stay whole, nothing half-written replaces them

    set_params(work, "train", epochs=TINY["train"]["epochs"])
    out = sh(["dvc", "repro"], work, env)
    # The killed run never reached dvc.lock and every output persists: with the params back, the earlier outputs
    # are the pipeline's again, so nothing re-runs but validate, and plot at most (the probe runs on every repro and
    # stages_run leaves it out).
    assert stages_run(out) <= {"validate", "plot"}, out
    assert is_up_to_date(work, env) and fingerprint(work) == before
    # A killed write may leave its scratch, `.<name>.*.tmp`: git and DVC ignore it, and the stage's next run removes it.
    for scratch in work.rglob(".*.tmp"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(scratch)], cwd=work, env=env)
        assert ignored.returncode == 0, f"{scratch} is not ignored by git"
    set_params(work, "train", epochs=TINY["train"]["epochs"] + 1)
    sh(["dvc", "repro", "train"], work, env)
    assert not list(work.rglob(".*.tmp"))
