"""The registry of quantization methods, keyed by the names used in params.yaml."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import pkgutil
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch

from edgequant.quantize.precisions import PRECISIONS

# A runner maps a float32 batch of [0, 1] pixels, shaped (N, *model.INPUT_SHAPE), to logits (N, classes): what every
# method's `load` returns, and what the benchmark times.
Runner = Callable[[torch.Tensor], torch.Tensor]

NAME = re.compile(r"[a-z][a-z0-9_]*")  # a method's name becomes a directory: models/quantized/<name>


@dataclasses.dataclass(frozen=True)
class Exported:
    """What a method's export wrote: the file a device would ship, and optional per-layer SQNR (dB)."""

    shipped: Path
    sqnr_db: dict[str, float] | None = None
    settings: dict[str, object] | None = None  # choices a reader of the results should know (recorded in meta.json)


@dataclasses.dataclass(frozen=True)
class Labelled:
    """What methods that learn or search get besides calibration images: the calibration labels (QAT
    fine-tunes on them), a validation subset disjoint from them, and the accuracy the method may lose
    there (gate.max_accuracy_drop_pp, the budget the gate then checks on the test set)."""

    calib_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    max_drop_pp: float
    qat_epochs: int


@dataclasses.dataclass(frozen=True)
class Clocked:
    """The same calls on two clocks: perf_counter around the harness's runner, and the runtime's own record of each."""

    clock: str  # what the runtime's clock times, in words
    wall_ms: list[float]
    internal_ms: list[float]


def time_calls(run: Runner, x: torch.Tensor, calls: int) -> list[float]:
    """Milliseconds of each of `calls` calls of run(x), by perf_counter, as a clock's harness side."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return times


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    runtime: str  # the engine that runs the artifact on the device
    precision: str  # a name of edgequant/quantize/precisions.py: "fp32", "bf16", "int8"
    baseline: str  # FP32 method of the same runtime: the one rule that pairs INT8 with its FP32
    static_shapes: bool  # one artifact per batch size (ExecuTorch, compiled graphs) or one for all
    description: str
    export: Callable[..., Exported]  # (model, calib, sample, out_dir, batch_sizes)
    load: Callable[[Path, int, int], Runner]  # (out_dir, batch_size, threads)
    # (out_dir, batch_size, threads, x, runs) -> ms per call for each operator, from the runtime's own
    # profiler; None: the benchmark profiles the runner with torch.profiler (PyTorch runtimes).
    profile: Callable[[Path, int, int, torch.Tensor, int], dict[str, float]] | None = None
    requires: tuple[str, ...] = ()  # modules of optional packages it imports on first use (the `runtimes` extra)
    models: tuple[str, ...] | None = None  # the models it can quantize (an eager rewrite is written per model); None: any
    labelled: bool = False  # export takes a `labelled` keyword (Labelled): accuracy-aware and QAT methods
    # (out_dir, batch_size, threads, x, calls) -> Clocked: each call timed around the harness's runner and by the
    # runtime's own clock; None where the runtime keeps none the harness can read (edgequant/measure/dispatch.py).
    clock: Callable[[Path, int, int, torch.Tensor, int], Clocked] | None = None


_METHODS: dict[str, Method] = {}
_MODULES: dict[str, str] = {}  # method -> the module that registered it: lists follow module order, whatever imported first


def register(
    name: str,
    *,
    runtime: str,
    precision: str,
    baseline: str,
    static_shapes: bool = False,
    requires: tuple[str, ...] = (),
    models: tuple[str, ...] | None = None,
    labelled: bool = False,
):
    """Class decorator: a class with static `export(model, calib, sample, out_dir, batch_sizes)` and
    `load(out_dir, batch_size, threads)` (optionally `profile(out_dir, batch_size, threads, x, runs)` and
    `clock(out_dir, batch_size, threads, x, calls)`) becomes the method `name`; its docstring is its description.
    `requires` names the optional modules it imports lazily, so a method can be listed, and its tests skipped,
    where they are not installed."""
    _check(name, precision)  # at the decorator, before any class is defined

    def add(cls: type) -> type:
        add_method(
            name,
            runtime=runtime,
            precision=precision,
            baseline=baseline,
            description=(cls.__doc__ or "").strip(),
            export=cls.export,
            load=cls.load,
            profile=getattr(cls, "profile", None),
            clock=getattr(cls, "clock", None),
            static_shapes=static_shapes,
            requires=requires,
            models=models,
            labelled=labelled,
        )
        return cls

    return add


def add_method(
    name: str,
    *,
    runtime: str,
    precision: str,
    baseline: str,
    description: str,
    export: Callable[..., Exported],
    load: Callable[[Path, int, int], Runner],
    profile: Callable[[Path, int, int, torch.Tensor, int], dict[str, float]] | None = None,
    clock: Callable[[Path, int, int, torch.Tensor, int], Clocked] | None = None,
    static_shapes: bool = False,
    requires: tuple[str, ...] = (),
    models: tuple[str, ...] | None = None,
    labelled: bool = False,
) -> Method:
    """Register the method `name` from its functions: what `register` does for a class, and what a table of variants
    (a config value per name, its bound `export`) does for each entry."""
    _check(name, precision)
    if name in _METHODS:
        raise ValueError(f"quantization method {name!r} is registered twice")
    method = Method(
        name, runtime, precision, baseline, static_shapes, description, export, load, profile, requires, models, labelled, clock
    )
    _METHODS[name] = method
    _MODULES[name] = export.__module__
    return method


def _check(name: str, precision: str) -> None:
    if not NAME.fullmatch(name):
        raise ValueError(f"quantization method name {name!r} must be lower-case letters, digits and '_' (it names a directory)")
    if precision not in PRECISIONS:
        raise ValueError(f"quantization method {name!r}: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def record(method: Method, model: str, exported: Exported, batch_sizes: tuple[int, ...]) -> dict[str, object]:
    """A method directory's meta.json: what the benchmark, the bundle and the loaders read back.

    Only what follows from the inputs: the benchmark depends on the directory, so a timing in here
    would re-run it after every byte-identical re-export.
    """
    return {
        "method": method.name,
        "model": model,
        "runtime": method.runtime,
        "precision": method.precision,
        "shipped": exported.shipped.name,
        "batch_sizes": list(batch_sizes),
        "sqnr_db": exported.sqnr_db,
        "settings": exported.settings,
    }


def import_runtime(module: str, package: str, method: str):
    """`module` of an optional edge runtime, imported on first use; a one-line ValueError naming the pip
    package when it is absent, so the registry lists every method whether or not its runtime is installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(
            f"{method} needs the {package} package, which is not installed ({exc.name or module} missing): "
            "`make runtimes` installs the optional edge runtimes "
            "(the `pip install -e '.[runtimes]'` extra, pinned: requirements-runtimes.txt)"
        ) from exc


def missing_modules(method: Method) -> list[str]:
    """The modules `method` requires that this environment cannot import."""
    return [m for m in method.requires if not _findable(m)]


def _findable(module: str) -> bool:
    try:  # a dotted name whose parent package is absent raises instead of returning None
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def known_methods() -> list[str]:
    """Every registered name: by module, then in the order each module defines them."""
    _load_builtins()
    return sorted(_METHODS, key=_MODULES.__getitem__)


def get_method(name: str) -> Method:
    """The method registered as `name`, or ValueError suggesting the closest name and listing the known ones."""
    _load_builtins()
    if name not in _METHODS:
        known = known_methods()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown quantization method {name!r}{hint}; known methods: {', '.join(known)}")
    return _METHODS[name]


def _load_builtins() -> None:
    # Every module of edgequant/methods registers its methods on import: adding a method is one
    # decorated class in a new or existing module there. Heavy runtimes load on first use.
    import edgequant.quantize.methods as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
