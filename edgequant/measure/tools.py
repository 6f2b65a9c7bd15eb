"""The runtimes' own benchmark tools, keyed by runtime: where each is, the command that reproduces the harness's
settings, and what its output says. Both ship in the runtimes' wheels (docs/machines.md, "Beside the runtimes' own tools").

A tool reads its model from a path, so it is given a copy of the bytes edgequant's checked readers returned
(edgequant/artifacts/read.py): what a remote could have damaged is refused before any runtime parses it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from edgequant.artifacts.read import read_onnx, read_openvino_ir, read_tflite
from edgequant.files import write_bytes

TOOL_WARMUP_RUNS = 5  # litert-benchmark's own default
MIN_TOOL_RUNS = 10  # timed calls of a tool that counts calls rather than seconds
TOOL_RESOLUTION_MS = 0.01  # both tools write their latencies in milliseconds with two decimals ("53.69", 88.31)


class BelowResolution(ValueError):
    """The tool's figure is below what it can report: the cell cannot be compared (one line why)."""


ONNX_FILE = "model.onnx"  # what edgequant.quantize.methods.onnx loads
# benchmark_app's step-8 log: the compiled model's real properties, one "[ INFO ]   KEY: value" line each.
PROPERTY = re.compile(r"^\[ INFO \]\s+([A-Z_]+): (.*)$")
CHECKED_PROPERTIES = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "ENABLE_CPU_PINNING")
PRECISION_NAMES = {"f32": "float32", "bf16": "bfloat16"}  # the hint as set, as the compiled model reports it back


@dataclasses.dataclass(frozen=True)
class Cell:
    """One (method, batch, threads) comparison: its model copy and input shape (C, H, W)."""

    method: str
    runtime: str
    threads: int
    batch: int
    input_shape: tuple[int, ...]
    model: Path  # the checked copy the tool reads


@dataclasses.dataclass(frozen=True)
class Tool:
    script: str  # console script the runtime's wheel installs
    package: str  # the distribution it comes with
    statistic: str  # how its images/s figure is formed, for the reader of the ratio
    command: Callable[[str, Cell, float, float, Path], list[str]]  # (executable, cell, min_run_time_s, batch_ms, out_dir)
    parse: Callable[[Cell, Path, str], dict]  # (cell, out_dir, console output) -> tool_ips, tool_call_ms_median, config...

    def find(self) -> str | None:
        """The tool beside this interpreter (the venv's bin), else on PATH."""
        return shutil.which(self.script, path=str(Path(sys.executable).parent)) or shutil.which(self.script)

    def version(self) -> str:
        try:
            return f"{self.script} ({self.package} {metadata.version(self.package)})"
        except metadata.PackageNotFoundError:
            return f"{self.script} ({self.package}, version unknown)"


def openvino_command(exe: str, cell: Cell, min_run_time_s: float, batch_ms: float, out_dir: Path) -> list[str]:
    """benchmark_app with the harness's plugin settings: no hint (so the explicit threads and streams apply),
    one synchronous request, the method's precision (f32 but for openvino_bf16), the IR's dynamic batch sized by
    -data_shape (not reshaped)."""
    from edgequant.quantize.methods.openvino import plugin_config

    config = plugin_config(cell.method)

    shape = ",".join(str(d) for d in (cell.batch, *cell.input_shape))
    return [
        exe, "-m", str(cell.model), "-d", "CPU", "-hint", "none", "-api", "sync",
        "-nstreams", str(config["NUM_STREAMS"]), "-nthreads", str(cell.threads),
        "-infer_precision", str(config["INFERENCE_PRECISION_HINT"]), "-data_shape", f"[{shape}]", "-layout", "[NCHW]",
        "-inference_only", "false", "-t", str(max(1, math.ceil(min_run_time_s))),
        "-report_type", "no_counters", "-json_stats", "-report_folder", str(out_dir),
    ]  # fmt: skip


def parse_openvino(cell: Cell, out_dir: Path, console: str) -> dict:
    """FPS (batch · iterations / loop time) and the median per-infer latency from benchmark_app's JSON report,
    and the properties the compiled model reported in the step-8 log."""
    from edgequant.quantize.methods.openvino import plugin_config

    expected = plugin_config(cell.method)
    report = json.loads((out_dir / "benchmark_report.json").read_text())
    results = report["execution_results"]
    config = {m.group(1): m.group(2).strip() for line in console.splitlines() if (m := PROPERTY.match(line.strip()))}
    config = {k: config.get(k) for k in CHECKED_PROPERTIES}
    batch = int(report["configuration_setup"]["batch size"])
    return {
        "tool_ips": float(results["throughput"]),
        "tool_call_ms_median": float(results["latency (ms)"]),
        "tool_batch": batch,
        "tool_config": config,
        "config_match": batch == cell.batch
        and config["INFERENCE_NUM_THREADS"] == str(cell.threads)
        and config["NUM_STREAMS"] == str(expected["NUM_STREAMS"])
        and PRECISION_NAMES[str(expected["INFERENCE_PRECISION_HINT"])] in str(config["INFERENCE_PRECISION_HINT"]),
    }


def litert_command(exe: str, cell: Cell, min_run_time_s: float, batch_ms: float, out_dir: Path) -> list[str]:
    """litert-benchmark on the batch's .tflite: it counts calls, so it makes as many as fill min_run_time_s at the
    harness's last batch time."""
    runs = max(MIN_TOOL_RUNS, math.ceil(min_run_time_s * 1e3 / batch_ms))
    return [
        exe, "--model", str(cell.model), "--num_threads", str(cell.threads),
        "--warmup_runs", str(TOOL_WARMUP_RUNS), "--num_runs", str(runs), "--result_json", str(out_dir / "result.json"),
    ]  # fmt: skip


def parse_litert(cell: Cell, out_dir: Path, console: str) -> dict:
    """images/s from the mean call (the tool's "Throughput" is input MB/s), the median call, and whether the
    CPU accelerator (XNNPACK) took the whole graph with the threads asked for."""
    result = json.loads((out_dir / "result.json").read_text())
    latency = result["latency"]
    if float(latency["avg_ms"]) < TOOL_RESOLUTION_MS:  # a call this short rounds to 0.00: no figure to compare
        raise BelowResolution(
            f"litert-benchmark's mean call rounds to {latency['avg_ms']} ms at its {TOOL_RESOLUTION_MS} ms resolution:"
            f" batch {cell.batch} of this model is too short a call for the tool to time"
        )
    return {
        "tool_ips": cell.batch * 1e3 / float(latency["avg_ms"]),
        "tool_call_ms_median": float(latency["median_ms"]),
        "tool_batch": cell.batch,
        "tool_config": {"num_threads": result["num_threads"], "fully_accelerated": result["fully_accelerated"]},
        "config_match": result["num_threads"] == cell.threads and result["fully_accelerated"] is True,
    }


TOOLS = {
    "openvino": Tool(
        "benchmark_app", "openvino", "batch x iterations / wall time of its Python loop (FPS)", openvino_command, parse_openvino
    ),
    "litert": Tool("litert-benchmark", "ai-edge-litert", "batch / mean call time (perf_counter per call)", litert_command, parse_litert),
}


def get_tool(runtime: str) -> Tool:
    if runtime not in TOOLS:
        raise ValueError(f"no vendor tool for runtime {runtime!r}; known: {', '.join(TOOLS)}")
    return TOOLS[runtime]


def _copy_openvino(out_dir: Path, batch: int, dest: Path) -> Path:
    from edgequant.quantize.methods.openvino import BIN, XML

    text, weights = read_openvino_ir(out_dir / XML, f"re-run `dvc repro quantize@{out_dir.name}`")
    write_bytes(dest / BIN, weights)
    write_bytes(dest / XML, text)
    return dest / XML


def _copy_litert(out_dir: Path, batch: int, dest: Path) -> Path:
    from edgequant.quantize.methods.litert import file_name

    write_bytes(dest / file_name(batch), read_tflite(out_dir / file_name(batch), f"re-run `dvc repro quantize@{out_dir.name}`", batch))
    return dest / file_name(batch)


def _copy_onnx(out_dir: Path, batch: int, dest: Path) -> Path:
    write_bytes(dest / ONNX_FILE, read_onnx(out_dir / ONNX_FILE, f"re-run `dvc repro quantize@{out_dir.name}`"))
    return dest / ONNX_FILE


# Runtimes whose model a process outside the harness (a tool, a torch-free cold start) may open, by runtime.
CHECKED_COPY: dict[str, Callable[[Path, int, Path], Path]] = {
    "openvino": _copy_openvino,
    "litert": _copy_litert,
    "onnxruntime": _copy_onnx,
}


def checked_copy(runtime: str, out_dir: Path, batch: int, dest: Path) -> Path:
    """The model file of `out_dir` for `batch`, read through edgequant's checks and written under `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    return CHECKED_COPY[runtime](out_dir, batch, dest)
