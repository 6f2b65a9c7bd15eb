"""PT2E static INT8: torch.export → torchao prepare/convert → X86InductorQuantizer → torch.compile."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import torch

from edgequant.artifacts.read import read_pt2
from edgequant.data.splits import batches
from edgequant.files import write_bytes
from edgequant.model.layers import layer_outputs, sqnr_db
from edgequant.model.zoo import Classifier, model_of
from edgequant.quantize.catalog import Exported, register


def calibrate_and_convert(model: Classifier, calib: torch.Tensor, quantizer) -> torch.fx.GraphModule:
    """Insert observers for `quantizer`, run the calibration images through, convert to INT8.

    The graph is exported with a dynamic batch so calibration can use any batch; each target
    shape is exported again from the converted module (static shapes are what devices run).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=4096)
    graph = torch.export.export(model.eval(), (model.example_input(2),), dynamic_shapes={"x": {0: batch}}).module()
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for chunk in batches(calib):
            prepared(chunk)
    converted = convert_pt2e(prepared)
    drop_unused_attributes(converted)
    return converted


def drop_unused_attributes(gm: torch.fx.GraphModule) -> None:
    """Delete parameters no node reads any more: convert_pt2e folds INT8 weights into new
    constants but leaves the FP32 originals attached, and export would save both."""
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used and not any(u.startswith(name + ".") for u in used):
            owner, _, leaf = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, leaf)


def quantized_layer_sqnr(model: Classifier, converted: torch.fx.GraphModule, x: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) of each conv/linear output of the INT8-simulating graph against the FP32 model.

    Errors accumulate through the network, so a low value points at the first layer that loses precision.
    """
    reference = layer_outputs(model, x)
    targets = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default}
    captured: list[torch.Tensor] = []

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node.op == "call_function" and node.target in targets:
                captured.append(out.detach())
            return out

    with torch.no_grad():
        Recorder(converted).run(x)
    if len(captured) != len(reference):
        raise RuntimeError(f"found {len(captured)} conv/linear ops in the quantized graph, expected {len(reference)}")
    return {name: sqnr_db(ref, q) for (name, ref), q in zip(reference.items(), captured, strict=True)}


def export_static(module: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`module` exported for the static shape of `example` (devices run static shapes)."""
    return torch.export.export(module, (example,))


# Debug provenance export keeps on every node: source stack traces (absolute paths of this checkout),
# module paths and pass history with Python object ids. None of it is needed to run the program.
DEBUG_META = ("stack_trace", "from_node", "nn_module_stack", "source_fn_stack", "torch_fn")


def save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    """Save a release build of `program`: no debug metadata and no sample inputs (800 KB at batch 256),
    written through a buffer so the archive's inner folder name, and so the bytes, do not depend on `path`."""
    for node in program.graph.nodes:
        for key in DEBUG_META:
            node.meta.pop(key, None)
    program.example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    write_bytes(path, compress_metadata(buffer.getvalue()))


def compress_metadata(archive: bytes) -> bytes:
    """Deflate the JSON records of a .pt2 archive and leave tensor records stored as they are.

    torch.export.save stores everything uncompressed; the serialized graph and its weight table are
    32 KB of JSON next to 1.2 MB of INT8 weights, and deflate makes them 2.6 KB. torch.export.load reads
    deflated records, so this is the file a device ships. Fixed timestamps keep the bytes reproducible.
    """
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w") as dst:
        for record in src.infolist():
            info = zipfile.ZipInfo(record.filename, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if record.filename.endswith(".json") else zipfile.ZIP_STORED
            dst.writestr(info, src.read(record), compresslevel=9)
    return out.getvalue()


@register("pt2e_x86", runtime="pytorch-inductor", precision="int8", baseline="fp32", static_shapes=True)
class PT2EX86:
    """Static INT8 (PT2E, X86InductorQuantizer, calibrated) compiled by inductor: PyTorch's x86 server path."""

    @staticmethod
    def export(model: Classifier, calib: torch.Tensor, sample: torch.Tensor, out_dir: Path, batch_sizes: tuple[int, ...]) -> Exported:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        converted = calibrate_and_convert(model, calib, quantizer)
        paths = []
        for bs in batch_sizes:
            save_program(export_static(converted, model.example_input(bs)), out_dir / f"model_b{bs}.pt2")
            paths.append(out_dir / f"model_b{bs}.pt2")
        return Exported(paths[0], quantized_layer_sqnr(model, converted, sample))

    @staticmethod
    def load(out_dir: Path, batch_size: int, threads: int):
        import torch._inductor.config as inductor_config
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401  registers the quantized_decomposed ops the .pt2 uses

        torch.set_num_threads(threads)
        # Freezing folds the INT8 weights into prepacked oneDNN constants; without it the graph
        # re-quantizes weights on every call. Static shapes: freezing with dynamic batch crashed.
        inductor_config.freezing = True
        path = out_dir / f"model_b{batch_size}.pt2"
        program = torch.export.load(read_pt2(path, "re-run `dvc repro quantize@pt2e_x86`"))
        compiled = torch.compile(program.module(), dynamic=False)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return compiled(x)

        run(torch.zeros(batch_size, *model_of(out_dir).input_shape))  # compile now, not inside the first timed call
        return run
