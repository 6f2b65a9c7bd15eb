"""INT8 numerics on an x86 CPU without VNNI, emulated (qemu-x86_64 -cpu Haswell: AVX2, no AVX-512): numerics only, never timing.

ONNX Runtime's u8 x s8 kernels saturate there with full-range weights; the shipped artifact must not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgequant.data.splits import to_input
from edgequant.model.layers import sqnr_db
from edgequant.quantize.catalog import get_method

from .conftest import make_digits

QEMU = shutil.which("qemu-x86_64")
pytestmark = [
    pytest.mark.slow,  # exports every INT8 method and runs each under an emulated CPU
    pytest.mark.skipif(
        QEMU is None and not os.environ.get("EDGEQUANT_REQUIRE_QEMU"),
        reason="no qemu-x86_64 (Debian: apt-get install qemu-user; .ci/run installs it)",
    ),
]
METHODS = ["onnx_qdq_int8", "executorch_xnnpack_int8", "eager_static_x86"]  # pt2e_x86: inductor builds its kernels for the host ISA
# Runs inside the emulated CPU: each method's own loader on the artifact, then the logits to a file.
RUN = """
import sys, numpy as np, torch
from pathlib import Path
from edgequant.quantize.catalog import get_method
print(torch.backends.cpu.get_cpu_capability())
x = torch.from_numpy(np.load(sys.argv[1]))
for name in sys.argv[2:]:
    np.save(Path(sys.argv[1]).with_name(name + ".npy"), get_method(name).load(Path(sys.argv[1]).parent / name, len(x), 1)(x).numpy())
"""
CONTROL = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[2], s.run(None, {"pixels": np.load(sys.argv[3])})[0])
"""


def emulated(script: str, *args: str, env: dict) -> str:
    assert QEMU, "EDGEQUANT_REQUIRE_QEMU is set but qemu-x86_64 is missing"
    proc = subprocess.run(
        [QEMU, "-cpu", "Haswell", sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_int8_methods_keep_their_accuracy_without_vnni(tiny_model, tmp_path, subprocess_env):
    images, _ = make_digits(72, 5)
    x = to_input(torch.from_numpy(images))
    calib, sample = x[:64], x[64:]
    for name in METHODS:
        get_method(name).export(tiny_model, calib, sample, tmp_path / name, (8,))
    np.save(tmp_path / "x.npy", sample.numpy())
    with torch.no_grad():
        reference = tiny_model(sample)
    assert emulated(RUN, str(tmp_path / "x.npy"), *METHODS, env=subprocess_env).split()[0] == "AVX2"  # torch sees no AVX-512
    for name in METHODS:
        out = torch.from_numpy(np.load(tmp_path / f"{name}.npy"))
        print(f"{name}: SQNR {sqnr_db(reference, out):.1f} dB on the emulated AVX2 CPU")
        assert sqnr_db(reference, out) > 15 and (out.argmax(1) == reference.argmax(1)).float().mean() >= 0.75, name


def test_full_range_onnx_weights_do_saturate_there(tiny_model, tmp_path, subprocess_env):
    """The control: the same QDQ model with 8-bit weights loses its logits' scale on that CPU, so the test above means something."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgequant.quantize.methods import onnx as ort_method

    images, _ = make_digits(72, 5)
    x = to_input(torch.from_numpy(images))
    ort_method._export_onnx(tiny_model, tmp_path / "fp32.onnx")
    quant_pre_process(str(tmp_path / "fp32.onnx"), str(tmp_path / "pre.onnx"))
    options = {"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8}
    quantize_static(str(tmp_path / "pre.onnx"), str(tmp_path / "full.onnx"), ort_method._Reader(x[:64]), reduce_range=False, **options)
    np.save(tmp_path / "x.npy", x[64:].numpy())
    emulated(CONTROL, str(tmp_path / "full.onnx"), str(tmp_path / "out.npy"), str(tmp_path / "x.npy"), env=subprocess_env)
    with torch.no_grad():
        reference = tiny_model(x[64:])
    sqnr = sqnr_db(reference, torch.from_numpy(np.load(tmp_path / "out.npy")))
    print(f"full-range weights: SQNR {sqnr:.1f} dB on the emulated AVX2 CPU")
    assert sqnr < 15
