"""Quality gate: hold the INT8 candidates to accuracy, speed and size limits from params.yaml."""

from __future__ import annotations

import dataclasses

from edgequant.params import GateParams


@dataclasses.dataclass(frozen=True)
class Check:
    method: str
    what: str  # e.g. "throughput speed-up vs onnx_fp32 at 2 threads"
    measured: float
    limit: float
    param: str  # the params.yaml key that sets the limit
    at_least: bool  # the limit is a minimum (speed-up) rather than a maximum (accuracy drop, size)

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit

    def describe(self) -> str:
        verdict = "ok" if self.passed else "FAIL"
        bound = ">=" if self.at_least else "<="
        return f"{verdict}: {self.method}: {self.what} {self.measured:.4g}, limit {bound} {self.limit:g} ({self.param})"


def check(metrics: dict, gate: GateParams) -> list[Check]:
    """Every check for every gated method, from the benchmark's combined metrics.

    A method the benchmark did not run is an error, not a pass: a gate that silently checks
    nothing is worse than none.
    """
    measured = metrics["methods"]
    missing = [m for m in gate.methods if m not in measured]
    if missing:
        raise ValueError(f"gate.methods {missing} were not benchmarked; add them to quantize.methods or remove them from gate.methods")
    checks = []
    for name in gate.methods:
        m = measured[name]
        drop, ratio = m["accuracy_drop_pp"], m["size_ratio_vs_runtime_fp32"]
        checks.append(Check(name, "accuracy drop vs fp32 (pp)", drop, gate.max_accuracy_drop_pp, "gate.max_accuracy_drop_pp", False))
        if ratio is not None:
            checks.append(Check(name, "size vs own-runtime fp32", ratio, gate.max_size_ratio, "gate.max_size_ratio", False))
        for key in sorted(k for k in m if k.startswith("threads_")):
            speedup = m[key]["throughput_speedup_vs_runtime_fp32"]
            if speedup is None:
                continue
            threads = key.removeprefix("threads_")
            what = f"throughput speed-up vs own-runtime fp32 at {threads} thread(s)"
            checks.append(Check(name, what, speedup, gate.min_speedup, "gate.min_speedup", True))
    return checks


def report(checks: list[Check]) -> dict:
    """The gate's metrics file: overall verdict plus every check, so a failure is inspectable."""
    return {
        "passed": all(c.passed for c in checks),
        "failures": sum(not c.passed for c in checks),
        "checks": [{**dataclasses.asdict(c), "passed": c.passed} for c in checks],
    }
