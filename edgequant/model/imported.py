"""A model of the user's own: `train.model: path/to/file.py:Class`, a module of the repository outside the package.

The module is imported from its file (no install, no edit of edgequant), its class built with `train.model_args`,
and the network put behind the input normalization every exported artifact carries (`Normalized`), so a device
feeds plain [0, 1] pixels whatever the model. Every failure is one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import traceback
from pathlib import Path, PurePosixPath

import torch
from torch import nn

from edgequant.model.zoo import Classifier
from edgequant.params import check_repo_path

PACKAGE_DIRS = ("edgequant", "stages")  # the package's own code: its models are registered by name, its deps are its imports
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def split_import_path(model: str) -> tuple[str, str]:
    """(file, name) of `file.py:Name`, refused in one line when it cannot name a class of a file of the repository."""
    file, _, name = model.rpartition(":")
    if not file.endswith(".py") or not IDENTIFIER.fullmatch(name):
        raise ValueError(f"train.model {model!r}: an imported model is written path/to/file.py:ClassName")
    check_repo_path(file, "train.model")
    if PurePosixPath(file).parts[0] in PACKAGE_DIRS:
        raise ValueError(
            f"train.model {model!r}: a model of your own lives outside {' and '.join(PACKAGE_DIRS)}/ (e.g. examples/models/);"
            " a built-in model is named by its registry name"
        )
    return file, name


def module_name(file: str, root: Path = Path(".")) -> str:
    """The name the file is imported under: its dotted path where every part is an identifier (so the module's
    absolute and relative imports of its neighbours work) and no other module has it (copy.py must not replace the
    standard library's copy), else a name of its own."""
    parts = PurePosixPath(file).with_suffix("").parts
    path = root / file
    if all(IDENTIFIER.fullmatch(p) for p in parts) and not taken(".".join(parts), path, root):
        return ".".join(parts)
    own = "edgequant_model_" + re.sub(r"\W", "_", file.removesuffix(".py"))
    return own if not taken(own, path, root) else f"{own}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"


def taken(name: str, path: Path, root: Path) -> bool:
    """Whether `name` is another module's: loaded from another file, or its top-level name the standard library's or
    found outside the repository `root` (an installed package)."""
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() != path.resolve():
        return True
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return True
    if spec is None:
        return False
    if spec.origin in (None, "namespace"):  # a namespace package: taken unless the repository's folder is one of its places
        return not any(Path(p).resolve().is_relative_to(root.resolve()) for p in spec.submodule_search_locations or [])
    return not Path(spec.origin).resolve().is_relative_to(root.resolve())


def _where(exc: BaseException, path: Path) -> str:
    """' (line N)' of the deepest frame of the user's file in `exc`'s traceback (SyntaxError: its own line)."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" (line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path.resolve()]
    return f" (line {frames[-1].lineno})" if frames else ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def import_module(file: str, model: str, root: Path = Path(".")):
    """The module of `file` (relative to `root`, the repository), imported once per process."""
    path = root / file
    if not path.is_file():
        raise ValueError(f"train.model {model}: no such file {file} (paths are relative to the repository root)")
    name = module_name(file, root)
    loaded = sys.modules.get(name)
    if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path.resolve():
        return loaded
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before it runs, as an import would: dataclasses and relative imports look it up
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module may raise anything; one line names it and where
        del sys.modules[name]
        raise ValueError(f"train.model {model}: importing {file} raised {_first_line(exc)}{_where(exc, path)}; fix the module") from exc
    return module


def import_model_class(model: str, root: Path = Path(".")):
    """The class (or factory) `model` names: `file.py:Name`."""
    file, name = split_import_path(model)
    module = import_module(file, model, root)
    found = getattr(module, name, None)
    if found is None:
        classes = sorted(
            n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == module.__name__
        )
        raise ValueError(f"train.model {model}: {file} defines no {name} (its nn.Module classes: {', '.join(classes) or 'none'})")
    if not callable(found):
        raise ValueError(f"train.model {model}: {name} in {file} is a {type(found).__name__}, not a class")
    return found


def construct(model: str, kwargs: dict, root: Path = Path(".")) -> nn.Module:
    """An untrained instance of the user's network, built with `kwargs` (train.model_args)."""
    cls = import_model_class(model, root)
    try:
        net = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's constructor may raise anything; one line names it
        raise ValueError(f"train.model {model}: building it with train.model_args {kwargs} raised {_first_line(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"train.model {model}: it built a {type(net).__name__}, not a torch.nn.Module")
    return net


class Normalized(Classifier):
    """The user's network behind the input normalization, mean and std per channel as buffers (state dict: `net.*`,
    `mean`, `std`), so every exported artifact takes [0, 1] pixels of the data's shape and the device app cannot
    forget or mistype the normalization. `normalize_input` is switched off only where an exporter has folded the
    normalization into the first layer (edgequant.quantize.methods.litert)."""

    def __init__(
        self, net: nn.Module, input_shape: tuple[int, int, int], name: str, mean: list[float] | None = None, std: list[float] | None = None
    ):
        super().__init__(0.0, 1.0)
        channels = input_shape[0]
        self.register_buffer("mean", torch.tensor(mean or [0.0] * channels, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std or [1.0] * channels, dtype=torch.float32).view(-1, 1, 1))
        self.net = net
        self.INPUT_SHAPE = tuple(input_shape)
        self.NAME = name
        self.normalize_input = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_input:
            x = (x - self.mean) / self.std
        return self.net(x)
