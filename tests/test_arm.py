"""Arm numerics under emulation: the bench bundle's artifacts on arm64 kernels (qemu), recorded with no timing."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from edgequant.device import armroot, emulate
from edgequant.device.arm_guest import logits
from edgequant.device.armtrace import int8_path, read_in_asm
from edgequant.device.bundle import make_bundle
from edgequant.device.run_bench import pad
from edgequant.fleet import numerics
from edgequant.quantize.catalog import get_method, record

from .conftest import ROOT, make_digits

METHODS = ["fp32", "onnx_fp32", "onnx_qdq_int8", "executorch_xnnpack_fp32", "executorch_xnnpack_int8"]
MIN_AGREEMENT_PCT = 75  # the tiny model's INT8 against its FP32, as tests/test_bundle.py asks on the host
CACHE = ROOT / ".cache/arm64"  # git-ignored; a second run reuses the arm64 root

A_ROW = {
    "numerics_only": numerics.LABEL,
    "machine": {"name": "qemu-arm64-max-i8mm", "arch": "aarch64"},
    "emulator": {"qemu": "10.0.13", "cpu_model": "max"},
    "images": 48,
    "methods": {
        "onnx_qdq_int8": {"runtime": "onnxruntime", "precision": "int8", "accuracy_pct": 98.5, "agreement_with_fp32_pct": 99.0},
    },
}


def test_an_emulated_row_carrying_a_timing_is_refused():
    timed = json.loads(json.dumps(A_ROW))
    timed["methods"]["onnx_qdq_int8"]["threads_1"] = {"latency_ms_p50": 0.2, "throughput_ips": 5000.0}
    with pytest.raises(ValueError, match=r"row.json: an emulated row carries no timing, but it has methods\.onnx_qdq_int8\.threads_1"):
        numerics.validate(timed, "row.json")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"numerics_only": None}, "field numerics_only must read"),
        ({"machine": {}}, "machine.name is missing"),
        ({"methods": {}}, "methods is empty"),
        ({"methods": {"onnx_qdq_int8": {"accuracy_pct": 101.0, "agreement_with_fp32_pct": 99.0}}}, r"methods\.onnx_qdq_int8\.accuracy_pct"),
    ],
)
def test_a_damaged_numerics_row_is_refused_with_the_field_named(change, message):
    with pytest.raises(ValueError, match=message):
        numerics.validate({**A_ROW, **change}, "row.json")


def test_the_fleet_table_of_emulated_rows_is_labelled_and_has_no_speed(tmp_path):
    (tmp_path / "qemu-arm64-max-i8mm").mkdir()
    (tmp_path / "qemu-arm64-max-i8mm" / numerics.FILE).write_text(json.dumps(A_ROW))
    (tmp_path / "amd-epyc-avx2").mkdir()  # a timed row: not read here
    (tmp_path / "amd-epyc-avx2" / "benchmark.json").write_text("{}")
    rows, skipped = numerics.gather(tmp_path)
    assert skipped == []
    assert [r["name"] for r in rows] == ["qemu-arm64-max-i8mm"]
    table = numerics.markdown(rows)
    assert numerics.LABEL in table and "| `onnx_qdq_int8` |" in table and "98.50" in table
    assert not any(word in table for word in ("img/s", "latency_ms", "speed-up", "×"))


IN_ASM = """----------------
IN:
0x0000007f56c38a1838:  4e82a431  smmla    v17.4s, v1.16b, v2.16b
0x0000007f56c38a1838:  4e82a431  smmla    v17.4s, v1.16b, v2.16b
0x0000007f56c3901c74:  44940212  sdot     z18.s, z16.b, z20.b
0x0000007f56c3902000:  a0900000  smopa    za0.s, p0/m, p0/m, z0.b, z0.b
0x0000007f56c3903000:  4e20cc00  fmla     v0.4s, v0.4s, v0.4s
"""


def test_the_instructions_qemu_translated_name_the_widest_int8_path(tmp_path):
    log = tmp_path / "trace.log"
    log.write_text(IN_ASM)
    kernels = read_in_asm(log)
    # The same block translated twice counts once: the count is of distinct instructions executed.
    assert kernels == {"fmla (neon)": 1, "sdot (sve)": 1, "smmla (neon)": 1, "smopa (sme)": 1}
    assert int8_path(kernels) == "sme: smopa (sme)"
    assert int8_path({"smmla (neon)": 3, "sdot (neon)": 2}) == "i8mm: smmla (neon)"
    assert int8_path({"smull (neon)": 9}) == "neon: smull (neon)"
    assert int8_path({"fmla (neon)": 1}) == "none seen"


def test_the_guest_pads_the_last_batch_as_the_runner_does():
    images = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    batches = []

    def run(x):
        batches.append(len(x))
        return x * 2

    out = logits(run, pad, 4, images)
    assert batches == [4, 4] and out.shape == (5, 2) and np.array_equal(out, images * 2)


def test_score_counts_top1_against_labels_and_fp32():
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert emulate.score(out, np.array([1, 0, 0, 0]), np.array([1, 0, 1, 1])) == {"accuracy_pct": 75.0, "agreement_with_fp32_pct": 75.0}


def test_a_machine_without_the_tools_is_told_which_debian_packages_bring_them(monkeypatch):
    monkeypatch.setattr(armroot.os, "geteuid", lambda: 0)
    monkeypatch.setattr(armroot.shutil, "which", lambda tool: None if tool in ("debootstrap", "aarch64-linux-gnu-g++") else "/usr/bin/x")
    reason = armroot.missing()
    assert reason == "no debootstrap, aarch64-linux-gnu-g++ (Debian: apt-get install debootstrap g++-aarch64-linux-gnu)"
    monkeypatch.setattr(armroot.os, "geteuid", lambda: 1000)
    assert armroot.missing() == "chroot into the arm64 root needs root"


def test_a_folder_that_is_no_bundle_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    monkeypatch.setattr(emulate, "build", lambda cache: pytest.fail("nothing is built for a bad bundle"))
    with pytest.raises(ValueError, match=r"manifest.json: missing; build the bundle first \(`dvc repro bundle`\)"):
        emulate.measure(tmp_path, tmp_path / "cache", "max")


def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(tmp_path):
    manifest = {"methods": {"onnx_fp32": {"files": {"1": "../../etc/passwd.onnx"}}}}
    with pytest.raises(ValueError, match=r"methods\.onnx_fp32 names '\.\./\.\./etc/passwd\.onnx', not a \.onnx or \.pte file of"):
        emulate.artifacts(tmp_path, manifest)


def require_emulation() -> None:
    reason = armroot.missing()
    if reason and os.environ.get("EDGEQUANT_REQUIRE_QEMU"):
        pytest.fail(f"EDGEQUANT_REQUIRE_QEMU is set but the arm64 emulation cannot run: {reason}")
    if reason:
        pytest.skip(f"no arm64 emulation here: {reason}")


@pytest.fixture(scope="module")
def bundle(tiny_model, tmp_path_factory):
    """The bench bundle of the tiny model's ONNX and ExecuTorch artifacts, as the bundle stage writes it."""
    root = tmp_path_factory.mktemp("arm-bundle")
    images, labels = make_digits(64, 3)
    x = torch.from_numpy(images).unsqueeze(1).float() / 255
    for name in METHODS:
        out = root / "quantized" / name
        out.mkdir(parents=True)
        exported = get_method(name).export(tiny_model, x, x, out, (1, 16))
        (out / "meta.json").write_text(json.dumps(record(get_method(name), tiny_model.NAME, exported, (1, 16))))
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, root / "test.pt")
    make_bundle(root / "quantized", root / "test.pt", METHODS, [1, 16], 48, root / "bundle")
    return root / "bundle"


@pytest.mark.slow
def test_the_bundle_runs_on_emulated_arm_kernels_and_its_row_joins_the_fleet(bundle, tmp_path):
    """qemu's `-cpu max` has dot product, i8mm, SVE2 and SME: the INT8 artifacts must have run on those kernels."""
    require_emulation()
    row = emulate.measure(bundle, CACHE, "max")
    methods = row["methods"]
    assert set(methods) == set(METHODS[1:]) and row["machine"]["arch"] == "aarch64"
    assert row["machine"]["name"] == "qemu-arm64-max-i8mm" and {"asimddp", "i8mm", "sve2", "sme"} <= set(row["emulator"]["features"])
    for name, m in methods.items():
        assert m["agreement_with_fp32_pct"] >= MIN_AGREEMENT_PCT, name
        assert m["vs_host"]["agreement_pct"] >= MIN_AGREEMENT_PCT, name
    assert methods["executorch_xnnpack_int8"]["kernel_path"].startswith("sme: smopa")  # XNNPACK's SME GEMM
    assert methods["onnx_qdq_int8"]["kernel_path"].startswith("i8mm:")  # MLAS's 8-bit matrix multiply
    assert numerics.timing_keys(row) == []
    saved = emulate.save(row, tmp_path / "machines")
    assert numerics.load(saved)["record"] == json.loads(json.dumps(row)) and (saved / "README.md").is_file()
    shutil.rmtree(tmp_path / "machines")
