"""Every method as an MLPerf LoadGen system under test: SingleStream (90th-percentile latency, LoadGen's early-stopping
estimate) and Offline (samples per second), each method in a process of its own, logs kept under the stage's outputs."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgequant.data.splits import load_prepared, to_input
from edgequant.measure.mlperf_log import read_logs
from edgequant.params import LoadgenParams
from edgequant.quantize.catalog import Runner, get_method, import_runtime, missing_modules
from edgequant.quantize.refusal import refused_methods, with_precision_refusals

SCENARIOS = ("SingleStream", "Offline")
# MLPerf's edge image-classification benchmark: its rules (LoadGen's built-in mlperf.conf, read by
# TestSettings.FromConfig) give 600 s per scenario and, for Offline, at least 24,576 samples.
MLPERF_MODEL = "resnet50"
MLPERF_CONF = 0  # FromConfig's conf_type for LoadGen's built-in mlperf.conf (1 reads a user.conf file)
WARMUP_CALLS = 3
CALIBRATION_CALLS = 10
# SingleStream pre-generates 2 x min_duration of queries at the expected latency and reports INVALID ("Decrease the
# expected latency") when a faster SUT runs out: expecting half the fastest calibrated call leaves 4x the queries needed.
LATENCY_MARGIN = 0.5
# Offline issues one query of 1.1 x min_duration x expected QPS samples; a SUT faster than expected finishes before the
# minimum duration (INVALID). Expecting 1.5x the fastest calibrated rate runs 1.65x the minimum at that rate.
QPS_MARGIN = 1.5
# LoadGen's stop is its own; a worker is stopped only when it overruns every scenario's minimum by this much
TIMEOUT_FACTOR = 4
TIMEOUT_BASE_S = 300  # loading a runtime and its artifact, calibrating, writing the logs


@dataclasses.dataclass(frozen=True)
class LoadgenRequest:
    """Run one method's artifacts through LoadGen in both scenarios with `threads` threads; logs under `outdir`."""

    method: str
    threads: int
    artifacts: str  # the method's directory under models/quantized
    test: str  # prepared test split: the query samples
    latency_batch: int
    throughput_batch: int
    params: LoadgenParams
    outdir: str  # <outdir>/<scenario>/mlperf_log_*

    @property
    def what(self) -> str:
        return f"LoadGen on {self.method} with {self.threads} thread(s)"

    @property
    def timeout_s(self) -> float:
        minimum_ms = sum(settings(self.params, scenario)["min_duration_ms"] for scenario in SCENARIOS)
        return TIMEOUT_BASE_S + TIMEOUT_FACTOR * minimum_ms / 1e3


def settings(p: LoadgenParams, scenario: str) -> dict[str, int]:
    """The minimum duration and query count of `scenario`: the params' short run, or MLPerf's own (taken from LoadGen)."""
    if not p.official:
        return {"min_duration_ms": p.min_duration_ms, "min_query_count": p.min_query_count}
    lg = import_runtime("mlperf_loadgen", "mlcommons-loadgen", "the loadgen stage")
    s = lg.TestSettings()
    if s.FromConfig("", MLPERF_MODEL, scenario, MLPERF_CONF) != 0:
        raise ValueError(f"mlperf_loadgen {lg.__name__}: its built-in mlperf.conf has no {MLPERF_MODEL} {scenario} settings")
    return {"min_duration_ms": int(s.min_duration_ms), "min_query_count": int(s.min_query_count)}


def expected_latency_ns(call_s: list[float]) -> int:
    """SingleStream's expected latency from a few timed single-sample calls (see LATENCY_MARGIN)."""
    return max(1, int(LATENCY_MARGIN * min(call_s) * 1e9))


def expected_qps(call_s: list[float], batch: int) -> float:
    """Offline's expected samples per second from a few timed batch calls (see QPS_MARGIN)."""
    return QPS_MARGIN * batch / min(call_s)


def calibrate(run: Runner, x: torch.Tensor) -> list[float]:
    """Seconds per call on `x`, after warm-up: the runtime's own speed on this machine, measured in this process."""
    for _ in range(WARMUP_CALLS):
        run(x)
    times = []
    for _ in range(CALIBRATION_CALLS):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return times


def run_scenario(run: Runner, images: torch.Tensor, scenario: str, outdir: Path, batch: int, pad: bool, p: dict) -> None:
    """One LoadGen test of `run` over `images`; its logs go to `outdir`. LoadGen reads audit.config from the working
    directory, so it runs in an empty temporary one (this process is a worker of its own)."""
    lg = import_runtime("mlperf_loadgen", "mlcommons-loadgen", "the loadgen stage")
    threads = torch.get_num_threads()  # OpenMP sizes its pool per thread: LoadGen's issuing thread gets the same count

    def issue(samples) -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        index = np.fromiter((s.index for s in samples), dtype=np.int64, count=len(samples))
        for start in range(0, len(samples), batch):  # SingleStream: one sample; Offline: one query of them all
            chunk = images[torch.from_numpy(index[start : start + batch])]
            n = len(chunk)
            if pad and n < batch:  # a static-shape artifact takes only its batch size
                chunk = torch.cat([chunk, chunk.new_zeros(batch - n, *chunk.shape[1:])])
            run(chunk)
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s in samples[start : start + n]])

    s = lg.TestSettings()
    s.scenario = getattr(lg.TestScenario, scenario)
    s.mode = lg.TestMode.PerformanceOnly
    s.min_duration_ms, s.min_query_count = p["min_duration_ms"], p["min_query_count"]
    if scenario == "SingleStream":
        s.single_stream_expected_latency_ns = p["expected_latency_ns"]
    else:
        s.offline_expected_qps = p["expected_samples_per_s"]
    outdir = outdir.resolve()  # LoadGen runs in another working directory (below): a relative outdir would land there
    out = lg.LogOutputSettings()
    out.outdir, out.copy_summary_to_stdout = str(outdir), False
    log = lg.LogSettings()
    log.log_output, log.enable_trace = out, False  # the trace holds every sample's timestamps: megabytes a second
    outdir.mkdir(parents=True, exist_ok=True)
    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(len(images), len(images), lambda _: None, lambda _: None)  # every image is already in memory
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as empty:
        os.chdir(empty)
        try:
            lg.StartTestWithLogSettings(sut, qsl, s, log)
        finally:
            os.chdir(cwd)
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)


def measure_method(request: LoadgenRequest) -> dict:
    """Both scenarios of one method: load, check and calibrate at each scenario's batch, then hand it to LoadGen."""
    from edgequant.measure.timing import check_runs  # the benchmark's refusal of an artifact that does not run

    method = get_method(request.method)
    torch.set_num_threads(request.threads)
    images = to_input(load_prepared(request.test)["images"]).contiguous()
    results = {}
    for scenario, batch in zip(SCENARIOS, (request.latency_batch, request.throughput_batch), strict=True):
        run = method.load(Path(request.artifacts), batch, request.threads)
        x = images[:batch].contiguous()
        check_runs(run, x, request)
        call_s = calibrate(run, x)
        used = dict(settings(request.params, scenario))
        if scenario == "SingleStream":
            used["expected_latency_ns"] = expected_latency_ns(call_s)
        else:
            used["expected_samples_per_s"] = expected_qps(call_s, batch)
        outdir = Path(request.outdir) / scenario
        run_scenario(run, images, scenario, outdir, batch, method.static_shapes, used)
        results[scenario] = {**read_logs(outdir), "batch": batch, "calibration_ms_min": min(call_s) * 1e3, "settings": used}
    return results


def write_loadgen(request: LoadgenRequest, result_path: str, log_path: str) -> None:
    """Measure `request` and write its figures as JSON: a worker process's entry point (edgequant/measure/processes.py).
    A refused artifact or input (ValueError) is written as {"error": one line} for the stage to say."""
    from edgequant.measure.processes import serve

    serve(measure_method, request, result_path, log_path)


def skipped_methods(artifacts: Path, listed: list[str], machine: dict) -> dict[str, str]:
    """{method: one line} of the methods that cannot run here: refused at export (their record says why), their
    precision lacking in this CPU (`machine`, the probe's record), or their runtime not installed. Unlike the benchmark,
    no figure here is a ratio to the FP32 baseline, so a method whose baseline was refused still runs."""
    skipped = with_precision_refusals(refused_methods(artifacts, listed), listed, machine)
    for m in listed:
        missing = missing_modules(get_method(m))
        if m not in skipped and missing:
            skipped[m] = f"{m}: its runtime is not installed ({', '.join(missing)} missing): `make runtimes` installs it"
    return skipped


def measure_all(p: LoadgenParams, methods: list[str], threads: int, artifacts: Path, test: str, outdir: Path, batches: tuple[int, int]):
    """Both scenarios of every method, one worker process per method (the benchmark's fork server), logs under
    `outdir`/<method>/<scenario>. A worker that refuses its artifact or input stops the stage, naming it."""
    from tqdm import tqdm

    from edgequant.measure.processes import measure, start_method

    context = start_method()
    measured = {}
    for m in tqdm(methods, desc="loadgen", unit="method", disable=None):
        request = LoadgenRequest(m, threads, str(artifacts / m), test, *batches, p, str(outdir / m))
        start = time.perf_counter()
        measured[m] = measure(context, request, target=write_loadgen, timeout_s=request.timeout_s)
        single, offline = measured[m]["SingleStream"], measured[m]["Offline"]
        tqdm.write(
            f"  {m:<26} SingleStream {single['result']} p90 {single['latency_ms_p90']:.3f} ms, "
            f"Offline {offline['result']} {offline['samples_per_s']:.0f} samples/s ({time.perf_counter() - start:.1f} s)"
        )
    return measured
