"""dvc.yaml against the code: every module a stage imports, transitively, is among that stage's deps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

PACKAGES = ("edgequant", "stages")
# Imported by name rather than by an import statement, so the import graph cannot see them.
DYNAMIC = {
    "edgequant/registry.py": sorted(f"edgequant.methods.{p.stem}" for p in (ROOT / "edgequant/methods").glob("*.py")),
    "edgequant/workers.py": ["edgequant.quiet"],  # the benchmark's fork server preloads it
    "edgequant/bundle.py": ["edgequant.bench_runner", "edgequant.machine"],  # copied into the bundle
}


def module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Modules of this project named by any import in the file, function-level imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] in PACKAGES}


def import_closure(module: str) -> set[str]:
    """Files (relative to the repo) of `module` and everything of this project it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += imported_modules(path)
        todo += DYNAMIC.get(path.relative_to(ROOT).as_posix(), [])
    return {p.relative_to(ROOT).as_posix() for p in seen}


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    return sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))


def stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", list(stages()))
def test_each_stage_depends_on_every_module_it_imports(name):
    stage = stages()[name]
    stage = stage.get("do", stage)  # foreach stages
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    files = import_closure(module) - {"edgequant/__init__.py", "stages/__init__.py"}
    assert f"{module.replace('.', '/')}.py" in files
    assert uncovered(files, stage["deps"]) == [], f"stage {name} imports these without depending on them"


def test_package_inits_hold_no_code_a_dep_could_miss():
    for init in ("edgequant/__init__.py", "stages/__init__.py"):
        for node in ast.parse((ROOT / init).read_text()).body:  # a docstring and constants (__version__) only
            assert isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant), init


def test_the_check_sees_a_missing_dep():
    files = import_closure("stages.plot")
    assert {"edgequant/plot.py", "edgequant/reference.py"} <= files
    assert uncovered(files, ["stages/plot.py", "edgequant/plot.py"])[:2] == ["edgequant/__init__.py", "edgequant/datasets.py"]
    assert "edgequant/methods/onnx.py" in import_closure("stages.quantize")  # through the registry's discovery


def test_every_stage_runs_after_params_are_validated():
    for name, stage in stages().items():
        if name != "validate":
            assert "data/params.valid" in stage.get("do", stage)["deps"], name
