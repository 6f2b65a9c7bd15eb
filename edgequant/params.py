"""Typed, validated views of params.yaml: one small dataclass per stage that rejects unknown keys."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    # bool is a subclass of int in Python; `epochs: true` is a typo, not a count.
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ParamsError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ParamsError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ParamsError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
    return value


def parse(cls: type[T], raw: Any, section: str) -> T:
    """Build dataclass `cls` from the mapping `raw`, naming `section` in every error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{section}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean '{section}.{close[0]}'?" if close else ""
            raise ParamsError(f"params.yaml: unknown key '{section}.{key}'.{hint} Known keys: {', '.join(fields)}")
    missing = [name for name in fields if name not in raw]
    if missing:
        raise ParamsError(f"params.yaml: missing key(s) {', '.join(f'{section}.{m}' for m in missing)}")
    values = {name: _check_type(raw[name], hints[name], f"params.yaml: {section}.{name}") for name in fields}
    return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {message}")


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    calib_size: int  # images drawn from the training set to calibrate static INT8 methods
    calib_seed: int

    def __post_init__(self) -> None:
        _require(self.calib_size > 0, f"prepare.calib_size must be > 0, got {self.calib_size}")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    seed: int
    epochs: int
    batch_size: int
    test_batch_size: int
    optimizer: str  # "adadelta" (the classic recipe) or "adam"
    lr: float
    gamma: float  # StepLR decay per epoch
    dropout_conv: float
    dropout_fc: float
    threads: int

    def __post_init__(self) -> None:
        _require(self.epochs > 0, f"train.epochs must be > 0, got {self.epochs}")
        _require(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _require(self.test_batch_size > 0, f"train.test_batch_size must be > 0, got {self.test_batch_size}")
        _require(self.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0 < self.gamma <= 1, f"train.gamma must be in (0, 1], got {self.gamma}")
        for name in ("dropout_conv", "dropout_fc"):
            p = getattr(self, name)
            _require(0 <= p < 1, f"train.{name} must be in [0, 1), got {p}")
        _require(self.threads > 0, f"train.threads must be > 0, got {self.threads}")


OPTIMIZERS = ("adadelta", "adam")


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    methods: list[str]

    def __post_init__(self) -> None:
        _require(len(self.methods) > 0, "quantize.methods is empty: list at least one method, e.g. [fp32]")
        _require(len(set(self.methods)) == len(self.methods), f"quantize.methods has duplicates: {self.methods}")
        _require("fp32" in self.methods, "quantize.methods must include 'fp32', the baseline every ratio is against")
        from edgequant.registry import get_method  # late import: the registry imports heavy runtimes lazily

        for name in self.methods:
            get_method(name)  # raises ValueError listing the known names


@dataclasses.dataclass(frozen=True)
class BenchmarkParams:
    threads: list[int]
    latency_batch: int
    throughput_batch: int
    warmup_runs: int
    latency_runs: int  # timed batch-`latency_batch` calls per (method, threads)
    min_run_time_s: float  # throughput: time each measurement at least this long
    peak_gemm_size: int  # square GEMM used to measure this CPU's FP32 and INT8 peak
    keep_freed_memory: bool  # glibc keeps freed blocks for reuse (as jemalloc would) instead of unmapping them
    profile_runs: int  # profiled batch calls per method at the smallest thread count (0: no per-operator profile)

    def __post_init__(self) -> None:
        _require(len(self.threads) > 0, "benchmark.threads is empty: list at least one thread count, e.g. [1]")
        _require(all(t > 0 for t in self.threads), f"benchmark.threads must all be > 0, got {self.threads}")
        for name in ("latency_batch", "throughput_batch", "latency_runs", "peak_gemm_size"):
            _require(getattr(self, name) > 0, f"benchmark.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_runs", "profile_runs"):
            _require(getattr(self, name) >= 0, f"benchmark.{name} must be >= 0, got {getattr(self, name)}")
        _require(self.min_run_time_s > 0, f"benchmark.min_run_time_s must be > 0, got {self.min_run_time_s}")


@dataclasses.dataclass(frozen=True)
class GateParams:
    methods: list[str]  # the INT8 candidates a release may ship; each must pass every limit
    max_accuracy_drop_pp: float  # top-1 accuracy lost against fp32, in percentage points
    min_speedup: float  # batch throughput against the same runtime's FP32, at every benchmarked thread count
    max_size_ratio: float  # shipped artifact size over the same runtime's FP32 artifact

    def __post_init__(self) -> None:
        _require(len(self.methods) > 0, "gate.methods is empty: list the INT8 methods to hold to the limits")
        _require(self.max_accuracy_drop_pp >= 0, f"gate.max_accuracy_drop_pp must be >= 0, got {self.max_accuracy_drop_pp}")
        _require(self.min_speedup > 0, f"gate.min_speedup must be > 0, got {self.min_speedup}")
        _require(0 < self.max_size_ratio <= 1, f"gate.max_size_ratio must be in (0, 1], got {self.max_size_ratio}")
        from edgequant.registry import get_method

        for name in self.methods:
            get_method(name)


def read_yaml(path: str | Path) -> dict:
    """Read params.yaml with a clear message when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (run from the project root, where params.yaml lives)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Load and validate one section of params.yaml."""
    data = read_yaml(path)
    if section not in data:
        raise ParamsError(f"{path}: missing section '{section}'")
    return parse(cls, data[section], section)
