"""Dispatch overhead at batch 1: the same calls on two clocks, perf_counter around the harness's runner and the
runtime's own record of each call (ONNX Runtime's profiler, ExecuTorch's ETDump), one worker process per method.

A call's difference is what the harness adds around the runtime's own work: the Python binding and the input and
output conversion (torch <-> numpy), plus whatever of the profiler's bookkeeping falls outside its event. Its median
over the calls is given with the order-statistic 95 % interval of edgequant/measure/intervals.py: the calls of one
process are the samples, so the interval says how well that process's median is known, not how much another
process would differ.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgequant.measure.intervals import with_interval

WORKER_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class ClockRequest:
    method: str
    artifacts: str  # the method's directory under models/quantized
    test: str
    threads: int
    batch: int
    warmup: int  # calls made and left out: the first calls allocate
    calls: int
    keep_freed_memory: bool

    @property
    def what(self) -> str:
        return f"{self.method} on its runtime's own clock at batch {self.batch}"


def clock_run(request: ClockRequest) -> dict:
    """The method's calls on both clocks, as the benchmark loads it (threads, input, allocator)."""
    import torch

    from edgequant.data.splits import load_prepared, to_input
    from edgequant.measure.memory import keep_freed_memory
    from edgequant.quantize.catalog import get_method

    if request.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(request.threads)
    x = to_input(load_prepared(request.test)["images"])[: request.batch].contiguous()
    clocked = get_method(request.method).clock(Path(request.artifacts), request.batch, request.threads, x, request.warmup + request.calls)
    if len(clocked.internal_ms) != len(clocked.wall_ms):  # pairing the wrong calls would make a figure of noise
        raise ValueError(f"{request.method}: {clocked.clock} recorded {len(clocked.internal_ms)} calls of {len(clocked.wall_ms)} made")
    return {"clock": clocked.clock, "wall_ms": clocked.wall_ms[request.warmup :], "internal_ms": clocked.internal_ms[request.warmup :]}


def write_clock_run(request: ClockRequest, result_path: str, log_path: str) -> None:
    """A worker process's entry point: the runtimes' banners go to `log_path`, the result to `result_path`; a
    ValueError (a clock that lost calls) as {"error": one line}, which the stage says in one line."""
    from edgequant.measure.processes import serve

    serve(clock_run, request, result_path, log_path)


def summarize_clock(record: dict) -> dict:
    """Medians of the harness's and the runtime's per-call times and of their per-call difference, each with its interval."""
    wall, internal = record["wall_ms"], record["internal_ms"]
    overhead = [w - i for w, i in zip(wall, internal, strict=True)]
    out = {"clock": record["clock"], "calls": len(wall)}
    out |= with_interval("harness_ms_p50", wall) | with_interval("internal_ms_p50", internal) | with_interval("overhead_ms_p50", overhead)
    out["overhead_pct_of_harness"] = 100 * out["overhead_ms_p50"] / out["harness_ms_p50"]
    return out


def measure_clocks(requests: list[ClockRequest], context, progress) -> dict[str, dict]:
    """{method: summary} of each request, each run in a worker of the benchmark's fork server."""
    from edgequant.measure.processes import measure

    summaries = {}
    for request in requests:
        summaries[request.method] = summarize_clock(measure(context, request, target=write_clock_run, timeout_s=WORKER_TIMEOUT_S))
        progress.update(1)
    return summaries
