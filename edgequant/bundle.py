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

from edgequant.data import load_prepared, to_input
from edgequant.io import atomic_dir
from edgequant.layers import net_macs
from edgequant.model import common_model
from edgequant.registry import get_method
from edgequant.roofline import ort_gemm_model

RUNTIMES = ("onnxruntime", "executorch-xnnpack")  # what runs on a device without the training stack
GEMM_N = 512  # the device's roofline GEMMs: large enough to reach its peak, small enough for a board's memory
PACKAGE = Path(__file__).resolve().parent


def shipped_files(out_dir: Path, static_shapes: bool, batches: list[int]) -> dict[int, str]:
    """The artifact file per batch size: one per size for static shapes, the same file for every size otherwise."""
    shipped = json.loads((out_dir / "meta.json").read_text()).get("shipped")
    # The same rule as the benchmark's read_meta: a plain file name inside the method's folder, so a
    # damaged or hostile meta.json cannot copy a file from elsewhere into a bundle that leaves the machine.
    if not isinstance(shipped, str) or Path(shipped).name != shipped or not (out_dir / shipped).is_file():
        remedy = f"re-run `dvc repro quantize@{out_dir.name}`"
        raise ValueError(f"{out_dir / 'meta.json'}: names no file of {out_dir} as the one shipped ({shipped!r}); {remedy}")
    if static_shapes:
        return {bs: f"{out_dir.name}/model_b{bs}{Path(shipped).suffix}" for bs in batches}
    return dict.fromkeys(batches, f"{out_dir.name}/{shipped}")


def make_bundle(artifacts: Path, test: Path, methods: list[str], batches: list[int], images: int, out: Path) -> list[str]:
    """Write the bundle into `out` (replaced whole); returns the methods it holds."""
    kept = [m for m in methods if get_method(m).runtime in RUNTIMES]
    if not kept:
        raise ValueError(f"none of {methods} runs on {' or '.join(RUNTIMES)}: nothing to bundle")
    split = load_prepared(test)
    x, labels = to_input(split["images"][:images]), split["labels"][:images]
    with atomic_dir(out) as tmp:
        model = common_model(artifacts, kept)
        manifest = {"model": model, "macs_per_image": sum(net_macs(model).values()), "methods": {}}
        for name in kept:
            method = get_method(name)
            files = shipped_files(artifacts / name, method.static_shapes, batches)
            (tmp / name).mkdir()
            for f in set(files.values()):
                shutil.copy(artifacts / f, tmp / f)
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
        shutil.copy(PACKAGE / "bench_runner.py", tmp / "run_bench.py")
        shutil.copy(PACKAGE / "machine.py", tmp / "machine.py")
    return kept
