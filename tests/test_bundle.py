"""The bench bundle: built from real artifacts, run by its own runner, in a virtual environment with only the runtimes."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from edgequant.device import run_bench
from edgequant.device.bundle import make_bundle
from edgequant.device.run_bench import BundleError, measure
from edgequant.fleet import table
from edgequant.measure.machine import probe

from .conftest import write_artifacts
from .zipforge import Record, forge

# Every test here exports artifacts or starts processes: the slow tier (make test-fast leaves it out).
pytestmark = pytest.mark.slow

METHODS = ["fp32", "onnx_fp32", "onnx_qdq_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8"]


@pytest.fixture(scope="module")
def artifacts(tiny_model, tmp_path_factory):
    """The methods' artifacts as the quantize stage lays them out, and a prepared test split."""
    return write_artifacts(tiny_model, tmp_path_factory.mktemp("bundle-src"), METHODS)


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
    saved = table.save([device / "out/benchmark.json"], device / "out/machine.json", tmp_path / "machines")
    entry = table.load(saved)
    assert set(entry["metrics"]["methods"]) == {"onnx_fp32", "onnx_qdq_int8"}
    from edgequant.params import GateParams

    row = table.summarize(entry, GateParams(["onnx_qdq_int8"], 100.0, 0.01, 0.5, True))
    assert row["fastest_int8"] == "onnx_qdq_int8" and row["speedup_vs_fp32_eager"] is None and "| – |" in table.markdown([row])


# --- A hostile or damaged bundle: one line, before anything is measured


@pytest.fixture
def device(bundle, tmp_path):
    """A copy of the bundle, as a device receives it, for a test to damage."""
    copy = tmp_path / "device"
    shutil.copytree(bundle, copy)
    return copy


def _run_bench(device, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run_bench.py", "--seconds", "0.01", *args], cwd=device, capture_output=True, text=True, timeout=600
    )


def test_random_pte_bytes_are_refused_in_one_line_not_an_abort(device):
    # Non-UTF-8 where the identifier belongs: ExecuTorch logs what it found there, and pybind11 aborts on it.
    (device / "executorch_xnnpack_fp32" / "model_b1.pte").write_bytes(b"\x00" * 4 + b"\xfd\xfe\xff\xfa" + bytes(range(256)) * 40)
    proc = _run_bench(device, "--out", "out/benchmark.json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("run_bench: ")
    assert "executorch_xnnpack_fp32/model_b1.pte: not an ExecuTorch program this runner can load (no ExecuTorch identifier" in proc.stderr


def _edit_manifest(device, edit) -> None:
    manifest = json.loads((device / "manifest.json").read_text())
    edit(manifest)
    (device / "manifest.json").write_text(json.dumps(manifest))


def _onnx_files(manifest: dict) -> dict:
    return manifest["methods"]["onnx_fp32"]["files"]


@pytest.mark.parametrize(
    "path", ["/etc/hostname", "../outside.onnx", "onnx_fp32/../../outside.onnx", "onnx_qdq_int8/model.onnx", "onnx_fp32\\model.onnx"]
)
def test_a_manifest_naming_a_file_outside_the_method_folder_is_refused(device, path):
    (device.parent / "outside.onnx").write_bytes((device / "onnx_fp32" / "model.onnx").read_bytes())
    _edit_manifest(device, lambda m: _onnx_files(m).update(dict.fromkeys(_onnx_files(m), path)))
    with pytest.raises(
        BundleError, match=rf"manifest.json: method onnx_fp32 names {re.escape(repr(path))}, not a .onnx or .pte file in its folder"
    ):
        measure(device, [1], 0.01)


def test_a_model_that_is_a_symbolic_link_is_refused(device):
    (device.parent / "outside.onnx").write_bytes((device / "onnx_fp32" / "model.onnx").read_bytes())
    (device / "onnx_fp32" / "model.onnx").unlink()
    (device / "onnx_fp32" / "model.onnx").symlink_to(device.parent / "outside.onnx")
    with pytest.raises(BundleError, match=r"onnx_fp32/model.onnx: a symbolic link \(to .*outside.onnx\); .*; rebuild the bundle"):
        measure(device, [1], 0.01)


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda m: m.pop("methods"), r"not a bundle manifest \(KeyError: 'methods'\)"),
        (lambda m: m["methods"]["onnx_fp32"].pop("precision"), r"method onnx_fp32 without a runtime, a precision"),
        (lambda m: m["methods"]["onnx_fp32"].update(files=["onnx_fp32/model.onnx"]), r"method onnx_fp32 names no files"),
        (lambda m: _onnx_files(m).update({"0": "onnx_fp32/model.onnx"}), r"method onnx_fp32 has a batch size '0'"),
        (lambda m: m.update(macs_per_image="many"), r"no positive macs_per_image"),
    ],
    ids=["no-methods", "no-precision", "files-not-a-map", "batch-zero", "macs-not-a-number"],
)
def test_a_malformed_manifest_is_one_line(device, edit, says):
    _edit_manifest(device, edit)
    with pytest.raises(BundleError, match=rf"manifest.json: {says}.*; rebuild the bundle") as refused:
        measure(device, [1], 0.01)
    assert "\n" not in str(refused.value)


def test_inputs_declaring_millions_of_images_are_refused_before_numpy_allocates(device):
    header_of = io.BytesIO()
    np.lib.format.write_array_header_1_0(header_of, {"descr": "<f4", "fortran_order": False, "shape": (2_000_000, 1, 28, 28)})
    small = {"labels": np.zeros(3, np.int64), "fp32_predictions": np.zeros(3, np.int64)}
    records = [Record("images.npy", header_of.getvalue() + bytes(3 * 784 * 4), deflate=True)]
    for name, array in small.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        records.append(Record(f"{name}.npy", buffer.getvalue(), deflate=True))
    (device / "inputs.npz").write_bytes(forge(records))
    with pytest.raises(BundleError, match=r"inputs.npz: an array of shape \(2000000, 1, 28, 28\) and float32 in 9408 bytes"):
        measure(device, [1], 0.01)
    # A record declaring the gigabytes such a header needs (zeros deflate a thousandfold): refused from the sizes alone.
    records[0] = dataclasses.replace(records[0], declared_size=len(header_of.getvalue()) + 1_000_000 * 784 * 4)
    (device / "inputs.npz").write_bytes(forge(records))
    with pytest.raises(BundleError, match=r"inputs.npz: record images.npy declares 3136000\d+ bytes"):
        measure(device, [1], 0.01)


def test_an_unwritable_output_is_refused_before_measuring(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file where the output folder would be")
    monkeypatch.setattr(run_bench, "measure", lambda *a: pytest.fail("measured before checking the output"))
    assert run_bench.main(["--out", str(tmp_path / "taken" / "benchmark.json")]) == 1
    assert re.fullmatch(
        r"run_bench: cannot write .*taken/benchmark.json \(.+\); pass --out a path in a writable folder\n", capsys.readouterr().err
    )


def test_results_that_cannot_be_written_at_the_end_are_kept_elsewhere(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "benchmark.json"

    def measure_then_lose_the_folder(*_):
        shutil.rmtree(out.parent)
        out.parent.write_text("the folder went away while measuring")
        return {"methods": {"onnx_fp32": {}}, "machine": {"name": "device"}}

    monkeypatch.setattr(run_bench, "measure", measure_then_lose_the_folder)
    assert run_bench.main(["--out", str(out)]) == 1
    kept = Path(re.search(r"the results are in (\S+) ", capsys.readouterr().err).group(1))
    assert json.loads(kept.read_text())["methods"] == {"onnx_fp32": {}} and (kept.parent / "machine.json").is_file()
    shutil.rmtree(kept.parent)


def test_a_bundle_refuses_an_artifact_that_is_a_symbolic_link_out_of_the_repo(artifacts, tmp_path):
    model = artifacts / "quantized" / "onnx_fp32" / "model.onnx"
    secret = tmp_path / "secret.onnx"
    shutil.move(model, secret)
    try:
        model.symlink_to(secret)  # whatever it points to would leave the machine inside bundle/
        with pytest.raises(ValueError, match=r"meta.json: the file it ships, 'model.onnx': a symbolic link \(to .*secret.onnx\)"):
            make_bundle(artifacts / "quantized", artifacts / "test.pt", METHODS, [1, 16], 48, tmp_path / "bundle")
    finally:
        model.unlink(missing_ok=True)
        shutil.move(secret, model)
    assert not (tmp_path / "bundle").exists()


@pytest.fixture
def read_only_bundle(bundle, tmp_path):
    """The bundle on a read-only file system, as on a device that mounts it from read-only media (needs root to mount)."""
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        shutil.copytree(bundle, mount / "bundle")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        yield mount / "bundle"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_bundle_is_refused_before_measuring(read_only_bundle):
    proc = _run_bench(read_only_bundle)  # the default output, benchmark.json, lands in the bundle's folder
    assert proc.returncode == 1
    assert re.fullmatch(
        r"run_bench: cannot write benchmark.json \(Read-only file system\); pass --out a path in a writable folder\n", proc.stderr
    )
