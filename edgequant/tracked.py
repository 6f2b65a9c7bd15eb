"""The user's files a params file names, and the stages that read them: an imported model's module (and the modules
of the repository it imports), a checkpoint, an image folder or .npz. Each is a dependency of those stages, so a
changed file re-runs what reads it: a workload's dvc.yaml gets them from its params (edgequant/workloads.py), and the
validate stage refuses a params file whose dvc.yaml lacks them (edgequant/validate.py)."""

from __future__ import annotations

import ast
import contextlib
from pathlib import Path, PurePosixPath

from edgequant.data.datasets import LOCAL_KINDS
from edgequant.params import ParamsError, check_repo_path, is_import_path

# The stages whose code can import the user's model module (edgequant/model/imported.py is in their import closure;
# validate imports it to check it; bundle is the reference's only), the one that starts from a checkpoint, and the one
# that imports the data: each depends on the user's files it reads (tests/test_workloads.py checks the first list).
MODEL_STAGES = ("validate", "train", "quantize", "benchmark", "loadgen", "npu", "vendor", "bundle")
CHECKPOINT_STAGES = ("train",)
DATA_STAGES = ("download",)


def user_deps(params: dict, root: Path = Path(".")) -> dict[str, list[str]]:
    """{stage: [path]} of the user's files a params file names: an imported model's module and the modules of the
    repository it imports (train.model), a checkpoint (train.checkpoint), an image folder or .npz (download.path)."""
    train, download = params.get("train") or {}, params.get("download") or {}
    deps: dict[str, list[str]] = {}
    model, checkpoint, data = train.get("model"), train.get("checkpoint"), download.get("path")
    with naming_errors():
        if isinstance(model, str) and is_import_path(model):
            file = model.rpartition(":")[0]
            check_repo_path(file, "train.model")
            for stage in MODEL_STAGES:
                deps.setdefault(stage, []).extend(module_files(file, root))
        if isinstance(checkpoint, str) and checkpoint:
            check_repo_path(checkpoint, "train.checkpoint")
            for stage in CHECKPOINT_STAGES:
                deps.setdefault(stage, []).append(checkpoint)
        if isinstance(data, str) and data and download.get("dataset") in LOCAL_KINDS:
            check_repo_path(data.rstrip("/"), "download.path")
            for stage in DATA_STAGES:
                deps.setdefault(stage, []).append(data.rstrip("/"))
    return deps


@contextlib.contextmanager
def naming_errors():
    """A ParamsError as the ValueError of a file's dependencies, without the params file's name (the caller names it)."""
    try:
        yield
    except ParamsError as exc:
        raise ValueError(str(exc).removeprefix("params.yaml: ")) from exc


def module_files(file: str, root: Path = Path(".")) -> list[str]:
    """`file` and every module of the repository it imports, transitively (absolute imports from the repository root,
    relative ones from the file's folder); installed packages and edgequant's own code are not the model's files."""
    found, todo = [], [file]
    while todo:
        current = todo.pop(0)
        if current in found or not (root / current).is_file() or current.split("/", 1)[0] in ("edgequant", "stages"):
            continue
        found.append(current)
        package = PurePosixPath(current).parent
        try:
            tree = ast.parse((root / current).read_bytes())  # bytes: the file's own coding declaration decides
        except SyntaxError as exc:
            raise ValueError(f"{current}: not valid Python ({exc.msg}, line {exc.lineno})") from exc
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.parent
                prefix = ([*base.parts] if node.level else []) + (node.module.split(".") if node.module else [])
                names = [".".join(prefix)] + [".".join([*prefix, a.name]) for a in node.names]
            else:
                continue
            for name in names:
                parts = [p for p in name.split(".") if p]
                for candidate in (f"{'/'.join(parts)}.py", f"{'/'.join(parts)}/__init__.py"):
                    if parts and (root / candidate).is_file():
                        todo.append(candidate)
    return found
