"""Typed, validated views of params.yaml: one small dataclass per section, checked whole before any work."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml

from edgequant.data.datasets import DATASETS, FILES, LOCAL_KINDS, MD5

T = TypeVar("T")

# Every name that becomes a path (models/quantized/<method>) must be a plain word: dvc.yaml turns
# `../../tests` into an output that `dvc repro` deletes before the stage could refuse it.
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_GEMM_SIZE = 8192  # three 8192² FP32 matrices are 0.8 GB; 80000 asked for 25.6 GB
# Every integer param is a count, a size or a seed: C and torch take them as 32- or 64-bit integers, and a
# `seed: 2**70` failed inside the stage ("Overflow when unpacking long long") with no key named.
INT_RANGE = (-(2**31), 2**31 - 1)
MAX_THREADS = 1024  # torch and OpenMP would try to start that many workers
MAX_RUNS = 1_000_000  # timed calls per measurement: the latencies are kept in memory, 8 bytes each
MAX_PAIRS = 31  # vendor.pairs: the t quantiles of edgequant/measure/ratio.py go to 30 degrees of freedom
MAX_COLD_START_REPEATS = 100  # vendor.cold_start_repeats: one fresh interpreter each
MAX_REPEATS = 100  # benchmark.repeats: each repeat starts one process per (method, threads), 24 at the committed params
MAX_RUN_TIME_S = 600.0  # per throughput measurement: a benchmark worker is stopped after 600 s (edgequant/measure/processes.py)
# A params file is a few hundred bytes of plain values. DVC reads it whole (its dvc.yaml templating loads
# params.yaml), expanding every YAML alias: 600 bytes of nested aliases took gigabytes in `dvc status`.
MAX_PARAMS_BYTES = 1 << 20
MAX_PARAMS_NODES = 100_000  # values after expanding aliases; params.yaml has about 100


class ParamsError(ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ParamsError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_type(v, item_hint, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        if not isinstance(value, dict):
            raise ParamsError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_check_type(k, key_hint, where): _check_type(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    # bool is a subclass of int in Python; `epochs: true` is a typo, not a count.
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ParamsError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    if hint is int and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        raise ParamsError(f"{where}: expected an integer in [{INT_RANGE[0]}, {INT_RANGE[1]}], got {value}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        if not math.isfinite(value):  # `lr: .inf` trained 10 minutes to NaN and exited 0
            raise ParamsError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ParamsError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
    if hint is bool and not isinstance(value, bool):
        raise ParamsError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: object, known: list[str], where: str) -> ParamsError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ParamsError(f"params.yaml: unknown {where} '{key}'.{hint} Known: {', '.join(known)}")


def parse(cls: type[T], raw: Any, section: str) -> T:
    """Build dataclass `cls` from the mapping `raw`, naming `section` in every error."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: section '{section}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise _unknown(f"{section}.{key}", [f"{section}.{f}" for f in fields], "key")
    # A field with a default may be left out (train.model_args, train.checkpoint...): the files written before it stay valid.
    required = [name for name, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in raw]
    if missing:
        raise ParamsError(f"params.yaml: missing key(s) {', '.join(f'{section}.{m}' for m in missing)}")
    values = {name: _check_type(raw[name], hints[name], f"params.yaml: {section}.{name}") for name in fields if name in raw}
    return cls(**values)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {message}")


def check_names(names: list[str], key: str) -> None:
    """Plain names only: each becomes a path (models/quantized/<method>). Whether they are known is
    the registry's to say (edgequant.validate); this needs no import of it."""
    for name in names:
        _require(NAME.fullmatch(name) is not None, f"{key}: {name!r} is not a method name (lower-case letters, digits and '_' only)")


@dataclasses.dataclass(frozen=True)
class DownloadParams:
    dataset: str  # a name from edgequant.data.download.DATASETS, "custom" with its md5s below, or "folder" / "npz" at `path`
    md5: dict[str, str]  # custom only: md5 of each decompressed IDX file
    path: str = ""  # folder / npz only: the user's data, a path in the repository (a dependency of the download stage)

    def __post_init__(self) -> None:
        known = [*DATASETS, "custom", *LOCAL_KINDS]
        _require(self.dataset in known, f"download.dataset {self.dataset!r} is not known; known datasets: {', '.join(known)}")
        if self.dataset == "custom":
            ok = set(self.md5) == set(FILES) and all(MD5.fullmatch(v) for v in self.md5.values())
            _require(ok, f"download.md5 must give the 32-hex-digit md5 of exactly these decompressed files: {', '.join(FILES)}")
        else:
            _require(not self.md5, f"download.md5 is only for dataset 'custom'; {self.dataset} has its checksums built in")
        if self.dataset in LOCAL_KINDS:
            what = "a folder holding train/ and test/" if self.dataset == "folder" else "an .npz file"
            _require(bool(self.path), f"download.path must name {what} in the repository (dataset {self.dataset})")
            check_repo_path(self.path, "download.path")
        else:
            _require(not self.path, f"download.path is only for datasets {' and '.join(LOCAL_KINDS)}; {self.dataset} is fetched by name")


def check_repo_path(path: str, key: str) -> None:
    """A path inside the repository, written relative to its root (where every stage runs): it becomes a dvc.yaml
    dependency, and one outside the repository would be neither tracked nor shared."""
    pure = PurePosixPath(path)
    _require(
        not pure.is_absolute() and ".." not in pure.parts and "\\" not in path,
        f"{key} {path!r} must be a path inside the repository, relative to its root (e.g. examples/models/resnet8.py)",
    )
    _require(REPO_PATH.fullmatch(path) is not None, f"{key} {path!r}: {REPO_PATH_RULE}; rename the file or folder")


@dataclasses.dataclass(frozen=True)
class PrepareParams:
    calib_size: int  # images drawn from the training set to calibrate static INT8 methods
    calib_seed: int
    val_size: int  # further training images, disjoint from those: accuracy-aware methods measure their drop there

    def __post_init__(self) -> None:
        _require(self.calib_size > 0, f"prepare.calib_size must be > 0, got {self.calib_size}")
        _require(self.calib_seed >= 0, f"prepare.calib_seed must be >= 0, got {self.calib_seed}")
        _require(self.val_size > 0, f"prepare.val_size must be > 0, got {self.val_size}")


@dataclasses.dataclass(frozen=True)
class TrainParams:
    model: str  # a name from edgequant.model.zoo's registry, or an import path `file.py:Class` (validate checks it)
    seed: int
    epochs: int  # 0: no training; the checkpoint is evaluated and quantized as it is
    batch_size: int
    test_batch_size: int
    optimizer: str  # "adadelta" (the classic recipe) or "adam"
    lr: float
    gamma: float  # StepLR decay per epoch
    threads: int
    dropout_conv: float = 0.25  # the built-in models' dropout; an imported model takes its own arguments in model_args
    dropout_fc: float = 0.5
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # keyword arguments of an imported model's constructor
    checkpoint: str = ""  # a state dict (torch.save(model.state_dict(), path)) the training starts from
    # Input normalization, one value per image channel, kept inside the model (every artifact takes [0, 1] pixels);
    # empty: measured on the training images (the built-in models: one value over all pixels, as the classic recipe)
    mean: list[float] = dataclasses.field(default_factory=list)
    std: list[float] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")
        _require(
            self.epochs > 0 or (self.epochs == 0 and bool(self.checkpoint)),
            f"train.epochs must be > 0, got {self.epochs} (0 evaluates train.checkpoint without training: name one)",
        )
        _require(
            is_import_path(self.model) or not self.model_args, "train.model_args are for an imported model (train.model: file.py:Class)"
        )
        check_plain_values(self.model_args, "train.model_args")
        if self.checkpoint:
            check_repo_path(self.checkpoint, "train.checkpoint")
        _require(
            len(self.mean) == len(self.std), f"train.mean and train.std need one value per channel each, got {self.mean} and {self.std}"
        )
        _require(len(self.mean) <= MAX_CHANNELS, f"train.mean and train.std give {len(self.mean)} channels; images have 1 or 3")
        _require(all(s > 0 for s in self.std), f"train.std must be > 0 for every channel, got {self.std}")
        _require(self.batch_size > 0, f"train.batch_size must be > 0, got {self.batch_size}")
        _require(self.test_batch_size > 0, f"train.test_batch_size must be > 0, got {self.test_batch_size}")
        _require(self.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _require(self.lr > 0, f"train.lr must be > 0, got {self.lr}")
        _require(0 < self.gamma <= 1, f"train.gamma must be in (0, 1], got {self.gamma}")
        for name in ("dropout_conv", "dropout_fc"):
            p = getattr(self, name)
            _require(0 <= p < 1, f"train.{name} must be in [0, 1), got {p}")
        _require(0 < self.threads <= MAX_THREADS, f"train.threads must be in [1, {MAX_THREADS}], got {self.threads}")


OPTIMIZERS = ("adadelta", "adam")
MAX_CHANNELS = 3
# A path as dvc.yaml may name it: plain characters, no shell or YAML syntax (it reaches derived stage deps).
REPO_PATH = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_./-]{0,254}")
REPO_PATH_RULE = "a path of letters, digits, '_', '.', '-' and '/' only (no spaces), up to 255 characters, not starting with '-'"


def is_import_path(model: str) -> bool:
    """`file.py:Class`: a model imported from a module of the repository rather than one registered by name."""
    return ".py:" in model


def check_plain_values(value: Any, where: str, depth: int = 0) -> None:
    """Values a constructor may take from YAML and meta.json may record: numbers, strings, booleans, null, lists and
    mappings of those (a YAML date or a tagged object would not survive the JSON round trip the loaders read back)."""
    _require(depth < 8, f"{where} is nested too deeply")
    if isinstance(value, dict):
        for k, v in value.items():
            _require(isinstance(k, str), f"{where}: key {k!r} is not a string")
            check_plain_values(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_plain_values(v, f"{where}[{i}]", depth + 1)
    elif isinstance(value, float):
        _require(math.isfinite(value), f"{where}: {value!r} is not a finite number")
    else:
        _require(value is None or isinstance(value, (str, int, bool)), f"{where}: {type(value).__name__} {value!r} is not a plain value")


@dataclasses.dataclass(frozen=True)
class QuantizeParams:
    methods: list[str]
    qat_epochs: int  # passes over the calibration images quantization-aware training fine-tunes for

    def __post_init__(self) -> None:
        _require(self.qat_epochs > 0, f"quantize.qat_epochs must be > 0, got {self.qat_epochs}")
        _require(len(self.methods) > 0, "quantize.methods is empty: list at least one method, e.g. [fp32]")
        _require(len(set(self.methods)) == len(self.methods), f"quantize.methods has duplicates: {self.methods}")
        check_names(self.methods, "quantize.methods")
        _require("fp32" in self.methods, "quantize.methods must include 'fp32', the baseline every ratio is against")


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
    # Interleaved rounds of every (method, threads) measurement, each in a process of its own; figures are their medians
    # (edgequant/measure/intervals.py). 1, for files written before it: one run, as they were sized for, and no interval.
    repeats: int = 1

    def __post_init__(self) -> None:
        _require(len(self.threads) > 0, "benchmark.threads is empty: list at least one thread count, e.g. [1]")
        _require(
            all(0 < t <= MAX_THREADS for t in self.threads), f"benchmark.threads must all be in [1, {MAX_THREADS}], got {self.threads}"
        )
        for name in ("latency_batch", "throughput_batch", "latency_runs", "peak_gemm_size"):
            _require(getattr(self, name) > 0, f"benchmark.{name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_runs", "profile_runs"):
            _require(getattr(self, name) >= 0, f"benchmark.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("warmup_runs", "latency_runs", "profile_runs"):
            _require(getattr(self, name) <= MAX_RUNS, f"benchmark.{name} must be <= {MAX_RUNS}, got {getattr(self, name)}")
        _require(
            1 <= self.repeats <= MAX_REPEATS,
            f"benchmark.repeats must be in [1, {MAX_REPEATS}] (6 or more give a 95 % interval), got {self.repeats}",
        )
        _require(
            self.repeats * self.latency_runs <= MAX_RUNS,
            f"benchmark.repeats x latency_runs must be <= {MAX_RUNS} (every repeat's latencies are pooled in memory),"
            f" got {self.repeats} x {self.latency_runs}",
        )
        _require(
            0 < self.min_run_time_s <= MAX_RUN_TIME_S,
            f"benchmark.min_run_time_s must be in (0, {MAX_RUN_TIME_S}], got {self.min_run_time_s}",
        )
        _require(
            self.peak_gemm_size <= MAX_GEMM_SIZE,
            f"benchmark.peak_gemm_size must be <= {MAX_GEMM_SIZE} (its three matrices take 12·n² bytes), got {self.peak_gemm_size}",
        )

    def check_batches(self, test_images: int, where: str) -> None:
        """Both batch sizes fit in the test set: a batch larger than it would time zero-padding, not images."""
        for name in ("latency_batch", "throughput_batch"):
            value = getattr(self, name)
            _require(value <= test_images, f"benchmark.{name} = {value} exceeds the {test_images} test images of {where}")


MAX_LOADGEN_DURATION_MS = 3_600_000  # an hour per scenario and method: MLPerf's own runs take 600 s (loadgen.official)
MAX_LOADGEN_QUERIES = 10_000_000  # LoadGen generates and keeps every query's record in memory


@dataclasses.dataclass(frozen=True)
class LoadgenParams:
    min_duration_ms: int  # each scenario runs at least this long, per method (the short run; `official` overrides it)
    min_query_count: int  # and issues at least this many queries
    official: bool  # true: MLPerf's own minimums, from LoadGen's built-in mlperf.conf (edgequant/measure/loadgen.py)

    def __post_init__(self) -> None:
        _require(
            0 < self.min_duration_ms <= MAX_LOADGEN_DURATION_MS,
            f"loadgen.min_duration_ms must be in [1, {MAX_LOADGEN_DURATION_MS}], got {self.min_duration_ms}",
        )
        _require(
            0 < self.min_query_count <= MAX_LOADGEN_QUERIES,
            f"loadgen.min_query_count must be in [1, {MAX_LOADGEN_QUERIES}], got {self.min_query_count}",
        )


REQUIRE = ("all", "any")  # gate.require: which candidates must pass for the release to pass


@dataclasses.dataclass(frozen=True)
class GateParams:
    methods: list[str]  # the INT8 candidates a release may ship; each must pass every limit
    max_accuracy_drop_pp: float  # top-1 accuracy lost against fp32, in percentage points
    min_speedup: float  # batch throughput against the same runtime's FP32, at every benchmarked thread count
    max_size_ratio: float  # shipped artifact size over the same runtime's FP32 artifact
    # false for a workload that studies where INT8 fails: every verdict is still written and printed, and
    # `dvc repro` goes on; a release's gate is true
    enforce: bool
    # "all": every candidate must pass every check. "any": the release passes when at least one candidate passes
    # every check on this machine (the one the fleet ships there); the others' failures are recorded and printed.
    # INT8 speed is the CPU's: LiteRT INT8 ran at 0.88x its FP32 on an AVX2 CPU without VNNI, 3.3x with VNNI.
    require: str = "all"

    def __post_init__(self) -> None:
        _require(len(self.methods) > 0, "gate.methods is empty: list the INT8 methods to hold to the limits")
        _require(self.require in REQUIRE, f"gate.require must be one of {', '.join(REQUIRE)}, got {self.require!r}")
        _require(self.max_accuracy_drop_pp >= 0, f"gate.max_accuracy_drop_pp must be >= 0, got {self.max_accuracy_drop_pp}")
        _require(self.min_speedup > 0, f"gate.min_speedup must be > 0, got {self.min_speedup}")
        _require(0 < self.max_size_ratio <= 1, f"gate.max_size_ratio must be in (0, 1], got {self.max_size_ratio}")
        check_names(self.methods, "gate.methods")


@dataclasses.dataclass(frozen=True)
class VendorParams:
    """The `vendor` stage: the harness beside the runtimes' own tools, and cold start (edgequant/measure/vendor.py)."""

    pairs: int = 6  # harness/tool pairs per (method, threads); [min, max] of 6 ratios holds their median at 96.9 %
    methods: list[str] = dataclasses.field(default_factory=lambda: ["openvino_fp32", "openvino_int8", "litert_fp32", "litert_int8"])
    cold_start_repeats: int = 5  # fresh processes per method (and for the numpy-only baseline)

    def __post_init__(self) -> None:
        _require(2 <= self.pairs <= MAX_PAIRS, f"vendor.pairs must be in [2, {MAX_PAIRS}] (an interval needs 2), got {self.pairs}")
        _require(
            1 <= self.cold_start_repeats <= MAX_COLD_START_REPEATS,
            f"vendor.cold_start_repeats must be in [1, {MAX_COLD_START_REPEATS}], got {self.cold_start_repeats}",
        )
        _require(len(set(self.methods)) == len(self.methods), f"vendor.methods has duplicates: {self.methods}")
        check_names(self.methods, "vendor.methods")


SECTIONS = {
    "download": DownloadParams,
    "prepare": PrepareParams,
    "train": TrainParams,
    "quantize": QuantizeParams,
    "benchmark": BenchmarkParams,
    "gate": GateParams,
    "vendor": VendorParams,
    "loadgen": LoadgenParams,
}


def expanded_size(node: yaml.Node, sizes: dict[int, int] | None = None) -> int:
    """How many values `node` becomes once every alias is expanded, counted on the composed graph (an alias
    is the same node object as its anchor, so each node is counted once and multiplied by its uses)."""
    sizes = {} if sizes is None else sizes
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a recursive alias counts as one value instead of looping
        if isinstance(node, yaml.MappingNode):
            total = 1 + sum(expanded_size(k, sizes) + expanded_size(v, sizes) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(expanded_size(v, sizes) for v in node.value)
        else:
            total = 1
        sizes[id(node)] = total
    return sizes[id(node)]


def read_yaml(path: str | Path) -> dict:
    """Read params.yaml with a clear message when it is missing, not a mapping, or too big once its aliases
    are expanded (checked on the composed graph, before any value is built)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (run from the project root, where params.yaml lives)")
    if path.stat().st_size > MAX_PARAMS_BYTES:
        raise ParamsError(f"{path}: {path.stat().st_size} bytes, more than a params file needs ({MAX_PARAMS_BYTES})")
    try:
        text = path.read_text()
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None and (size := expanded_size(node)) > MAX_PARAMS_NODES:
            raise ParamsError(
                f"{path}: its YAML aliases expand to {size:,} values (a params file has about a hundred; limit"
                f" {MAX_PARAMS_NODES:,}); DVC would expand them all in memory: remove the anchors (&) and aliases (*)"
            )
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise ParamsError(f"{path}: nested too deeply to be a params file") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def read_sections(path: str | Path) -> dict:
    """params.yaml's sections, refusing one edgequant does not know (a typo'd `trian:` would be ignored)."""
    data = read_yaml(path)
    for key in data:
        if key not in SECTIONS:
            raise _unknown(key, list(SECTIONS), "section")
    return data


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """Refusals begin "params.yaml: ..."; for another file (a workload's params), they name that file."""
    try:
        yield
    except ParamsError as exc:
        text = str(exc)
        if Path(path).as_posix() == "params.yaml" or not text.startswith("params.yaml"):
            raise
        raise ParamsError(f"{path}{text.removeprefix('params.yaml')}") from exc


def load(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Load and validate one section of params.yaml (edgequant.validate checks the whole file)."""
    with naming(path):
        data = read_sections(path)
        if section not in data:
            raise ParamsError(f"{path}: missing section '{section}'")
        return parse(cls, data[section], section)
