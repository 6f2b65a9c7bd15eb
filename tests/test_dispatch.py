"""The harness's dispatch overhead over a runtime's own clock: per-call differences, their median and interval."""

from __future__ import annotations

import json

import pytest
import torch

from edgequant.measure import dispatch
from edgequant.quantize.catalog import Clocked, get_method, known_methods

# Wall and runtime times whose median difference (0.1 ms) is not the difference of their medians (5.0 - 4.0 = 1.0 ms):
# the overhead is a per-call figure, and a slow call inside the runtime is not overhead.
WALL_MS = [1.0, 1.1, 5.0, 5.1, 9.0, 9.1, 2.0]
RUNTIME_MS = [0.9, 1.0, 4.0, 5.0, 8.9, 9.0, 1.95]
# The runtimes whose Python API gives each call's own time (a profiler event per run); the others keep none.
CLOCKED_RUNTIMES = {"onnxruntime", "executorch-xnnpack"}


def test_the_overhead_is_the_median_of_each_calls_difference_with_its_interval():
    got = dispatch.summarize_clock({"clock": "c", "wall_ms": WALL_MS, "internal_ms": RUNTIME_MS})
    assert got["overhead_ms_p50"] == pytest.approx(0.1) and got["calls"] == 7
    assert (got["harness_ms_p50"], got["internal_ms_p50"]) == (5.0, 4.0)
    assert got["overhead_ms_p50_ci95_low"] == pytest.approx(0.05) and got["overhead_ms_p50_ci95_high"] == pytest.approx(1.0)
    assert got["overhead_pct_of_harness"] == pytest.approx(2.0)


def test_a_clock_that_lost_calls_fails_the_run_instead_of_pairing_the_wrong_ones(tmp_path, monkeypatch):
    test = tmp_path / "test.pt"
    torch.save({"images": torch.zeros(4, 28, 28, dtype=torch.uint8), "labels": torch.zeros(4, dtype=torch.uint8)}, test)

    class Short:
        @staticmethod
        def clock(out_dir, batch, threads, x, calls):
            return Clocked("a clock that dropped its first call", [1.0] * calls, [0.5] * (calls - 1))

    monkeypatch.setattr("edgequant.quantize.catalog.get_method", lambda name: Short)
    request = dispatch.ClockRequest("m", str(tmp_path), str(test), 1, 1, 2, 5, False)
    with pytest.raises(ValueError, match="recorded 6 calls of 7 made"):
        dispatch.clock_run(request)
    result, log = tmp_path / "result.json", tmp_path / "log.txt"
    with monkeypatch.context() as m:  # the worker's entry point redirects stdout and stderr: keep pytest's
        m.setattr("edgequant.measure.processes.os.dup2", lambda *a: None)
        m.setattr("edgequant.stage.watch_parent", lambda: None)
        dispatch.write_clock_run(request, str(result), str(log))
    assert json.loads(result.read_text()) == {"error": "m: a clock that dropped its first call recorded 6 calls of 7 made"}


def test_every_method_of_a_runtime_with_its_own_clock_registers_it():
    methods = [get_method(name) for name in known_methods()]
    assert {m.runtime for m in methods if m.clock} == CLOCKED_RUNTIMES
    assert all(m.clock for m in methods if m.runtime in CLOCKED_RUNTIMES)
