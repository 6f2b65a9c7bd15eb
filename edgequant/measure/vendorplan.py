"""What the vendor stage runs and what it writes: the (method, batch, threads) cells beside a tool, the methods skipped with
the reason, the cold-start processes, the runtimes' own clocks at batch 1, and metrics/vendor.json's record of them."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from edgequant.measure.coldstart import BASELINE, RAW, measure_cold_starts, summarize
from edgequant.measure.dispatch import ClockRequest, measure_clocks
from edgequant.measure.ratio import AGREEMENT
from edgequant.measure.tools import TOOLS, Cell, checked_copy
from edgequant.measure.vendor import HARNESS_STATISTIC, HarnessRequest, run_pairs, summarize_cell
from edgequant.params import BenchmarkParams, ParamsError, VendorParams
from edgequant.quantize.catalog import get_method, missing_modules
from edgequant.quantize.refusal import refused_methods


def refused_at_export(artifacts: Path, listed: list[str]) -> dict[str, str]:
    """{method: why, in one line} of the listed methods their runtime refused. Unlike the benchmark's, a method whose
    FP32 baseline was refused is still measured: no figure here is a ratio to that baseline."""
    return {m: f"refused at export: {why}" for m, why in refused_methods(artifacts, listed).items()}


def plan_cells(
    vendor: VendorParams, listed: list[str], refused: dict[str, str], artifacts: Path, batches: dict[int, list[int]], tmp: Path
) -> tuple[list[Cell], dict[str, str], dict]:
    """The cells to pair (each batch of `batches` at its thread counts), {method: why it is skipped}, and {runtime:
    (Tool, executable)} of the tools found."""
    from edgequant.model.zoo import model_of

    cells, skipped, tools = [], {}, {}
    for name in vendor.methods:
        runtime = get_method(name).runtime  # an unknown name: the registry's refusal lists the known ones
        if runtime not in TOOLS:
            raise ParamsError(f"params.yaml: vendor.methods lists {name}, a {runtime} method; tools exist for {', '.join(TOOLS)} methods")
        tool = TOOLS[runtime]
        exe = tool.find()
        if name not in listed:
            skipped[name] = "not in quantize.methods"
        elif name in refused:
            skipped[name] = refused[name]
        elif exe is None:
            skipped[name] = f"{tool.script} is not installed (it ships with the {tool.package} package)"
        else:
            tools[runtime] = (tool, exe)
            shape = tuple(model_of(artifacts / name).input_shape)
            for batch, threads in batches.items():
                model = checked_copy(runtime, artifacts / name, batch, tmp / "tools" / name)
                cells += [Cell(name, runtime, t, batch, shape, model) for t in threads]
    return cells, skipped, tools


def cell_key(cell: Cell) -> str:
    """A cell's key under its method in metrics/vendor.json's `ratios`."""
    return f"batch_{cell.batch}_threads_{cell.threads}"


def plan_cold_starts(
    methods: list[str], artifacts: Path, threads: int, batch: int, tmp: Path
) -> tuple[dict[str, list[str]], dict[str, str], dict[str, str]]:
    """{name: coldstart options} for the baseline and each method, how each method loads there, and {method: why
    it is skipped} for a method whose runtime this environment cannot import."""
    jobs, loads_with, skipped = {BASELINE: []}, {}, {}
    common = ["--threads", str(threads), "--batch", str(batch)]
    for name in methods:
        runtime = get_method(name).runtime
        if missing := missing_modules(get_method(name)):
            skipped[name] = f"its runtime is not installed ({', '.join(missing)} missing)"
            continue
        if runtime in RAW:
            model = checked_copy(runtime, artifacts / name, batch, tmp / "cold" / name)
            config = {}
            if runtime == "openvino":
                from edgequant.quantize.methods.openvino import plugin_config

                config = {**plugin_config(name), "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": False}
            jobs[name] = ["--runtime", runtime, "--model", str(model.resolve()), "--config", json.dumps(config), *common]
            loads_with[name] = f"{RAW[runtime][0]} alone (no torch)"
        else:
            jobs[name] = ["--method", name, "--artifacts", str((artifacts / name).resolve()), *common]
            loads_with[name] = "the harness's loader: torch and edgequant's registry are imported first"
    return jobs, loads_with, skipped


def unresolved_cells(unresolved: dict[Cell, str]) -> dict[str, dict[str, str]]:
    """{method: {cell key: why}} of the cells the tool could not time."""
    by_method: dict[str, dict[str, str]] = {}
    for cell, why in unresolved.items():
        by_method.setdefault(cell.method, {})[cell_key(cell)] = why
    return by_method


def measure_vendor(
    vendor: VendorParams,
    bench: BenchmarkParams,
    listed: list[str],
    refused: dict[str, str],
    artifacts: Path,
    test: str,
    threads: list[int],
) -> dict:
    """Every harness/tool pair, then every cold start, then each runtime's own clock; the record metrics/vendor.json holds."""
    from edgequant.measure.processes import start_method

    def request_of(cell: Cell) -> HarnessRequest:
        return HarnessRequest(
            cell.method, cell.threads, str(artifacts / cell.method), test, cell.batch, bench.min_run_time_s, bench.keep_freed_memory
        )

    cold_methods = [m for m in listed if m not in refused]
    with_clock = [m for m in cold_methods if get_method(m).clock]
    clock_skipped = {
        m: f"its runtime is not installed ({', '.join(miss)} missing)" for m in with_clock if (miss := missing_modules(get_method(m)))
    }
    clocked = [m for m in with_clock if m not in clock_skipped]
    calls = bench.repeats * bench.latency_runs  # as many as the benchmark's pooled latency percentiles
    clocks = [
        ClockRequest(m, str(artifacts / m), test, threads[0], bench.latency_batch, bench.warmup_runs, calls, bench.keep_freed_memory)
        for m in clocked
    ]
    context = start_method()
    with tempfile.TemporaryDirectory() as tmp:
        # Throughput's batch at every thread count; latency's batch (where it differs) at the smallest, as the benchmark times it.
        batches = {bench.throughput_batch: threads} | (
            {bench.latency_batch: threads[:1]} if bench.latency_batch != bench.throughput_batch else {}
        )
        cells, skipped, tools = plan_cells(vendor, listed, refused, artifacts, batches, Path(tmp))
        jobs, loads_with, cold_skipped = plan_cold_starts(cold_methods, artifacts, threads[0], bench.latency_batch, Path(tmp))
        total = 2 * vendor.pairs * len(cells) + vendor.cold_start_repeats * len(jobs) + len(clocks)
        with tqdm(total=total, desc="vendor", unit="run", disable=None) as progress:
            runs, unresolved = run_pairs(cells, tools, vendor.pairs, request_of, context, progress)
            cold = measure_cold_starts(jobs, vendor.cold_start_repeats, Path(tmp), progress)
            dispatch = measure_clocks(clocks, context, progress)
    ratios: dict[str, dict] = {}
    for cell, sides in runs.items():
        ratios.setdefault(cell.method, {})[cell_key(cell)] = summarize_cell(cell, sides["harness"], sides["tool"], os.cpu_count() or 1)
    baseline = summarize(cold.pop(BASELINE))
    return {
        "tools": {runtime: tool.version() if tool.find() else None for runtime, tool in TOOLS.items()},
        "settings": {
            "batches": {str(b): t for b, t in batches.items()},  # batch -> its thread counts
            "threads": threads,
            "cores": os.cpu_count(),
            "pairs": vendor.pairs,
            "min_run_time_s": bench.min_run_time_s,
            "harness_statistic": HARNESS_STATISTIC,
            "tool_statistic": {runtime: tool.statistic for runtime, tool in TOOLS.items()},
            "agreement": f"the ratio's 95 % interval within [{1 - AGREEMENT:.2f}, {1 + AGREEMENT:.2f}]",
        },
        "ratios": ratios,
        "skipped": skipped,
        "unresolved": unresolved_cells(unresolved),
        "cold_start": {
            "threads": threads[0],
            "batch": bench.latency_batch,
            BASELINE: baseline,
            "methods": {m: {"loads_with": loads_with[m], **summarize(records, baseline)} for m, records in cold.items()},
            "skipped": {**{m: refused[m] for m in listed if m in refused}, **cold_skipped},
        },
        "dispatch": {
            "threads": threads[0],
            "batch": bench.latency_batch,
            "warmup_calls": bench.warmup_runs,
            "methods": dispatch,
            # PyTorch, OpenVINO and LiteRT keep no per-call record of their own that the harness reads
            "without_clock": [m for m in cold_methods if not get_method(m).clock],
            **({"skipped": clock_skipped} if clock_skipped else {}),  # a method of those runtimes whose runtime is missing
        },
    }
