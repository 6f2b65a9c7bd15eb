"""Cold start and memory of each method in a fresh interpreter: import, load, first and second inference, peak RSS.

`python -m edgequant.measure.coldstart --out F.json ...` is one such process; `cold_start` runs them, each method
and a numpy-only baseline in turn, `repeats` times. ONNX Runtime, LiteRT and OpenVINO load through their own
Python API with the harness's settings and no torch; the other methods load through the harness's loader, so
their figures include importing torch and edgequant's registry (`imports` says which).

Memory is the child's VmHWM from /proc/self/status, not ru_maxrss: exec folds the forking parent's high-water
mark into ru_maxrss (linux fs/exec.c, exec_mmap), so a child of a stage holding torch would report the stage's.
Figures `*_over_python` subtract the baseline child's median: what the runtime and the model add.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgequant.stage import StageError

CHILD_TIMEOUT_S = 600  # pt2e_x86 compiles with inductor in its load (8-13 s on 2 busy cores)
SEED = 0
BASELINE = "python_baseline"


def memory_kib(field: str) -> int:
    """A `Vm*` field of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {field} field (Linux only)")


def _load_openvino(module, model: Path, threads: int, batch: int, config: dict):
    core = module.Core()
    compiled = core.compile_model(core.read_model(model.read_bytes(), model.with_suffix(".bin").read_bytes()), "CPU", config)
    request = compiled.create_infer_request()
    dims = [d.get_length() for d in list(compiled.input(0).get_partial_shape())[1:]]
    x = _pixels([batch, *dims])

    def run():
        request.infer({0: x}, share_inputs=True)
        return request.get_output_tensor(0).data.copy()

    return run


def _load_litert(module, model: Path, threads: int, batch: int, config: dict):
    import numpy as np

    interpreter = module.Interpreter(model_content=model.read_bytes(), num_threads=threads)
    interpreter.allocate_tensors()
    source, sink = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    x = _pixels(list(source["shape"]))
    if np.issubdtype(source["dtype"], np.integer):  # as the harness's runner quantizes: with the file's scale and zero point
        scale, zero = source["quantization"]
        info = np.iinfo(source["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(source["dtype"])

    def run():
        interpreter.set_tensor(source["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(sink["index"])

    return run


def _load_onnx(module, model: Path, threads: int, batch: int, config: dict):
    options = module.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    session = module.InferenceSession(model.read_bytes(), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0]
    x = _pixels([batch, *source.shape[1:]])
    return lambda: session.run(None, {source.name: x})[0]


# runtime -> (the module its Python API lives in, a loader as the harness's method loads it)
RAW = {
    "openvino": ("openvino", _load_openvino),
    "litert": ("ai_edge_litert.interpreter", _load_litert),
    "onnxruntime": ("onnxruntime", _load_onnx),
}


def _pixels(shape: list[int]):
    import numpy as np

    return np.random.default_rng(SEED).random(shape, dtype=np.float32)


def _load_harness(method: str, artifacts: Path, threads: int, batch: int):
    """The harness's own loader (torch and the registry are imported in the import phase, the runtime's modules in load)."""
    import torch

    from edgequant.model.zoo import model_of
    from edgequant.quantize.catalog import get_method

    loader = get_method(method).load
    yield
    torch.set_num_threads(threads)
    runner = loader(artifacts, batch, threads)
    x = torch.rand((batch, *model_of(artifacts).input_shape), generator=torch.Generator().manual_seed(SEED))
    yield lambda: runner(x)


def child(args: argparse.Namespace) -> dict:
    """One process's timeline, in ms from its first line, and its memory."""
    import importlib

    import numpy  # noqa: F401  in every child, the baseline included

    marks = {"start": time.perf_counter()}
    run = None
    if args.runtime in RAW:
        name, load = RAW[args.runtime]
        module = importlib.import_module(name)
        marks["import"] = time.perf_counter()
        run = load(module, Path(args.model), args.threads, args.batch, json.loads(args.config))
    elif args.method:
        steps = _load_harness(args.method, Path(args.artifacts), args.threads, args.batch)
        next(steps)
        marks["import"] = time.perf_counter()
        run = next(steps)
    if run is not None:
        marks["load"] = time.perf_counter()
        run()
        marks["first"] = time.perf_counter()
        run()
        marks["second"] = time.perf_counter()
    names = list(marks)
    phases = {f"{b}_ms": (marks[b] - marks[a]) * 1e3 for a, b in zip(names, names[1:], strict=False)}
    phases = {{"first_ms": "first_inference_ms", "second_ms": "second_inference_ms"}.get(k, k): v for k, v in phases.items()}
    if run is not None:
        phases["cold_start_ms"] = (marks["first"] - marks["start"]) * 1e3
    return {**phases, "peak_rss_mib": memory_kib("VmHWM") / 1024, "rss_mib": memory_kib("VmRSS") / 1024}


def run_child(argv: list[str], cwd: Path) -> dict:
    """One fresh interpreter running `argv` (this module's options): its record, wall time and CPU time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = cwd / "child.json"
    command = [sys.executable, "-m", "edgequant.measure.coldstart", "--out", str(out), *argv]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise StageError(f"cold start {' '.join(argv)} took over {CHILD_TIMEOUT_S} s; stopped") from exc
    wall_ms = (time.perf_counter() - start) * 1e3
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise StageError(f"cold start {' '.join(argv)} failed (exit code {done.returncode}):\n{done.stderr[-3000:]}")
    record = json.loads(out.read_text())
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**record, "process_wall_ms": wall_ms, "cpu_s": cpu_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--runtime", help="open the model with this runtime's own API (no torch)")
    parser.add_argument("--model", help="the checked model copy a raw runtime opens")
    parser.add_argument("--config", default="{}", help="OpenVINO's compile config, JSON")
    parser.add_argument("--method", help="load through the harness's loader instead")
    parser.add_argument("--artifacts", help="the method's directory, for --method")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(child(args)))
    return 0


def measure_cold_starts(jobs: dict[str, list[str]], repeats: int, tmp: Path, progress) -> dict[str, list[dict]]:
    """Each job (name -> this module's options) `repeats` times, interleaved (A B C ... A B C ...) so that a
    change of machine state over the runs falls on every method alike; `progress` is advanced once per process."""
    records: dict[str, list[dict]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, argv in jobs.items():
            records[name].append(run_child(argv, tmp))
            progress.update(1)
    return records


def summarize(records: list[dict], baseline: dict | None = None) -> dict:
    """Median, min and max of each figure over the repeats; with the baseline's medians, `*_over_python` too."""
    out: dict = {"repeats": len(records)}
    for key in records[0]:
        values = [r[key] for r in records]
        out[f"{key}_median"], out[f"{key}_min"], out[f"{key}_max"] = statistics.median(values), min(values), max(values)
        if baseline and key in ("process_wall_ms", "peak_rss_mib", "rss_mib"):
            base = baseline[f"{key}_median"]
            out[f"{key}_over_python_median"] = statistics.median(v - base for v in values)
            out[f"{key}_over_python_min"], out[f"{key}_over_python_max"] = min(values) - base, max(values) - base
    out["first_run"] = records[0]  # the only run whose page cache may be cold
    return out


if __name__ == "__main__":
    raise SystemExit(main())
