"""Run every measurement of the benchmark in a process of its own, forked from a preloaded server."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.context
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edgequant.measure.timing import MethodRequest, PeakRequest, write_measurement
from edgequant.params import BenchmarkParams
from edgequant.stage import StageError

WORKER_TIMEOUT_S = 600
# Imported once by each fork server (one per round) instead of by every measurement: torch and edgequant take 2 s,
# ExecuTorch's runtime 3.5 s more (it imports its exporter), torchao's pt2e ops 1 s, which every process of a round
# (28 in the reference: 14 methods at 2 thread counts) would pay. A module missing here is skipped by
# multiprocessing and imported where used.
# OpenVINO comes first: in a process started by multiprocessing that had imported torch before it, OpenVINO's 2-thread
# inference kept about one core busy (1.04-1.21 cores, half the img/s, on the AVX2 EPYC); imported first, 1.92-1.96.
PRELOAD = [
    "openvino",
    "edgequant.measure.quiet",
    "edgequant.measure.timing",
    "executorch.extension.pybindings.portable_lib",
    "torchao.quantization.pt2e.quantize_pt2e",
]


def start_method() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:  # Windows: every process starts from scratch
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def fresh_server(context: multiprocessing.context.BaseContext) -> None:
    """Fork the next measurement from a new server. Every worker of a server inherits its memory layout (where
    libraries and heap landed), and on an idle AVX-512 EPYC that shifted all of a run's p50s alike: XNNPACK INT8's median
    p50 was 0.0967-0.0969 ms under two of five fresh servers and 0.0951-0.0952 ms under the other three, while the
    workers of one server spread 0.6 %. With one server per round, a run's rounds sample that layout rather than share
    one, and its interval widens toward the shift between runs."""
    if context.get_start_method() != "forkserver":  # spawn: every process already starts from scratch
        return
    from multiprocessing import forkserver

    # multiprocessing has no public call for this; _stop closes the server's alive pipe and waits for it to exit,
    # which it does once every worker (each holds that pipe) has exited: `measure` joins or kills each one before it
    # returns. The next Process starts a new server with the same preloads.
    forkserver._forkserver._stop()


def serve(measure_request, request, result_path: str, log_path: str) -> None:
    """A worker's body: stdout and stderr to `log_path` (runtimes print banners there), `measure_request(request)`'s
    figures to `result_path` as JSON; a refused artifact or input (ValueError) as {"error": one line}, which `measure`
    says in one line."""
    from edgequant.stage import watch_parent

    watch_parent()  # the stage that asked may be gone; then stop rather than measure for nobody
    log = open(log_path, "w")  # noqa: SIM115 - this process's stdout and stderr until it exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        result = measure_request(request)
    except ValueError as exc:
        result = {"error": str(exc).strip().splitlines()[0]}
    Path(result_path).write_text(json.dumps(result))


def measure(context: multiprocessing.context.BaseContext, request, target=write_measurement, timeout_s: float = WORKER_TIMEOUT_S) -> dict:
    """Run one measurement in its own process: thread pools (OpenMP, XNNPACK, ORT) are sized once per
    process, and one runtime's warm caches must not flatter the next one's numbers. Processes fork
    from a server that has only imported modules, so each still starts with no pool and no cache.
    `target(request, result_path, log_path)` measures; by default the benchmark's `write_measurement`."""
    what = request.what
    with tempfile.TemporaryDirectory() as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        worker = context.Process(target=target, args=(request, str(result), str(log)), name=f"benchmark {what}")
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            worker.kill()
            worker.join()
            raise StageError(f"measuring {what} took over {timeout_s:.0f} s; stopped. Its output:\n{tail(log)}")
        if worker.exitcode != 0:
            raise StageError(f"measuring {what} failed (exit code {worker.exitcode}):\n{tail(log)}")
        measured = json.loads(result.read_text())
    if "error" in measured:  # the worker refused an artifact: its message names the file and the fix
        raise StageError(f"measuring {what} failed: {measured['error']}")
    return measured


def tail(log: Path) -> str:
    """The end of a worker's log; a worker that died while starting (before it opened the log) wrote
    its traceback to this process's stderr instead, so say where to look."""
    if not log.exists():
        return "(it died before opening its log; its traceback, if any, is above)"
    return log.read_text()[-3000:]


def clamp_threads(requested: list[int]) -> list[int]:
    cores = os.cpu_count() or 1
    kept = sorted({min(t, cores) for t in requested})
    if any(t > cores for t in requested):
        print(f"benchmark: this machine has {cores} cores; thread counts {requested} clamped to {kept}", file=sys.stderr)
    return kept


def measure_all(p: BenchmarkParams, methods: list[str], threads: list[int], artifacts: Path, test_path: str):
    """The CPU peak per thread count, then `p.repeats` rounds of every (method, threads) run, each round in the same
    order (A B C ... A B C ...), each run in a process of its own: a slow minute of the machine falls on one round of
    every method rather than on every repeat of one. Predictions, logits, the per-operator profile and the page-fault
    count are taken in the first round only. Each round forks from a fresh server (`fresh_server`). Returns each pair's
    repeats in round order (edgequant/measure/intervals.py)."""
    context = start_method()
    peaks = {t: measure(context, PeakRequest(t, p.peak_gemm_size, p.min_run_time_s)) for t in threads}
    runs: dict[tuple[str, int], list[dict]] = {}
    predictions, logits, ops = {}, {}, {}
    jobs = [(m, t) for t in threads for m in methods]
    schedule = [(r, m, t) for r in range(p.repeats) for m, t in jobs]
    for r, m, t in tqdm(schedule, desc="benchmark", unit="run", disable=None):
        first = r == 0
        if r > 0 and (m, t) == jobs[0]:
            fresh_server(context)
        # Accuracy does not depend on threads: predict once, at the largest count (fastest).
        # The per-operator profile is taken once, at the smallest count: the edge-device case.
        request = MethodRequest(
            m,
            t,
            str(artifacts / m),
            test_path,
            p.latency_batch,
            p.throughput_batch,
            p.warmup_runs,
            p.latency_runs,
            p.min_run_time_s,
            p.keep_freed_memory,
            predict=first and t == threads[-1],
            profile_runs=p.profile_runs if first and t == threads[0] else 0,
            count_faults=first,
        )
        start = time.perf_counter()
        result = measure(context, request)
        if "predictions" in result:
            predictions[m], logits[m] = torch.tensor(result.pop("predictions")), torch.tensor(result.pop("logits"))
        if "ops_ms" in result:
            ops[m] = result.pop("ops_ms")
        result["latency_ms_calls"] = np.asarray(result["latency_ms_calls"])  # 8 bytes a call, kept until every round is in
        runs.setdefault((m, t), []).append(result)
        speed = f"p50 {result['latency_ms_p50']:.3f} ms, {result['throughput_ips']:.0f} img/s"
        where = f"{t} thr, {r + 1}/{p.repeats}"
        tqdm.write(f"  {m:<26} {where}: {speed}, peak {result['peak_rss_mib']:.0f} MiB ({time.perf_counter() - start:.1f} s)")
    return peaks, runs, predictions, logits, ops
