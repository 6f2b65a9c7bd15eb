"""The bench bundle: built from real artifacts, run by its own runner, in a virtual environment with only the runtimes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv

import pytest
import torch

from edgequant import fleet
from edgequant.bench_runner import measure
from edgequant.bundle import make_bundle
from edgequant.machine import probe
from edgequant.registry import get_method, record

from .conftest import make_digits

METHODS = ["fp32", "onnx_fp32", "onnx_qdq_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8"]


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    """The methods' artifacts as the quantize stage lays them out, and a prepared test split."""
    root = tmp_path_factory.mktemp("bundle-src")
    images, labels = make_digits(64, 3)
    x = torch.from_numpy(images).unsqueeze(1).float() / 255
    for name in METHODS:
        out = root / "quantized" / name
        out.mkdir(parents=True)
        exported = get_method(name).export(tiny_model, x, x, out, (1, 16))
        (out / "meta.json").write_text(json.dumps(record(get_method(name), tiny_model.NAME, exported, (1, 16))))
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, root / "test.pt")
    return root


@pytest.fixture(scope="module")
def bundle(artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    kept = make_bundle(artifacts / "quantized", artifacts / "test.pt", METHODS, [1, 16], 48, out)
    assert kept == METHODS[1:]  # eager PyTorch needs the training stack: not for the device
    return out


def test_the_runner_measures_every_bundled_artifact(bundle):
    metrics = measure(bundle, [1], 0.01)
    assert set(metrics["methods"]) == set(METHODS[1:]) and metrics["machine"]["name"] == probe()["name"]
    q = metrics["methods"]["onnx_qdq_int8"]
    assert q["agreement_with_fp32_pct"] >= 75 and q["size_ratio_vs_runtime_fp32"] < 0.3
    assert q["threads_1"]["throughput_ips"] > 0 and q["threads_1"]["throughput_speedup_vs_runtime_fp32"] > 0
    assert metrics["peak"]["threads_1"]["int8_engine"] == "onnxruntime MatMulInteger"
    assert metrics["methods"]["executorch_xnnpack_int8"]["agreement_with_fp32_pct"] >= 75


def test_a_meta_json_naming_a_file_elsewhere_is_refused(artifacts, tmp_path):
    meta = artifacts / "quantized" / "onnx_fp32" / "meta.json"
    good = meta.read_text()
    try:
        meta.write_text(json.dumps({**json.loads(good), "shipped": "../../test.pt"}))
        with pytest.raises(ValueError, match=r"names no file of .*onnx_fp32 as the one shipped \('\.\./\.\./test\.pt'\)"):
            make_bundle(artifacts / "quantized", artifacts / "test.pt", METHODS, [1, 16], 48, tmp_path / "bundle")
    finally:
        meta.write_text(good)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.slow
def test_the_runner_needs_only_onnxruntime_and_its_output_joins_the_fleet(bundle, tmp_path):
    """A fresh virtual environment with numpy and onnxruntime alone, as on a device: no torch, no edgequant."""
    device = tmp_path / "device"
    shutil.copytree(bundle, device, ignore=shutil.ignore_patterns("executorch_*"))
    manifest = json.loads((device / "manifest.json").read_text())
    manifest["methods"] = {m: v for m, v in manifest["methods"].items() if v["runtime"] == "onnxruntime"}
    (device / "manifest.json").write_text(json.dumps(manifest))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pins = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout.split()
    wanted = [
        p for p in pins if p.split("==")[0].lower() in ("numpy", "onnxruntime", "flatbuffers", "protobuf", "packaging", "coloredlogs")
    ]
    subprocess.run([python, "-m", "pip", "install", "-q", *wanted], check=True, timeout=600)
    assert subprocess.run([python, "-c", "import torch"], capture_output=True).returncode != 0  # truly without the training stack
    proc = subprocess.run(
        [python, "run_bench.py", "--seconds", "0.01", "--out", "out/benchmark.json"], cwd=device, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    saved = fleet.save([device / "out/benchmark.json"], device / "out/machine.json", tmp_path / "machines")
    entry = fleet.load(saved)
    assert set(entry["metrics"]["methods"]) == {"onnx_fp32", "onnx_qdq_int8"}
    from edgequant.params import GateParams

    row = fleet.summarize(entry, GateParams(["onnx_qdq_int8"], 100.0, 0.01, 0.5, True))
    assert row["fastest_int8"] == "onnx_qdq_int8" and row["speedup_vs_fp32_eager"] is None and "| – |" in fleet.markdown([row])
