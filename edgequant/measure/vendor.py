"""The harness beside the runtimes' own benchmark tools: alternating paired runs, the harness/tool ratio with its
95 % interval, and, where the two disagree by more than 5 %, the cause as far as the runs measure it.

Each run is a fresh process: the tool is one by nature, and the harness's is a worker forked from the benchmark's
preloaded server that loads the method with `Method.load` and times it with `measure_throughput`, as the
benchmark stage does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from edgequant.measure.ratio import AGREEMENT, agrees, alternation, ratio_interval
from edgequant.measure.summary import THREAD_SLACK
from edgequant.measure.tools import TOOL_RESOLUTION_MS, BelowResolution, Cell, Tool
from edgequant.stage import StageError, watch_parent

WORKER_TIMEOUT_S = 600
TOOL_TIMEOUT_S = 600
IO_REPEATS = 50  # timed repeats of a runner's input and output conversion alone (or beside its bare call)
IO_BUDGET_S = 0.5  # ...or fewer, at least MIN_IO_REPEATS, once they have taken this long (a batch-256 call takes 50-100 ms)
MIN_IO_REPEATS = 5
BUSY_CORES = 0.25  # other processes' CPU use (cores) that, beside a run's own threads, makes the machine oversubscribed
# /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...; all but idle and iowait is work.
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)
HARNESS_STATISTIC = "batch / blocked median of torch.utils.benchmark (perf_counter), as metrics/benchmark.json"


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent working since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return sum(int(fields[i]) for i in BUSY_FIELDS if i < len(fields)) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class HarnessRequest:
    method: str
    threads: int
    artifacts: str  # the method's directory under models/quantized
    test: str
    batch: int
    min_run_time_s: float
    keep_freed_memory: bool

    @property
    def what(self) -> str:
        return f"the harness on {self.method} at batch {self.batch} with {self.threads} thread(s)"


def runner_cost_ms(run, x, bare) -> float:
    """What a runner adds to its runtime's own call: converting the batch in (LiteRT quantizes and copies it; OpenVINO
    wraps it, shared), the Python call, and the logits out into torch. The tools set their input once and time the call
    alone; here run(x) and `bare()`, the runtime's call on the input the runner last set, alternate, and the medians'
    difference is the cost."""
    runner, alone = [], []
    for i in range(IO_REPEATS):
        start = time.perf_counter()
        run(x)
        runner.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare()
        alone.append(time.perf_counter() - start)
        if i + 1 >= MIN_IO_REPEATS and sum(runner) + sum(alone) > IO_BUDGET_S:
            break
    return max(0.0, statistics.median(runner) - statistics.median(alone)) * 1e3


# runtime -> its runner's bare call, the one its tool times: LiteRT's invoke(), OpenVINO's infer()
BARE_CALL = {"litert": lambda run: run.interpreter.invoke, "openvino": lambda run: run.request.infer}


def harness_run(request: HarnessRequest) -> dict:
    """Load as the benchmark loads and time as it times, with the cores the timed loop kept busy (CPU time / wall)."""
    import torch

    from edgequant.data.splits import load_prepared, to_input
    from edgequant.measure.memory import keep_freed_memory
    from edgequant.measure.timing import measure_throughput
    from edgequant.quantize.catalog import get_method

    method = get_method(request.method)
    if request.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(request.threads)
    x = to_input(load_prepared(request.test)["images"])[: request.batch].contiguous()
    run = method.load(Path(request.artifacts), request.batch, request.threads)
    run(x)
    cpu, busy, wall = time.process_time(), machine_busy_s(), time.perf_counter()
    result = measure_throughput(run, x, request.min_run_time_s, request.threads, count_faults=False)
    wall, cpu, busy = time.perf_counter() - wall, time.process_time() - cpu, machine_busy_s() - busy
    result["cores_busy"] = cpu / wall
    result["other_cores_busy"] = max(0.0, busy - cpu) / wall  # other processes, over the timed loop
    bare = BARE_CALL.get(method.runtime)
    result["io_ms"] = runner_cost_ms(run, x, bare(run)) if bare else None
    return result


def write_harness_run(request: HarnessRequest, result_path: str, log_path: str) -> None:
    """A worker process's entry point: the runtimes' banners go to `log_path`, the result to `result_path`."""
    watch_parent()
    log = open(log_path, "w")  # noqa: SIM115 - this process's stdout and stderr until it exits
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    Path(result_path).write_text(json.dumps(harness_run(request)))


def measure_harness(context, request: HarnessRequest) -> dict:
    """One harness run in a worker of the benchmark's fork server, started, waited for and refused as the benchmark's are."""
    from edgequant.measure.processes import measure

    return measure(context, request, target=write_harness_run, timeout_s=WORKER_TIMEOUT_S)


def run_tool(tool: Tool, exe: str, cell: Cell, min_run_time_s: float, batch_ms: float) -> dict:
    """One run of the runtime's tool in a process of its own, parsed."""
    with tempfile.TemporaryDirectory() as tmp:
        command = tool.command(exe, cell, min_run_time_s, batch_ms, Path(tmp))
        cpu, busy, wall = children_cpu_s(), machine_busy_s(), time.perf_counter()
        try:
            done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise StageError(
                f"{tool.script} on {cell.method} at batch {cell.batch} with {cell.threads} thread(s) took over {TOOL_TIMEOUT_S} s; stopped"
            ) from exc
        console = done.stdout + done.stderr
        if done.returncode != 0:
            raise StageError(f"{' '.join(command)} failed (exit code {done.returncode}):\n{console[-3000:]}")
        wall, cpu, busy = time.perf_counter() - wall, children_cpu_s() - cpu, machine_busy_s() - busy
        # over the tool's whole process, its start included: its timed loop alone is not visible from outside
        return {**tool.parse(cell, Path(tmp), console), "other_cores_busy": max(0.0, busy - cpu) / wall}


def run_pairs(
    cells: list[Cell], tools: dict, pairs: int, request_of, context, progress
) -> tuple[dict[Cell, dict[str, list[dict]]], dict[Cell, str]]:
    """Every (pair, cell, side) in `alternation` order; `tools` maps runtime -> (Tool, executable). Returns the runs of
    each cell, and {cell: why} of the cells the tool could not time (its figure below its resolution): those stop."""
    runs: dict[Cell, dict[str, list[dict]]] = {cell: {"harness": [], "tool": []} for cell in cells}
    unresolved: dict[Cell, str] = {}
    for _, cell, side in alternation(pairs, cells):
        if cell not in unresolved:
            if side == "harness":
                runs[cell]["harness"].append(measure_harness(context, request_of(cell)))
            else:
                tool, exe = tools[cell.runtime]
                batch_ms = 1e3 * cell.batch / runs[cell]["harness"][-1]["throughput_ips"]
                try:
                    runs[cell]["tool"].append(run_tool(tool, exe, cell, request_of(cell).min_run_time_s, batch_ms))
                except BelowResolution as exc:
                    unresolved[cell] = str(exc)
        progress.update(1)
    return {cell: sides for cell, sides in runs.items() if cell not in unresolved}, unresolved


def explain(cell: Cell, harness: list[dict], tool: list[dict], interval: dict, cores: int) -> str:
    """One line on why harness and tool disagree, from what the runs measured; "not explained" where they cannot tell.
    The causes are tried in order: settings, the runner's own copies, those and the tool's statistic together, the
    tool's statistic (each as `accounts` says: a gap under 5 % whose interval still misses can have a cause too), the
    tool's two-decimal resolution, an oversubscribed machine (other processes and the run's threads wanted more than
    its `cores`), threads, noise (medians within 5 %, or an interval that holds 1)."""
    harness_ms = statistics.median(1e3 * cell.batch / r["throughput_ips"] for r in harness)
    tool_ms = statistics.median(1e3 * cell.batch / r["tool_ips"] for r in tool)
    tool_call_ms = statistics.median(r["tool_call_ms_median"] for r in tool)
    got = statistics.median(r["cores_busy"] for r in harness)
    others = max(statistics.median(r["other_cores_busy"] for r in harness), statistics.median(r["other_cores_busy"] for r in tool))
    io = [r["io_ms"] for r in harness if r["io_ms"] is not None]
    io_ms = statistics.median(io) if io else None
    # The medians differ, not only the interval is wide: measured on the ratio `agrees` judges (harness/tool img/s).
    apart = not 1 - AGREEMENT <= tool_ms / harness_ms <= 1 + AGREEMENT

    def accounts(mine_ms: float, theirs_ms: float) -> bool:
        """Whether the harness's `mine_ms` beside the tool's `theirs_ms`, a cause taken out of either, accounts for the
        miss: medians more than 5 % apart come within 5 %; medians within 5 % whose interval misses move, with their
        interval, inside it (a cause that leaves the interval outside is not why it misses: the spread is)."""
        if mine_ms <= 0:  # copies timed apart as long as the whole call: nothing left to compare
            return False
        if apart:
            return abs(theirs_ms / mine_ms - 1) <= AGREEMENT
        # Taking a cause out multiplies every pair's ratio alike, so the interval moves by the same factor.
        factor = (theirs_ms / mine_ms) / (tool_ms / harness_ms)
        return agrees({"ratio_ci95_low": interval["ratio_ci95_low"] * factor, "ratio_ci95_high": interval["ratio_ci95_high"] * factor})

    if not all(r["config_match"] for r in tool):
        return (
            f"settings: the tool reported {tool[0]['tool_config']}, not {cell.threads} thread(s) at batch {cell.batch} as the harness ran"
        )
    if io_ms is not None and accounts(harness_ms - io_ms, tool_ms):
        return (
            f"input/output copies: the harness's runner converts the batch in and out around the runtime's call, {io_ms:.2f} ms"
            f" of its {harness_ms:.2f} ms call (timed apart), which the tool does once; without them the ratio is"
            f" {tool_ms / (harness_ms - io_ms):.3f}"
        )
    if (
        io_ms is not None
        and accounts(harness_ms - io_ms, tool_call_ms)
        and abs(harness_ms - io_ms - tool_call_ms) < abs(harness_ms - tool_call_ms)
    ):
        return (
            f"input/output copies and the tool's statistic: the harness's {harness_ms:.2f} ms call less its runner's"
            f" {io_ms:.2f} ms around the runtime's call (timed apart) is the tool's own median call, {tool_call_ms:.2f} ms;"
            f" the tool's figure, {tool_ms:.2f} ms per batch ({get_statistic(cell)}), also counts its own loop"
        )
    if accounts(harness_ms, tool_call_ms):
        return (
            f"the tool's statistic: its figure is {tool_ms:.2f} ms per batch ({get_statistic(cell)}), its own median call"
            f" {tool_call_ms:.2f} ms, which the harness's {harness_ms:.2f} ms median matches"
        )
    # A call so short that one step of the tool's two-decimal figure is over 5 % of it: the tool's own median lies within
    # half a step of what it prints, and a harness call within 5 % of that range cannot be told apart from it.
    half = TOOL_RESOLUTION_MS / 2
    low, high = max(tool_call_ms - half, 0.0), tool_call_ms + half
    if (
        apart
        and io_ms is not None
        and AGREEMENT * tool_call_ms < 2 * half
        and low * (1 - AGREEMENT) <= harness_ms - io_ms <= high * (1 + AGREEMENT)
    ):
        share = f"{half / tool_call_ms:.0%} of this call" if tool_call_ms else "more than this call"
        return (
            f"the tool's resolution: it prints its median call as {tool_call_ms:.2f} ms, anything from {low:.3f} to {high:.3f} ms"
            f" (half a step, {share}); the harness's {harness_ms:.3f} ms call less its runner's {io_ms:.3f} ms around the"
            f" runtime's call (timed apart), {harness_ms - io_ms:.3f} ms, is within 5 % of that range"
        )
    if others + cell.threads > cores + BUSY_CORES:
        return (
            f"a shared machine: other processes kept {others:.2f} of {cores} cores busy during the runs (/proc/stat); the per-pair"
            f" ratios spread {interval['ratio_min']:.3f}-{interval['ratio_max']:.3f} and the harness's loop got {got:.2f} cores"
        )
    if cell.threads > 1 and got < cell.threads - THREAD_SLACK and harness_ms > tool_ms:
        return f"threads: the harness's timed loop kept {got:.2f} cores busy (CPU time / wall) with {cell.threads} threads asked for"
    spread = f"{interval['ratio_min']:.3f}-{interval['ratio_max']:.3f}: too wide for {interval['pairs']} pairs to place it within 5 %"
    if not apart:
        return f"noise: the medians differ by {abs(tool_ms / harness_ms - 1):.1%} only, but the per-pair ratios spread {spread}"
    if interval["ratio_ci95_low"] <= 1 <= interval["ratio_ci95_high"]:  # the gap itself is within what the pairs scatter
        return (
            f"noise: the medians differ by {abs(tool_ms / harness_ms - 1):.1%}, but the interval holds 1 and the per-pair"
            f" ratios spread {spread}"
        )
    io_text = f"{io_ms:.2f} ms" if io_ms is not None else "not measured"
    return (
        f"not explained: harness {harness_ms:.2f} ms per batch ({got:.2f} cores busy), tool {tool_ms:.2f} ms"
        f" (its median call {tool_call_ms:.2f} ms), input/output {io_text}"
    )


def get_statistic(cell: Cell) -> str:
    from edgequant.measure.tools import get_tool

    return get_tool(cell.runtime).statistic


def summarize_cell(cell: Cell, harness: list[dict], tool: list[dict], cores: int) -> dict:
    """A cell's medians, per-pair figures, ratio interval and verdict (and its cause where it misses); `cores`: the machine's."""
    harness_ips = [r["throughput_ips"] for r in harness]
    tool_ips = [r["tool_ips"] for r in tool]
    interval = ratio_interval(harness_ips, tool_ips)
    within = agrees(interval)
    io = [r["io_ms"] for r in harness if r["io_ms"] is not None]
    return {
        "batch": cell.batch,
        "threads": cell.threads,
        "harness_ips": statistics.median(harness_ips),
        "tool_ips": statistics.median(tool_ips),
        **interval,
        "agrees_within_5pct": within,
        "why": None if within else explain(cell, harness, tool, interval, cores),
        "harness_ips_runs": harness_ips,
        "tool_ips_runs": tool_ips,
        "tool_call_ms_median": statistics.median(r["tool_call_ms_median"] for r in tool),
        "harness_cores_busy": statistics.median(r["cores_busy"] for r in harness),
        "harness_io_ms": statistics.median(io) if io else None,
        "other_cores_busy_harness": statistics.median(r["other_cores_busy"] for r in harness),
        "other_cores_busy_tool": statistics.median(r["other_cores_busy"] for r in tool),
        "config_match": all(r["config_match"] for r in tool),
        "tool_config": tool[-1]["tool_config"],
    }
