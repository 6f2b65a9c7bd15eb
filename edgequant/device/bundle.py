"""The bench bundle: the shipped ONNX and ExecuTorch artifacts, a small input set with FP32's answers, and a runner.

Copy the folder to a device that has only the runtimes (onnxruntime; ExecuTorch's runtime for `.pte`)
and run `python run_bench.py`: it writes the benchmark's metrics JSON with the device's machine record.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from edgequant.artifacts.read import read_onnx, read_pte, read_record
from edgequant.data.splits import load_prepared, to_input
from edgequant.files import atomic_dir
from edgequant.measure.roofline import ort_gemm_model
from edgequant.model.layers import net_macs
from edgequant.model.zoo import common_model
from edgequant.quantize.catalog import get_method
from edgequant.quantize.refusal import refusals

RUNTIMES = ("onnxruntime", "executorch-xnnpack")  # what runs on a device without the training stack
# The input set's float32 bytes: run_bench.py reads at most 64 MiB of inputs, and a deflated record of the
# archive may stand for at most 16 MiB (edgequant/artifacts/zipcheck.py); 1000 MNIST images are 3.1 MB.
INPUT_BYTES = 12 << 20
GEMM_N = 512  # the device's roofline GEMMs: large enough to reach its peak, small enough for a board's memory
PACKAGE = Path(__file__).resolve().parents[1]
# What run_bench.py imports beside it in the bundle (standard library only), by the name it has there.
RUNNER_MODULES = {"machine.py": "measure/machine.py", "zipcheck.py": "artifacts/zipcheck.py", "flatcheck.py": "artifacts/flatcheck.py"}


def shipped_files(artifacts: Path, method: str, static_shapes: bool, batches: list[int]) -> dict[int, str]:
    """The artifact file per batch size: one per size for static shapes, the same file for every size otherwise.
    The record and the files are checked as the benchmark checks them (artifacts.read_record): regular files in
    the method's directory, reached through no symbolic link."""
    _, shipped = read_record(artifacts, method)
    if static_shapes:
        return {bs: f"{method}/model_b{bs}{shipped.suffix}" for bs in batches}
    return dict.fromkeys(batches, f"{method}/{shipped.name}")


def copy_artifact(artifacts: Path, name: str, method: str, batch: int, out: Path) -> None:
    """Copy one artifact file into the bundle: the bytes the loader's own checks passed, never read through a link."""
    path, remedy = artifacts / name, f"re-run `dvc repro quantize@{method}`"
    data = read_pte(path, remedy, batch) if path.suffix == ".pte" else read_onnx(path, remedy)
    (out / name).write_bytes(data)


def input_set(split: dict[str, torch.Tensor], images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The bundle's images and labels: `images` test images drawn at random (seeded, kept in the split's order), as many
    as fit INPUT_BYTES as float32 whatever the image size, so an ordered split (by class, say) still gives every class."""
    per_image = 4 * int(torch.tensor(split["images"].shape[1:]).prod())
    count = max(1, min(images, len(split["labels"]), INPUT_BYTES // per_image))
    drawn = torch.randperm(len(split["labels"]), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return to_input(split["images"][drawn]), split["labels"][drawn]


def make_bundle(artifacts: Path, test: Path, methods: list[str], batches: list[int], images: int, out: Path) -> list[str]:
    """Write the bundle into `out` (replaced whole); returns the methods it holds (a method its runtime refused has nothing to bundle)."""
    refused = refusals(artifacts, methods, {m: get_method(m).baseline for m in methods})
    kept = [m for m in methods if get_method(m).runtime in RUNTIMES and m not in refused]
    if not kept:
        raise ValueError(f"none of {methods} runs on {' or '.join(RUNTIMES)}: nothing to bundle")
    x, labels = input_set(load_prepared(test), images)
    shipped = {name: shipped_files(artifacts, name, get_method(name).static_shapes, batches) for name in kept}
    with atomic_dir(out) as tmp:
        model = common_model(artifacts, kept)
        manifest = {
            "model": str(model),
            "input_shape": list(model.input_shape),
            "macs_per_image": sum(net_macs(model).values()),
            "methods": {},
        }
        for name in kept:
            method, files = get_method(name), shipped[name]
            (tmp / name).mkdir()
            for f, batch in sorted({f: bs for bs, f in files.items()}.items()):
                copy_artifact(artifacts, f, name, batch, tmp)
            manifest["methods"][name] = {
                "runtime": method.runtime,
                "precision": method.precision,
                "baseline": method.baseline,
                "files": files,
            }
        reference = get_method("fp32").load(artifacts / "fp32", len(x), 1)
        with torch.no_grad():
            expected = reference(x).argmax(1)
        np.savez_compressed(tmp / "inputs.npz", images=x.numpy(), labels=labels.numpy(), fp32_predictions=expected.numpy())
        for precision in ("fp32", "int8"):
            (tmp / f"gemm_{precision}.onnx").write_bytes(ort_gemm_model(precision, GEMM_N).SerializeToString())
        (tmp / "gemm.json").write_text(json.dumps({"n": GEMM_N, "fp32": "MatMul", "int8": "MatMulInteger"}) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.copy(PACKAGE / "device/run_bench.py", tmp / "run_bench.py")
        for name, module in RUNNER_MODULES.items():
            shutil.copy(PACKAGE / module, tmp / name)
    return kept
