"""Timing, accuracy and peak measurements; `write_measurement` measures one method (or the peak) in its own process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark as tbench

from edgequant.data.splits import load_prepared, predict, to_input
from edgequant.measure import roofline
from edgequant.measure.memory import keep_freed_memory, minor_faults, peak_rss_mib
from edgequant.measure.ops import profile_torch
from edgequant.model.zoo import model_of
from edgequant.quantize.catalog import Runner, get_method
from edgequant.stage import StageError, watch_parent

LOGIT_IMAGES = 512  # test images whose logits come back for the SQNR of each method against FP32
EVIDENCE_TIMEOUT_S = 300  # importing torch, ONNX Runtime and OpenVINO and running a few tiny kernels: ~10 s


@dataclasses.dataclass(frozen=True)
class PeakRequest:
    """Measure this CPU's FP32 and INT8 GEMM peak with `threads` threads."""

    threads: int
    gemm_size: int
    min_run_time_s: float

    @property
    def what(self) -> str:
        return f"the GEMM peak with {self.threads} thread(s)"


@dataclasses.dataclass(frozen=True)
class MethodRequest:
    """Load one method's artifacts with `threads` threads and time them; optionally predict and profile."""

    method: str
    threads: int
    artifacts: str  # the method's directory under models/quantized
    test: str  # prepared test split
    latency_batch: int
    throughput_batch: int
    warmup_runs: int
    latency_runs: int
    min_run_time_s: float
    keep_freed_memory: bool
    predict: bool  # top-1 class of every test image (once per method: accuracy does not depend on threads)
    profile_runs: int  # 0: no per-operator profile
    count_faults: bool = True  # page faults per batch: a count, not a time, so taken in the first repeat only

    @property
    def what(self) -> str:
        return f"{self.method} with {self.threads} thread(s)"


def machine_info(probed: dict) -> dict[str, object]:
    """The probe stage's machine record, with what the runtimes report about themselves: torch's capability and
    quantized engine in this process, and each runtime's INT8 path with its evidence (edgequant/measure/evidence.py).
    The evidence is collected in a process of its own: it switches torch's quantized engine, and on an AMX CPU
    whether ONNX Runtime asks Linux for tile data must be seen before any other library asks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8_path.json"
        command = [sys.executable, "-m", "edgequant.measure.evidence", "--out", str(out)]
        try:
            done = subprocess.run(
                command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=EVIDENCE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            raise StageError(
                f"collecting the runtimes' INT8 evidence (python -m edgequant.measure.evidence) took over {EVIDENCE_TIMEOUT_S} s"
            ) from exc
        if done.returncode != 0:
            raise StageError(f"collecting the runtimes' INT8 evidence failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
        int8_path = json.loads(out.read_text())
    return {
        **probed,
        "reported": {
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "quantized_engine": torch.backends.quantized.engine,
            "int8_path": int8_path,
        },
    }


def measure_latency(run: Runner, x: torch.Tensor, warmup: int, runs: int) -> dict[str, float]:
    """Per-call latency percentiles (ms) over `runs` timed calls after `warmup` untimed ones.

    Each call is timed on its own with perf_counter_ns (≈100 ns resolution, far below a call),
    because the tail (p99) is what an interactive device feels and a batch average hides it.
    """
    for _ in range(warmup):
        run(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        run(x)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {
        "latency_ms_p50": float(p50),
        "latency_ms_p90": float(p90),
        "latency_ms_p99": float(p99),
        "latency_ms_mean": float(times.mean()),
        "latency_ms_calls": times.tolist(),  # the repeats' calls are pooled for the tail (edgequant/measure/intervals.py)
    }


def measure_throughput(run: Runner, x: torch.Tensor, min_run_time_s: float, threads: int, count_faults: bool = True) -> dict[str, float]:
    """Images per second at batch len(x), from torch.utils.benchmark's blocked median, and page faults per batch.

    Faults are counted because they explain speed: a runtime that allocates its activations afresh on
    every call (eager PyTorch, through glibc) pays the kernel to zero new pages each time, while one
    that plans its memory once (ExecuTorch, ONNX Runtime's arena) does not.
    """
    timer = tbench.Timer(stmt="run(x)", globals={"run": run, "x": x}, num_threads=threads)
    cpu, wall = time.process_time(), time.perf_counter()
    m = timer.blocked_autorange(min_run_time=min_run_time_s)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = {"throughput_ips": len(x) / m.median, "batch_ms_median": m.median * 1e3, "batch_ms_iqr": m.iqr * 1e3}
    # Every thread of the process counts (the runtime's own pools too): a run asked for 2 threads that keeps
    # 1 core busy did not use the second, whatever the runtime was told.
    result["cores_busy"] = cpu / wall
    if count_faults:
        calls, before = 5, minor_faults()
        for _ in range(calls):
            run(x)
        result["minor_faults_per_batch"] = (minor_faults() - before) / calls
    return result


def check_runs(run: Runner, x: torch.Tensor, request: MethodRequest) -> None:
    """One call on a real batch before timing: an artifact of another model or input shape fails here,
    with the method named, instead of deep inside a timer."""
    remedy = f"re-run `dvc repro quantize@{request.method}`"
    try:
        out = run(x)
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own classes; re-raised with the cause kept
        raise ValueError(
            f"{request.artifacts}: the artifact does not run on a {tuple(x.shape)} batch ({type(exc).__name__}: "
            f"{(str(exc).strip().splitlines() or [''])[0][:200]}); {remedy}"
        ) from exc
    expected = (len(x), model_of(Path(request.artifacts)).classes)
    if tuple(out.shape) != expected:
        raise ValueError(
            f"{request.artifacts}: the artifact gives {tuple(out.shape)} logits for {tuple(x.shape)}, not {expected}; {remedy}"
        )


def measure_method(request: MethodRequest) -> dict:
    """Load one method's artifacts with `threads` and measure latency, throughput and (optionally) predictions."""
    method = get_method(request.method)
    threads, out_dir = request.threads, Path(request.artifacts)
    if request.keep_freed_memory:
        keep_freed_memory()
    lat_bs, tp_bs = request.latency_batch, request.throughput_batch
    torch.set_num_threads(threads)
    x = to_input(load_prepared(request.test)["images"])
    result: dict = {}
    start = time.perf_counter()
    run = method.load(out_dir, lat_bs, threads)
    result["load_s"] = time.perf_counter() - start
    check_runs(run, x[:lat_bs].contiguous(), request)
    result.update(measure_latency(run, x[:lat_bs].contiguous(), request.warmup_runs, request.latency_runs))
    if tp_bs != lat_bs:
        run = method.load(out_dir, tp_bs, threads)
    batch = x[:tp_bs].contiguous()
    check_runs(run, batch, request)
    result.update(measure_throughput(run, batch, request.min_run_time_s, threads, request.count_faults))
    if request.profile_runs:
        runs = request.profile_runs
        result["ops_ms"] = method.profile(out_dir, tp_bs, threads, batch, runs) if method.profile else profile_torch(run, batch, runs)
    if request.predict:
        logits = predict(run, x, tp_bs)
        result["predictions"] = logits.argmax(1).tolist()
        result["logits"] = logits[:LOGIT_IMAGES].tolist()  # INT8 against FP32 logits, in the real runtime on this CPU
    return result


def write_measurement(request: PeakRequest | MethodRequest, result_path: str, log_path: str) -> None:
    """Measure what `request` asks for and write it as JSON: a process's entry point.

    Its stdout and stderr go to `log_path` (runtimes print banners and thread-pool notices there);
    the caller shows the log only when the measurement crashes. A refused artifact (ValueError) is
    written as {"error": one line}, so the stage can say it in one line.
    """
    watch_parent()  # the stage that asked may be gone; then stop rather than measure for nobody
    log = open(log_path, "w")  # noqa: SIM115 - stays open as this process's stdout and stderr until it exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        if isinstance(request, PeakRequest):
            result = roofline.measure_peak(request.threads, request.gemm_size, request.min_run_time_s)
        else:
            result = measure_method(request)
    except ValueError as exc:
        Path(result_path).write_text(json.dumps({"error": str(exc).strip().splitlines()[0]}))
        return
    result["peak_rss_mib"] = peak_rss_mib()
    Path(result_path).write_text(json.dumps(result))
