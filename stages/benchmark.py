"""Stage `benchmark`: measure every method's size, accuracy, latency and throughput on this machine."""

import argparse
import csv
import json
import multiprocessing
import multiprocessing.context
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from edgequant import params
from edgequant.benchmark import machine_info, write_measurement
from edgequant.data import load_prepared
from edgequant.io import atomic_path, write_json
from edgequant.model import LAYER_MACS
from edgequant.profile import OP_COLUMNS, op_rows
from edgequant.registry import get_method
from edgequant.report import summarize

WORKER_TIMEOUT_S = 600
# Imported once by the fork server instead of by every measurement: torch and edgequant take 2 s,
# ExecuTorch's runtime 3.5 s more (it imports its exporter), torchao's pt2e ops 1 s; 16 processes
# paid that every run. A module missing here is skipped by multiprocessing and imported where used.
PRELOAD = ["edgequant.benchmark", "executorch.extension.pybindings.portable_lib", "torchao.quantization.pt2e.quantize_pt2e"]


def start_method() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:  # Windows: every process starts from scratch
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def measure(context: multiprocessing.context.BaseContext, request: dict) -> dict:
    """Run one measurement in its own process: thread pools (OpenMP, XNNPACK, ORT) are sized once per
    process, and one runtime's warm caches must not flatter the next one's numbers. Processes fork
    from a server that has only imported modules, so each still starts with no pool and no cache."""
    what = f"{request.get('method', 'peak')} with {request['threads']} thread(s)"
    with tempfile.TemporaryDirectory() as tmp:
        result, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        worker = context.Process(target=write_measurement, args=(request, str(result), str(log)), name=f"benchmark {what}")
        worker.start()
        worker.join(WORKER_TIMEOUT_S)
        if worker.is_alive():
            worker.kill()
            worker.join()
            raise RuntimeError(f"measuring {what} took over {WORKER_TIMEOUT_S} s; stopped. Its output:\n{tail(log)}")
        if worker.exitcode != 0:
            raise RuntimeError(f"measuring {what} failed (exit code {worker.exitcode}):\n{tail(log)}")
        return json.loads(result.read_text())


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


def write_csv(path: str, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def measure_all(p: params.BenchmarkParams, methods: list[str], threads: list[int], artifacts: Path, test_path: str):
    """The CPU peak per thread count, then every (method, threads) run; predictions once per method."""
    context = start_method()
    peak_request = {"peak": True, "peak_gemm_size": p.peak_gemm_size, "min_run_time_s": p.min_run_time_s}
    peaks = {t: measure(context, {**peak_request, "threads": t}) for t in threads}
    measured = ("latency_batch", "throughput_batch", "warmup_runs", "latency_runs", "min_run_time_s", "keep_freed_memory")
    common = {k: getattr(p, k) for k in measured}
    runs, predictions, ops = {}, {}, {}
    jobs = [(m, t) for t in threads for m in methods]
    for m, t in tqdm(jobs, desc="benchmark", unit="run", disable=None):
        # Accuracy does not depend on threads: predict once, at the largest count (fastest).
        # The per-operator profile is taken once, at the smallest count: the edge-device case.
        request = {"method": m, "threads": t, "artifacts": str(artifacts / m), "test": test_path, **common}
        request.update(predict=t == threads[-1], profile_runs=p.profile_runs if t == threads[0] else 0)
        start = time.perf_counter()
        r = runs[(m, t)] = measure(context, request)
        if "predictions" in r:
            predictions[m] = torch.tensor(r.pop("predictions"))
        if "ops_ms" in r:
            ops[m] = r.pop("ops_ms")
        speed = f"p50 {r['latency_ms_p50']:.3f} ms, {r['throughput_ips']:.0f} img/s"
        tqdm.write(f"  {m:<26} {t} thr: {speed}, peak {r['peak_rss_mib']:.0f} MiB ({time.perf_counter() - start:.1f} s)")
    return peaks, runs, predictions, ops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="directory with one sub-directory per method")
    parser.add_argument("--test", required=True, help="prepared test split")
    parser.add_argument("--metrics", required=True, help="output: combined metrics JSON")
    parser.add_argument("--sqnr", required=True, help="output: per-layer SQNR metrics JSON")
    parser.add_argument("--csv", required=True, help="output: one row per (method, threads)")
    parser.add_argument("--layers-csv", required=True, help="output: MACs and SQNR per layer")
    parser.add_argument("--ops-csv", required=True, help="output: time per operator, per method (smallest thread count)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        p = params.load(params.BenchmarkParams, "benchmark", args.params)
        methods = params.load(params.QuantizeParams, "quantize", args.params).methods
    except ValueError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1
    artifacts = Path(args.artifacts)
    missing = [m for m in methods if not (artifacts / m / "meta.json").is_file()]
    if missing:
        print(f"benchmark: no artifacts for {missing} in {artifacts}; run `dvc repro` (or the quantize stage) first", file=sys.stderr)
        return 1
    meta = {m: json.loads((artifacts / m / "meta.json").read_text()) for m in methods}
    threads = clamp_threads(p.threads)
    labels = load_prepared(args.test)["labels"]
    try:
        peaks, runs, predictions, ops = measure_all(p, methods, threads, artifacts, args.test)
    except RuntimeError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 1

    accuracy = {
        m: {
            "accuracy_pct": 100.0 * (predictions[m] == labels).float().mean().item(),
            "agreement_with_fp32_pct": 100.0 * (predictions[m] == predictions["fp32"]).float().mean().item(),
        }
        for m in methods
    }
    for m in methods:
        accuracy[m]["accuracy_drop_pp"] = accuracy["fp32"]["accuracy_pct"] - accuracy[m]["accuracy_pct"]
    metrics, rows = summarize(methods, meta, runs, peaks, accuracy)
    metrics["machine"] = machine_info()
    sqnr = {m: meta[m]["sqnr_db"] for m in methods if meta[m].get("sqnr_db")}
    layer_rows = [
        {"layer": layer, "macs": macs, "macs_share_pct": 100.0 * macs / metrics["macs_per_image"]} for layer, macs in LAYER_MACS.items()
    ]
    for row in layer_rows:
        row.update({f"sqnr_db_{m}": values[row["layer"]] for m, values in sqnr.items()})
    write_json(args.metrics, metrics)
    write_json(args.sqnr, sqnr)
    write_csv(args.csv, rows)
    write_csv(args.layers_csv, layer_rows)
    op_table = [
        row
        for m in methods
        for row in op_rows(m, get_method(m).runtime, get_method(m).precision, threads[0], p.throughput_batch, ops.get(m, {}))
    ]
    write_csv(args.ops_csv, op_table, OP_COLUMNS)  # header only when benchmark.profile_runs is 0
    print(f"benchmark: {len(methods)} methods x {len(threads)} thread count(s) -> {args.metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
