"""Timing helpers, padded prediction, and the summary's ratios."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from edgequant.measure import timing
from edgequant.measure.summary import THREAD_SLACK, accuracy, summarize, threads_unused
from edgequant.measure.timing import measure_latency, measure_throughput, predict
from edgequant.model.layers import net_macs

ONE_CORE_TOLERANCE = 0.05  # process_time and perf_counter tick apart: one busy thread reads up to ~1.02 cores


def test_latency_percentiles_are_those_of_the_timed_calls_only(monkeypatch):
    """A scripted clock: the warm-up calls read no clock and must not count; the timed calls take 1..100 ms."""
    calls = {"n": 0}
    durations_ms = list(range(1, 101))
    ticks = iter(t for d in durations_ms for t in (0, d * 1_000_000))  # start, end of each timed call, in ns

    def run(x):
        calls["n"] += 1

    monkeypatch.setattr(timing.time, "perf_counter_ns", lambda: next(ticks))
    r = measure_latency(run, torch.ones(4), warmup=3, runs=100)
    assert calls["n"] == 103
    # numpy's linear percentiles of 1..100: p50 = 50.5, p90 = 90.1, p99 = 99.01; the mean is 50.5
    assert r.pop("latency_ms_calls") == pytest.approx(durations_ms)  # every timed call, for pooling over the repeats
    assert r == pytest.approx({"latency_ms_p50": 50.5, "latency_ms_p90": 90.1, "latency_ms_p99": 99.01, "latency_ms_mean": 50.5})


def test_throughput_counts_images_per_second_of_the_batch():
    def run(x):  # a call of known length: 5 ms whatever the batch
        time.sleep(0.005)
        return x

    r = measure_throughput(run, torch.ones(16, 3), min_run_time_s=0.2, threads=1)
    assert r["batch_ms_median"] == pytest.approx(5.0, rel=0.5)  # sleep overshoots a little, never undershoots much
    assert r["throughput_ips"] == pytest.approx(16 / (r["batch_ms_median"] / 1e3))  # images of the batch, not calls
    assert r["throughput_ips"] < 16 / 0.005 and r["minor_faults_per_batch"] >= 0


def test_a_run_given_two_threads_that_keeps_one_core_busy_is_named():
    """A runner that computes on one thread only (pure Python holds the GIL) while it was given two: its loop's CPU
    time over wall time cannot exceed one core, and the summary names it. A run that uses both passes unnamed."""

    def run(x):
        return sum(i * i for i in range(20_000))

    r = measure_throughput(run, torch.ones(4), min_run_time_s=0.2, threads=2, count_faults=False)
    assert 0 < r["cores_busy"] <= 1.0 + ONE_CORE_TOLERANCE  # a loaded machine may give it less than one core, never more
    methods = {"x_int8": {"threads_1": {"cores_busy": 0.98}, "threads_2": {"cores_busy": r["cores_busy"]}}}
    assert threads_unused(methods) == [f"x_int8 at 2 threads kept {r['cores_busy']:.2f} cores busy"]
    both = {"x_int8": {"threads_1": {"cores_busy": 0.98}, "threads_2": {"cores_busy": 2 - THREAD_SLACK + 0.01}}}
    assert threads_unused(both) == []


# Page faults per training step of the real model at batch 64, after warm-up.
FAULTS_PER_TRAINING_STEP = """
import sys, torch
from edgequant.model.zoo import Net
from edgequant.measure.memory import keep_freed_memory, minor_faults
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.manual_seed(0)
model, x, y = Net().train(), torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
def step():
    torch.nn.functional.cross_entropy(model(x), y).backward()
for _ in range(10):  # warm-up: the kept heap grows to its working size here, once
    step()
before = minor_faults()
for _ in range(10):
    step()
print((minor_faults() - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_keep_freed_memory_stops_page_faults_on_reuse():
    # A fresh process each: mallopt changes the allocator for the rest of the process.
    # glibc raises its mmap and trim thresholds by itself after the first large free, by an amount that
    # depends on the allocation history (one run counted 230 faults a step, others ~5,000). Pinning them at
    # their initial values, as MALLOC_*_THRESHOLD_ does, makes the control repeatable; keep_freed_memory
    # overrides both in the other process.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

    def faults(mode: str) -> float:
        cmd = [sys.executable, "-c", FAULTS_PER_TRAINING_STEP, mode]
        return float(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)

    default, kept = faults("default"), faults("keep")
    assert default > 1000, f"glibc should unmap and re-fault activations every step, saw {default} faults"
    assert kept < default / 20, f"with freed memory kept: {kept} faults per step, default {default}"


def test_predict_pads_the_last_batch_for_static_shapes():
    seen = []

    def run(x):
        seen.append(len(x))
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

    x = torch.arange(10).float().view(10, 1, 1, 1)
    assert predict(run, x, 4).argmax(1).tolist() == list(range(10))
    assert seen == [4, 4, 4]


MACHINE_INFO = (
    "import json, sys; from edgequant.measure.timing import machine_info; print(json.dumps(machine_info(json.loads(sys.argv[1]))))"
)


@pytest.mark.slow
def test_machine_info_keeps_the_probe_and_reports_the_capability_torch_runs_at(subprocess_env):
    """Under ATEN_CPU_CAPABILITY=default torch runs its portable kernels on any CPU: the record must say DEFAULT,
    whatever the probe found the CPU able to do."""
    probed = {"name": "a-machine", "isa": {"torch_cpu_capability": "AVX2"}}
    env = dict(subprocess_env, ATEN_CPU_CAPABILITY="default")
    done = subprocess.run([sys.executable, "-c", MACHINE_INFO, json.dumps(probed)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads(done.stdout)
    assert info["name"] == "a-machine" and info["isa"] == probed["isa"]
    assert info["reported"]["torch_cpu_capability"] == "DEFAULT" and info["reported"]["int8_path"]


def test_accuracy_counts_agreement_drop_and_logit_sqnr_against_fp32():
    sizes = {"fp32": 4000, "dynamic_int8": 1000}
    runs = {  # one repeat each
        ("fp32", 1): [{"latency_ms_p50": 2.0, "latency_ms_p90": 3, "latency_ms_p99": 4, "throughput_ips": 100.0}],
        ("dynamic_int8", 1): [{"latency_ms_p50": 1.0, "latency_ms_p90": 2, "latency_ms_p99": 3, "throughput_ips": 400.0}],
    }
    labels = torch.tensor([0, 1, 2, 3])
    logits = {"fp32": torch.ones(4, 10), "dynamic_int8": torch.full((4, 10), 1.1)}  # 10 % off everywhere: 20 dB
    acc = accuracy(
        ["fp32", "dynamic_int8"], {"fp32": torch.tensor([0, 1, 2, 0]), "dynamic_int8": torch.tensor([0, 1, 0, 0])}, logits, labels
    )
    expected = {"accuracy_pct": 50.0, "agreement_with_fp32_pct": 75.0, "accuracy_drop_pp": 25.0, "logit_sqnr_db_vs_fp32": 20.0}
    assert {k: acc["dynamic_int8"][k] for k in expected} == pytest.approx(expected)
    assert acc["fp32"]["logit_sqnr_db_vs_fp32"] == 200.0
    assert (acc["dynamic_int8"]["flips_lost"], acc["dynamic_int8"]["flips_gained"]) == (1, 0)

    metrics, rows = summarize(["fp32", "dynamic_int8"], sizes, runs, {1: {"fp32_gmacs": 10.0, "int8_gmacs": 40.0}}, acc, "cnn")
    d = metrics["methods"]["dynamic_int8"]
    assert d["size_ratio_vs_fp32"] == 0.25
    assert d["threads_1"]["throughput_speedup_vs_fp32_eager"] == 4.0
    assert d["threads_1"]["latency_speedup_vs_fp32_eager"] == 2.0
    assert d["threads_1"]["peak_fraction"] == pytest.approx(sum(net_macs("cnn").values()) * 400 / 1e9 / 40)
    assert d["baseline"] == "fp32" and d["threads_1"]["throughput_speedup_vs_runtime_fp32"] == 4.0
    assert len(rows) == 2 and rows[1]["threads"] == 1 and rows[1]["baseline"] == "fp32" and "threads_1" not in rows[1]
    assert metrics["repeats"] == 1 and metrics["interval_coverage_pct"] is None and "throughput_ips_ci95_low" not in d["threads_1"]


def test_flips_and_mcnemar():
    from edgequant.measure.summary import flips

    def split(lost, gained, same=100):
        fp32 = torch.tensor([True] * lost + [False] * gained + [True] * same)
        method = torch.cat([torch.zeros(lost, dtype=torch.bool), torch.ones(gained, dtype=torch.bool), fp32[lost + gained :]])
        return flips(fp32, method)

    assert split(0, 0) == {"flips_lost": 0, "flips_gained": 0, "mcnemar_p": 1.0}
    assert split(3, 3)["mcnemar_p"] == 1.0  # as many gained as lost: no evidence either way
    assert split(10, 0)["mcnemar_p"] == pytest.approx(2 / 2**10)  # ten lost, none gained: 0.002
    assert split(6, 1)["mcnemar_p"] == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125: could be chance


def test_the_drops_interval_is_exact_and_agrees_with_mcnemar():
    from edgequant.measure.summary import drop_interval_pp, flips

    def p_value(lost, gained):
        fp32 = torch.tensor([True] * lost + [False] * gained + [True])
        return flips(fp32, torch.cat([~fp32[:-1], fp32[-1:]]))["mcnemar_p"]

    assert drop_interval_pp(0, 0, 10_000) == (0.0, 0.0)  # nothing flipped: the drop is exactly 0
    low, high = drop_interval_pp(68, 31, 10_000)  # per-tensor ONNX on Fashion-MNIST: +0.37 pp
    assert 0.16 < low < 0.18 and 0.54 < high < 0.56
    assert drop_interval_pp(5, 0, 10_000)[0] < 0 < drop_interval_pp(6, 0, 10_000)[0]  # p 0.0625 vs 0.031
    assert drop_interval_pp(3, 3, 100) == pytest.approx(tuple(100 * v for v in drop_interval_pp(3, 3, 10_000)))
    for lost in range(0, 30, 3):  # clear of zero exactly when McNemar's exact p < 0.05
        for gained in range(0, 30, 2):
            low, high = drop_interval_pp(lost, gained, 10_000)
            assert (low > 0 or high < 0) == (p_value(lost, gained) < 0.05), (lost, gained)
