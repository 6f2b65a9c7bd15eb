"""ExecuTorch with the XNNPACK delegate: the on-device path for phones and embedded boards."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from edgequant.artifacts.read import read_pte
from edgequant.data.splits import predict
from edgequant.files import atomic_path
from edgequant.model.layers import layer_outputs
from edgequant.model.zoo import Classifier
from edgequant.quantize.catalog import Clocked, Exported, Labelled, add_method, register, time_calls
from edgequant.quantize.methods.pt2e import calibrate_and_convert, drop_unused_attributes, export_static, quantized_layer_sqnr
from edgequant.quantize.refusal import Unsupported
from edgequant.quantize.search import Trial, keep_fp32, logits_of, score, summary


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
    """The checked .pte for `batch_size` (artifacts.read_pte: a truncated file, random bytes or names ExecuTorch
    would abort on are refused before it parses them)."""
    return read_pte(out_dir / f"model_b{batch_size}.pte", _remedy(out_dir), batch_size)


def _remedy(out_dir: Path) -> str:
    return f"re-run `dvc repro quantize@{out_dir.name}`"


def _use_threads(threads: int) -> None:
    """Size XNNPACK's process-wide thread pool for this run (it is sized on first use, so it is reset before every load)."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)


def _load_pte(out_dir: Path, batch_size: int, threads: int, etdump: bool = False):
    from executorch.runtime import Runtime

    _use_threads(threads)
    data = _read(out_dir, batch_size)
    try:  # what passes the checks can still be damaged inside (a scrambled table, a delegate's data)
        program = Runtime.get().load_program(data, enable_etdump=etdump)
        method = program.load_method("forward")
    except RuntimeError as exc:
        where = out_dir / f"model_b{batch_size}.pte"
        raise ValueError(f"{where}: ExecuTorch refuses it ({str(exc).strip().splitlines()[0]}); {_remedy(out_dir)}") from exc

    def run(x: torch.Tensor) -> torch.Tensor:
        return method.execute([x])[0]

    run.keep_alive = (data, program)  # the method reads from both without owning them
    return run


def _clock_pte(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, calls: int) -> Clocked:
    """Each call around the harness's runner and inside the ExecuTorch runtime: ETDump's `Method::execute` event."""
    run = _load_pte(out_dir, batch_size, threads, etdump=True)
    wall_ms = time_calls(run, x, calls)
    frame = _etdump_frame(run.keep_alive[1])
    executes = frame[(frame["event_block_name"] == "Execute") & (frame["event_name"] == "Method::execute")]
    internal = [float(ms) for ms in executes.iloc[0]["raw"]] if len(executes) else []
    return Clocked("ExecuTorch's ETDump: each execute's Method::execute event", wall_ms, internal)


def _etdump_frame(program):
    """The events an ETDump-enabled program recorded, one row per event name (Inspector's dataframe, times in ms)."""
    from executorch.devtools import Inspector

    with tempfile.TemporaryDirectory() as tmp:
        etdump = Path(tmp) / "run.etdp"
        program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
        with warnings.catch_warnings():
            # Timing is all we ask for; without intermediate outputs it warns that tensor data is absent.
            warnings.filterwarnings("ignore", message="Output Buffer not found", category=UserWarning)
            return Inspector(etdump_path=str(etdump)).to_dataframe()


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
    clock = staticmethod(_clock_pte)


def _quantizer(per_channel: bool = True, fp32_layers: tuple[str, ...] = (), qat: bool = False):
    """XNNPACK's symmetric INT8 quantizer; the layers named in `fp32_layers` are left unannotated, so they run FP32."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantizer import get_module_name_filter

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat))
    if fp32_layers:  # its set_module_name refuses None; a filter is how XNNPACKQuantizer skips modules
        skipped = [get_module_name_filter(name) for name in fp32_layers]
        quantizer.set_filter_function(lambda node: not any(f(node) for f in skipped))
    return quantizer


def _xnnpack_logits(
    module: torch.nn.Module, example_input: Callable[[int], torch.Tensor], x: torch.Tensor, batch: int = 500
) -> torch.Tensor:
    """`module` lowered to XNNPACK and run on `x`: the numerics the device gets, and far faster than the
    INT8-simulating graph (10,000 Fashion-MNIST images took 30 s there on 2 cores)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    program = to_edge_transform_and_lower(export_static(module, example_input(batch)), partitioner=[XnnpackPartitioner()])
    data = program.to_executorch().buffer
    _use_threads(torch.get_num_threads())
    method = Runtime.get().load_program(data).load_method("forward")
    return predict(lambda chunk: method.execute([chunk.contiguous()])[0], x, batch)


def _export_aware(
    model: Classifier,
    calib: torch.Tensor,
    sample: torch.Tensor,
    out_dir: Path,
    batch_sizes: tuple[int, ...],
    labelled: Labelled,
    per_channel: bool,
) -> Exported:
    """XNNPACK INT8 with the layers edgequant.quantize.search chooses kept in FP32, each configuration lowered and measured
    on XNNPACK itself; a budget it cannot meet ships its best configuration, recorded as such (`budget_met: false`)."""
    fp32_logits = logits_of(model.eval(), labelled.val_images)
    layers = list(layer_outputs(model, sample[:1]))

    def measure(kept: tuple[str, ...]) -> Trial:
        converted = calibrate_and_convert(model, calib, _quantizer(per_channel, kept))
        return score(labelled, fp32_logits, _xnnpack_logits(converted, model.example_input, labelled.val_images), kept)

    search = keep_fp32(layers, measure, labelled.max_drop_pp)
    converted = calibrate_and_convert(model, calib, _quantizer(per_channel, search.kept))
    settings = {"weights": f"int8 {'per-channel' if per_channel else 'per-tensor'}", **summary(search)}
    shipped = _write_pte(converted, model.example_input, out_dir, batch_sizes)
    return Exported(shipped, quantized_layer_sqnr(model, converted, sample), settings)


QAT_LR = 1e-4  # Adam: a fine-tune of an already trained model, small steps


def train_qat(model: Classifier, labelled: Labelled, calib: torch.Tensor, per_channel: bool = True) -> torch.fx.GraphModule:
    """PT2E quantization-aware training: fake-quantize with XNNPACK's QAT config, fine-tune on the labelled
    calibration images for `labelled.qat_epochs` passes, and convert. Seeded, so the bytes repeat."""
    with torch.random.fork_rng():  # seeded here, without resetting the caller's generator
        torch.manual_seed(0)
        return _fine_tune_and_convert(model, labelled, calib, per_channel)


def _fine_tune_and_convert(model: Classifier, labelled: Labelled, calib: torch.Tensor, per_channel: bool) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    batch = torch.export.Dim("batch", min=2, max=4096)
    graph = torch.export.export(copy.deepcopy(model).train(), (model.example_input(2),), dynamic_shapes={"x": {0: batch}}).module()
    prepared = prepare_qat_pt2e(graph, _quantizer(per_channel, qat=True))
    optimizer = torch.optim.Adam(prepared.parameters(), lr=QAT_LR)
    move_exported_model_to_train(prepared)
    generator = torch.Generator().manual_seed(0)
    for _ in range(labelled.qat_epochs):
        order = torch.randperm(len(calib), generator=generator)
        for i in range(0, len(order) - 1, 64):  # a last batch of one image would break BatchNorm's batch statistics
            idx = order[i : i + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(prepared(calib[idx]), labelled.calib_labels[idx])
            try:
                loss.backward()
            except NotImplementedError as exc:  # autograd has no derivative for one of the model's operators: QAT cannot train it
                raise Unsupported(f"executorch-xnnpack: QAT cannot train the model ({str(exc).strip().splitlines()[0]})") from exc
            optimizer.step()
    move_exported_model_to_eval(prepared)
    converted = convert_pt2e(prepared)
    drop_unused_attributes(converted)
    return converted


def _export_ptq(
    model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...], per_channel: bool
) -> Exported:
    converted = calibrate_and_convert(model, calib, _quantizer(per_channel))
    return Exported(_write_pte(converted, model.example_input, out_dir, batch_sizes), quantized_layer_sqnr(model, converted, sample))


def _export_qat(
    model: Classifier,
    calib: torch.Tensor,
    sample: torch.Tensor,
    out_dir: Path,
    batch_sizes: tuple[int, ...],
    labelled: Labelled,
    per_channel: bool,
) -> Exported:
    converted = train_qat(model, labelled, calib, per_channel)
    settings = {
        "weights": f"int8 {'per-channel' if per_channel else 'per-tensor'}",
        "fine_tune": f"{labelled.qat_epochs} passes over {len(calib)} calibration images, Adam lr {QAT_LR}",
    }
    shipped = _write_pte(converted, model.example_input, out_dir, batch_sizes)
    return Exported(shipped, quantized_layer_sqnr(model, converted, sample), settings)


@dataclasses.dataclass(frozen=True)
class XnnpackConfig:
    """One INT8 variant of XNNPACK's symmetric quantizer, lowered to an ExecuTorch .pte per batch size, as a value:
    a new variant is one entry in XNNPACK_VARIANTS plus its name in params.yaml."""

    description: str
    per_channel: bool = True  # one weight scale per output channel; False: one per tensor
    aware: bool = False  # keep the most sensitive layers FP32 until the validation drop's 95 % upper bound is within budget
    qat: bool = False  # fine-tune with fake quantization on the labelled calibration images before converting

    def __post_init__(self) -> None:
        if self.aware and self.qat:
            raise ValueError("XnnpackConfig: aware (a search over PTQ configurations) and qat (one fine-tuned model) exclude each other")

    @property
    def labelled(self) -> bool:
        return self.aware or self.qat

    def export(
        self,
        model: Classifier,
        calib: torch.Tensor,
        sample: torch.Tensor,
        out_dir: Path,
        batch_sizes: tuple[int, ...],
        labelled: Labelled | None = None,
    ) -> Exported:
        if self.aware:
            return _export_aware(model, calib, sample, out_dir, batch_sizes, labelled, self.per_channel)
        if self.qat:
            return _export_qat(model, calib, sample, out_dir, batch_sizes, labelled, self.per_channel)
        return _export_ptq(model, calib, sample, out_dir, batch_sizes, self.per_channel)


XNNPACK_VARIANTS = {
    "executorch_xnnpack_int8": XnnpackConfig(
        "ExecuTorch .pte, static INT8 (XNNPACKQuantizer, per-channel, calibrated): ARM NEON / x86 INT8 kernels."
    ),
    "executorch_xnnpack_int8_per_tensor_aware": XnnpackConfig(
        "ExecuTorch/XNNPACK INT8 per tensor, its most sensitive layers kept FP32 until the validation drop's 95 % upper bound"
        " is within budget.",
        per_channel=False,
        aware=True,
    ),
    "executorch_xnnpack_qat": XnnpackConfig(
        "ExecuTorch .pte, INT8 from quantization-aware training (PT2E QAT, XNNPACK per-channel QAT config) on the calibration images.",
        qat=True,
    ),
}

for _name, _config in XNNPACK_VARIANTS.items():
    add_method(
        _name,
        runtime="executorch-xnnpack",
        precision="int8",
        baseline="executorch_xnnpack_fp32",
        description=_config.description,
        export=_config.export,
        load=_load_pte,
        profile=_profile_pte,
        clock=_clock_pte,
        static_shapes=True,
        labelled=_config.labelled,
    )


def profile_executorch(pte: bytes, x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median milliseconds per call of each operator in an ExecuTorch program, from its ETDump.

    XNNPACK reports every op it runs inside the delegate ("Convolution (NHWC, QC8) IGEMM #2");
    ops outside it report as themselves. The delegate call and method totals are left out.
    """
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(pte, enable_etdump=True)
    method = program.load_method("forward")
    for _ in range(runs):
        method.execute([x])
    frame = _etdump_frame(program)
    frame = frame[(frame["event_block_name"] == "Execute") & ~frame["event_name"].isin(["DELEGATE_CALL", "Method::execute"])]
    return {row["event_name"]: float(row["p50 (ms)"]) for _, row in frame.iterrows()}
