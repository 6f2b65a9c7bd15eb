"""dvc.yaml against the code: every module a stage imports, transitively, is among that stage's deps, and every
output persists (DVC never deletes it before the stage has checked its params)."""

from __future__ import annotations

import ast

import pytest
import yaml

from edgequant.deps import PROBE, REFERENCE, code_deps, import_closure, package_inits, stale

from .conftest import ROOT


def stages() -> dict[str, dict]:
    """The reference's stages: dvc.yaml's and the machine probe's, which has a file of its own."""
    return {name: stage for spec in (REFERENCE, PROBE) for name, stage in yaml.safe_load((ROOT / spec).read_text())["stages"].items()}


def uncovered(files: set[str], deps: list[str]) -> list[str]:
    return sorted(f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))


@pytest.mark.slow
def test_dvc_yaml_and_every_workloads_are_what_the_deps_command_writes():
    assert not stale(ROOT), "stale: run `python -m edgequant.deps`"


@pytest.mark.parametrize("name", list(stages()))
def test_each_stage_depends_on_every_module_it_imports(name):
    stage = stages()[name]
    stage = stage.get("do", stage)  # foreach stages
    module = stage["cmd"].split("python -m ", 1)[1].split()[0]
    files = import_closure(module, ROOT) - package_inits(ROOT)
    assert f"{module.replace('.', '/')}.py" in files
    assert uncovered(files, stage["deps"]) == [], f"stage {name} imports these without depending on them"


@pytest.mark.parametrize("name", list(stages()))
def test_every_output_persists_so_dvc_deletes_nothing_before_the_stage_runs(name):
    stage = stages()[name]
    stage = stage.get("do", stage)
    entries = [e for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
    assert entries
    for entry in entries:
        assert isinstance(entry, dict) and next(iter(entry.values())).get("persist") is True, f"{name}: {entry}"


def test_package_inits_hold_no_code_a_dep_could_miss():
    for init in sorted(package_inits(ROOT)):
        for node in ast.parse((ROOT / init).read_text()).body:  # a docstring and constants (__version__) only
            assert isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant), init


def test_the_closure_follows_function_level_and_by_name_imports():
    files = import_closure("stages.plot", ROOT)
    assert {"edgequant/report/charts.py", "edgequant/report/reference.py"} <= files
    assert uncovered(files, ["stages/plot.py", "edgequant/report/charts.py"])[:2] == ["edgequant/__init__.py", "edgequant/data/datasets.py"]
    assert "edgequant/quantize/methods/onnx.py" in code_deps("python -m stages.quantize --method x", ROOT)  # the registry's discovery
    assert "edgequant/measure/quiet.py" in code_deps("python -m stages.benchmark", ROOT)  # preloaded by name by the fork server


def test_every_stage_runs_after_params_are_validated():
    for name, stage in stages().items():
        if name != "validate":
            assert "data/params.valid" in stage.get("do", stage)["deps"], name
