"""ExecuTorch with the XNNPACK delegate: the on-device path for phones and embedded boards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from edgequant.artifacts import read_pte
from edgequant.io import atomic_path
from edgequant.methods.pt2e import calibrate_and_convert, export_static, quantized_layer_sqnr
from edgequant.model import Classifier
from edgequant.profile import profile_executorch
from edgequant.registry import Exported, register


def _write_pte(module: torch.nn.Module, example_input: Callable[[int], torch.Tensor], out_dir: Path, batch_sizes: tuple[int, ...]) -> Path:
    """Lower `module` to XNNPACK once per batch size (a dynamic-batch .pte failed at run time)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    paths = []
    for bs in batch_sizes:
        program = to_edge_transform_and_lower(export_static(module, example_input(bs)), partitioner=[XnnpackPartitioner()])
        with atomic_path(out_dir / f"model_b{bs}.pte") as tmp:
            tmp.write_bytes(program.to_executorch().buffer)
        paths.append(out_dir / f"model_b{bs}.pte")
    return paths[0]


def _read(out_dir: Path, batch_size: int) -> bytes:
    """The checked .pte for `batch_size`, with XNNPACK's process-wide thread pool sized for this run
    (it is sized on first use, so it is reset before every load)."""
    return read_pte(out_dir / f"model_b{batch_size}.pte", f"re-run `dvc repro quantize@{out_dir.name}`")


def _use_threads(threads: int) -> None:
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


def _load_pte(out_dir: Path, batch_size: int, threads: int):
    from executorch.runtime import Runtime

    _use_threads(threads)
    data = _read(out_dir, batch_size)
    program = Runtime.get().load_program(data)
    method = program.load_method("forward")

    def run(x: torch.Tensor) -> torch.Tensor:
        return method.execute([x])[0]

    run.keep_alive = (data, program)  # the method reads from both without owning them
    return run


def _profile_pte(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, runs: int) -> dict[str, float]:
    _use_threads(threads)
    return profile_executorch(_read(out_dir, batch_size), x, runs)


@register("executorch_xnnpack_fp32", runtime="executorch-xnnpack", precision="fp32", baseline="executorch_xnnpack_fp32", static_shapes=True)
class ExecuTorchFP32:
    """ExecuTorch .pte, FP32, delegated to XNNPACK: the on-device FP32 baseline."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        return Exported(_write_pte(model.eval(), model.example_input, out_dir, batch_sizes))

    load = staticmethod(_load_pte)
    profile = staticmethod(_profile_pte)


@register("executorch_xnnpack_int8", runtime="executorch-xnnpack", precision="int8", baseline="executorch_xnnpack_fp32", static_shapes=True)
class ExecuTorchInt8:
    """ExecuTorch .pte, static INT8 (XNNPACKQuantizer, per-channel, calibrated): ARM NEON / x86 INT8 kernels."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        converted = calibrate_and_convert(model, calib, quantizer)
        return Exported(_write_pte(converted, model.example_input, out_dir, batch_sizes), quantized_layer_sqnr(model, converted, sample))

    load = staticmethod(_load_pte)
    profile = staticmethod(_profile_pte)
