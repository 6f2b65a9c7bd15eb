"""Every `python -m edgequant...` the project tells make, DVC, CI or a reader to run names a module that exists."""

import re
from pathlib import Path

import pytest

from edgequant.deps import PROBE, REFERENCE

from .conftest import ROOT

COMMAND = re.compile(r"python -m (edgequant(?:\.[a-z_][a-z0-9_]*)*)")
SOURCES = ["Makefile", REFERENCE, PROBE, ".ci/run", "README.md"]
SOURCES += sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("docs/*.md"))
SOURCES += sorted(p.relative_to(ROOT).as_posix() for p in ROOT.glob("workloads/*/dvc.yaml"))


def runnable(module: str) -> bool:
    path = ROOT / Path(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()


def commands(text: str) -> set[str]:
    return set(COMMAND.findall(text))


def test_a_command_naming_a_missing_module_is_found():
    assert commands("x: python -m edgequant.fleet.table.table save; python -m edgequant.gate") == {
        "edgequant.fleet.table.table",
        "edgequant.gate",
    }
    assert not runnable("edgequant.fleet.table.table") and runnable("edgequant.fleet.table")


@pytest.mark.parametrize("source", [s for s in SOURCES if (ROOT / s).is_file()])
def test_every_python_m_command_names_a_runnable_module(source):
    missing = sorted(m for m in commands((ROOT / source).read_text()) if not runnable(m))
    assert not missing, f"{source} runs modules that do not exist: {missing}"
