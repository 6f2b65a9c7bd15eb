"""ONNX Runtime: FP32 and static QDQ INT8, the portable path for NPUs and other runtimes."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from edgequant.artifacts.read import read_onnx
from edgequant.data.splits import batches, predict
from edgequant.files import atomic_path
from edgequant.model.layers import layer_outputs, sqnr_db
from edgequant.model.zoo import Classifier
from edgequant.quantize.catalog import Clocked, Exported, Labelled, add_method, register, time_calls
from edgequant.quantize.search import Trial, keep_fp32, logits_of, score, summary

INPUT = "pixels"
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")  # the nodes that hold a layer's weights, in the order the layers run


def _export_onnx(model: Classifier, path: Path) -> None:
    """Dynamo export with a dynamic batch: ORT handles any batch from one file."""
    program = torch.onnx.export(
        model.eval(),
        (model.example_input(2),),
        dynamo=True,
        input_names=[INPUT],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        verbose=False,
    )
    with atomic_path(path) as tmp:
        program.save(str(tmp))
        drop_node_metadata(tmp)


def drop_node_metadata(path: Path) -> None:
    """Remove the exporter's per-node debug metadata: source stack traces carry the absolute path of
    the checkout, so the same model exported in two clones differed in bytes (and size), DVC saw a
    change, and the shipped file disclosed local paths. ORT never reads it."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def _ort_errors() -> tuple[type[Exception], ...]:
    """The exceptions ONNX Runtime raises for a model it cannot load (its own classes, not RuntimeError)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return (state.Fail, state.InvalidGraph, state.InvalidProtobuf, state.InvalidArgument, state.NotImplemented)


def _session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    model = read_onnx(path, f"re-run `dvc repro quantize@{path.parent.name}`")
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except (RuntimeError, *_ort_errors()) as exc:
        raise ValueError(
            f"{path}: ONNX Runtime refuses it ({str(exc).splitlines()[0]}); re-run `dvc repro quantize@{path.parent.name}`"
        ) from exc


def _runner(session):
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {INPUT: x.numpy()})[0])

    return run


def _load(out_dir: Path, batch_size: int, threads: int):
    return _runner(_session(out_dir / "model.onnx", threads))


def _clock(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, calls: int) -> Clocked:
    """Each call around the harness's runner and inside ONNX Runtime: its profiler's `model_run` event, one per run()."""
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(out_dir / "model.onnx", threads, str(Path(tmp) / "ort"))
        wall_ms = time_calls(_runner(session), x, calls)
        events = json.loads(Path(session.end_profiling()).read_text())
    internal = [e["dur"] / 1e3 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return Clocked("ONNX Runtime's profiler: each run's model_run event", wall_ms, internal)


def _profile(out_dir: Path, batch_size: int, threads: int, x: torch.Tensor, runs: int) -> dict[str, float]:
    return profile_onnx(lambda prefix: _session(out_dir / "model.onnx", threads, prefix), x, runs)


@register("onnx_fp32", runtime="onnxruntime", precision="fp32", baseline="onnx_fp32")
class OnnxFP32:
    """ONNX (dynamo export), FP32, on ONNX Runtime's CPU provider."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        _export_onnx(model, out_dir / "model.onnx")
        return Exported(out_dir / "model.onnx")

    load = staticmethod(_load)
    profile = staticmethod(_profile)
    clock = staticmethod(_clock)


class _Reader:
    """Feeds calibration batches to ORT's calibrator."""

    def __init__(self, calib: torch.Tensor):
        self._batches = iter([{INPUT: chunk.numpy()} for chunk in batches(calib)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # some calibrators call it; one pass is all we need
        pass


def onnx_layer_sqnr(model: Classifier, path: Path, x: torch.Tensor) -> dict[str, float]:
    """SQNR of each Conv/Gemm/MatMul output of the QDQ model against the FP32 model's layers."""
    import onnx

    graph_model = onnx.load(str(path))
    compute = [n.output[0] for n in graph_model.graph.node if n.op_type in COMPUTE_OPS]
    graph_model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in compute)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(graph_model, str(probe))
        outputs = _session(probe, 1).run(compute, {INPUT: x.numpy()})
    reference = layer_outputs(model, x)
    if len(outputs) != len(reference):
        raise RuntimeError(f"found {len(outputs)} conv/linear ops in {path.name}, expected {len(reference)}")
    return {name: sqnr_db(ref, torch.from_numpy(np.asarray(q))) for (name, ref), q in zip(reference.items(), outputs, strict=True)}


def drop_int32_zero_points(path: Path) -> None:
    """Remove the all-zero zero points the quantizer writes for each INT32 bias.

    The ONNX spec fixes an INT32 DequantizeLinear's zero point at 0 and makes the input optional,
    so these 234 int32 zeros (936 bytes plus their names) only add to the shipped file.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) != 3:
            continue
        x, zero_point = initializers.get(node.input[0]), initializers.get(node.input[2])
        if x is None or zero_point is None or x.data_type != onnx.TensorProto.INT32:
            continue
        if not numpy_helper.to_array(zero_point).any():
            del node.input[2]
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(path))


def _preprocess(model: Classifier, directory: Path) -> Path:
    """The FP32 export, shape-inferred and cleaned up as the quantizer relies on (BatchNorm folded into convs)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, pre = directory / "fp32.onnx", directory / "pre.onnx"
    _export_onnx(model, fp32)
    quant_pre_process(str(fp32), str(pre))
    return pre


def _qdq(pre: Path, dest: Path, calib: torch.Tensor, per_channel: bool, calibrator: str, exclude: tuple[str, ...] = ()) -> None:
    """Static QDQ INT8 of the preprocessed `pre` into `dest`; nodes named in `exclude` stay FP32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(pre),
        str(dest),
        _Reader(calib),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, calibrator),
        nodes_to_exclude=list(exclude),
    )
    drop_int32_zero_points(dest)


def compute_nodes(model: Classifier, pre: Path) -> dict[str, str]:
    """{layer: ONNX node} for each conv/linear layer of `model` in its preprocessed export: both run in the
    same order, and each node's weight must have its layer's shape, or the pairing is refused."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(pre)).graph
    weights = {i.name: numpy_helper.to_array(i).shape for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type in COMPUTE_OPS]
    modules = dict(model.named_modules())
    layers = list(layer_outputs(model, model.example_input()))
    if len(nodes) != len(layers):
        raise RuntimeError(f"found {len(nodes)} conv/linear ops in {pre.name}, expected {len(layers)}")
    for layer, node in zip(layers, nodes, strict=True):
        expected = tuple(modules[layer].weight.shape)
        if weights.get(node.input[1]) not in (expected, expected[::-1]):  # Gemm may hold the weight transposed
            raise RuntimeError(f"{pre.name}: node {node.name} has weight shape {weights.get(node.input[1])}, layer {layer} {expected}")
    return {layer: node.name for layer, node in zip(layers, nodes, strict=True)}


def _settings(per_channel: bool, calibrator: str) -> dict[str, object]:
    return {
        "weights": f"int8 {'per-channel' if per_channel else 'per-tensor'}, 7-bit range (reduce_range)",
        "activations": f"uint8 per-tensor, {calibrator} calibration",
        "why": "x86 without VNNI saturates full-range u8 x s8 pairs (ONNX Runtime quantization docs: reduce_range)",
    }


def _quantize_qdq(
    model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, per_channel: bool, calibrator: str
) -> Exported:
    """Static QDQ INT8 of `model`: weights per channel or per tensor, activations calibrated by `calibrator` (an ORT CalibrationMethod)."""
    with tempfile.TemporaryDirectory() as tmp:
        pre = _preprocess(model, Path(tmp))
        with atomic_path(out_dir / "model.onnx") as dest:
            _qdq(pre, dest, calib, per_channel, calibrator)
    shipped = out_dir / "model.onnx"
    return Exported(shipped, onnx_layer_sqnr(model, shipped, sample), _settings(per_channel, calibrator))


def _quantize_qdq_aware(
    model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, labelled: Labelled, per_channel: bool, calibrator: str
) -> Exported:
    """`_quantize_qdq` with the layers edgequant.quantize.search chooses kept in FP32; a budget it cannot meet ships its best
    configuration, recorded as such (`budget_met: false`) for the gate to judge."""

    fp32_logits = logits_of(model.eval(), labelled.val_images)
    with tempfile.TemporaryDirectory() as tmp:
        pre = _preprocess(model, Path(tmp))
        node_of = compute_nodes(model, pre)
        layers = list(node_of)

        def measure(kept: tuple[str, ...]) -> Trial:
            trial = Path(tmp) / "trial.onnx"
            _qdq(pre, trial, calib, per_channel, calibrator, tuple(node_of[layer] for layer in kept))
            session = _session(trial, torch.get_num_threads())
            logits = predict(lambda chunk: torch.from_numpy(session.run(None, {INPUT: chunk.numpy()})[0]), labelled.val_images, 500)
            return score(labelled, fp32_logits, logits, kept)

        search = keep_fp32(layers, measure, labelled.max_drop_pp)
        with atomic_path(out_dir / "model.onnx") as dest:
            _qdq(pre, dest, calib, per_channel, calibrator, tuple(node_of[layer] for layer in search.kept))
    shipped = out_dir / "model.onnx"
    settings = {**_settings(per_channel, calibrator), **summary(search)}
    return Exported(shipped, onnx_layer_sqnr(model, shipped, sample), settings)


CALIBRATORS = ("MinMax", "Percentile", "Entropy", "Distribution")  # onnxruntime.quantization.CalibrationMethod names


@dataclasses.dataclass(frozen=True)
class QdqConfig:
    """One static QDQ INT8 variant of ONNX Runtime's quantize_static, as a value: a new variant is one entry
    in QDQ_VARIANTS plus its name in params.yaml. Weights are int8 with a 7-bit range, activations uint8 per tensor."""

    description: str
    per_channel: bool = True  # one weight scale per output channel; False: one per tensor
    calibrator: str = "MinMax"  # how activation ranges are read from the calibration images
    aware: bool = False  # keep the most sensitive layers FP32 until the validation drop's 95 % upper bound is within budget

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"QdqConfig.calibrator {self.calibrator!r} is not one of {', '.join(CALIBRATORS)}")

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
            return _quantize_qdq_aware(model, calib, sample, out_dir, labelled, self.per_channel, self.calibrator)
        return _quantize_qdq(model, calib, sample, out_dir, self.per_channel, self.calibrator)


# ONNX Runtime runs u8 x s8 products on x86 without VNNI with vpmaddubsw, which sums pairs into a
# saturating int16: 2 x 255 x 127 overflows it. Its documented remedy is reduce_range, 7-bit weights
# (2 x 255 x 63 fits). Measured on the tiny test model: under an emulated AVX2 CPU (qemu -cpu Haswell)
# full-range weights give logits 0.74x too small (SQNR 11.8 dB), 7-bit ones 42.3 dB; on a VNNI CPU,
# which cannot saturate, 7 bits cost 2 dB (44.3 -> 42.3). One artifact must run right on every x86.
# No entropy variant: through quantize_static, ORT 1.32's entropy calibrator searches 128 bins for 128
# quantized bins, a single candidate (the full range), and wrote activation scales identical to MinMax.
QDQ_VARIANTS = {
    "onnx_qdq_int8": QdqConfig(
        "ONNX static INT8 in QDQ format (per-channel 7-bit-range weights, MinMax-calibrated): ORT on any x86 or Arm, NPU toolchains."
    ),
    "onnx_qdq_int8_per_tensor": QdqConfig(
        "onnx_qdq_int8 with one weight scale per tensor: what per-tensor-only NPUs and older toolchains get.", per_channel=False
    ),
    "onnx_qdq_int8_percentile": QdqConfig(
        "onnx_qdq_int8 with activation ranges at ORT's default percentile (99.999 %) instead of MinMax.", calibrator="Percentile"
    ),
    "onnx_qdq_int8_per_tensor_aware": QdqConfig(
        "onnx_qdq_int8_per_tensor keeping its most sensitive layers in FP32 until the validation drop's 95 % upper bound is within budget.",
        per_channel=False,
        aware=True,
    ),
}

for _name, _config in QDQ_VARIANTS.items():
    add_method(
        _name,
        runtime="onnxruntime",
        precision="int8",
        baseline="onnx_fp32",
        description=_config.description,
        export=_config.export,
        load=_load,
        profile=_profile,
        clock=_clock,
        labelled=_config.aware,
    )


def profile_onnx(profiled_session: Callable[[str], object], x: torch.Tensor, runs: int) -> dict[str, float]:
    """Median milliseconds per call of each node of an ONNX Runtime session, from its JSON profile.

    `profiled_session(prefix)` builds the session as the measurement does (threads, graph
    optimizations), with profiling on and its JSON written under `prefix`.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = profiled_session(str(Path(tmp) / "ort"))
        feed = {session.get_inputs()[0].name: x.numpy()}
        for _ in range(runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    times: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            times[f"{e['args']['op_name']} {e['name'].removesuffix('_kernel_time')}"].append(e["dur"] / 1e3)
    return {op: float(np.median(t)) for op, t in times.items()}
