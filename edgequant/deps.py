"""Each stage's code deps in dvc.yaml and probe/dvc.yaml, written from the import closure of its entry point, and every
workload's dvc.yaml derived again from the result: one command, so no module a stage imports can be missing from its deps.

python -m edgequant.deps           # rewrite the reference's code deps (dvc.yaml, probe/dvc.yaml) and workloads/*/dvc.yaml
python -m edgequant.deps --check   # exit 1, naming the stale files, when any differs from what it would write
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
from pathlib import Path

PACKAGES = ("edgequant", "stages")
# The reference's pipeline files: the machine probe has one of its own (probe/dvc.yaml says why).
REFERENCE = "dvc.yaml"
PROBE = "probe/dvc.yaml"
PROBE_STAGE = f"{PROBE}:probe"  # its name in DVC's output, `dvc status` and as a target
# Imported by name rather than by an import statement, so the import graph cannot see them.
DYNAMIC = {
    "edgequant/quantize/catalog.py": ["edgequant.quantize.methods.*"],  # every module of edgequant/methods registers its methods on import
    "edgequant/measure/processes.py": ["edgequant.measure.quiet"],  # the benchmark's fork server preloads it
    "edgequant/device/bundle.py": ["edgequant.device.run_bench", "edgequant.measure.machine"],  # copied into the bundle
}


def package_inits(root: Path) -> set[str]:
    """Every package's __init__.py: docstrings and constants only (tests/test_dvc_yaml.py), so no dep can miss code."""
    return {p.relative_to(root).as_posix() for package in PACKAGES for p in (root / package).rglob("__init__.py")}


def module_file(module: str, root: Path) -> Path | None:
    path = root.joinpath(*module.split("."))
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


def dynamic_imports(relative: str, root: Path) -> list[str]:
    """The modules `relative` imports by name; `package.*` stands for every module of that package."""
    found = []
    for name in DYNAMIC.get(relative, []):
        if name.endswith(".*"):
            package = name.removesuffix(".*")
            found += sorted(f"{package}.{p.stem}" for p in root.joinpath(*package.split(".")).glob("*.py"))
        else:
            found.append(name)
    return found


def import_closure(module: str, root: Path) -> set[str]:
    """Files (relative to `root`) of `module` and everything of this project it imports, transitively."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        relative = path.relative_to(root).as_posix()
        todo += [*imported_modules(path), *dynamic_imports(relative, root)]
    return {p.relative_to(root).as_posix() for p in seen}


def entry_module(cmd: str) -> str:
    """`python -m stages.train --x y` -> stages.train."""
    if "python -m " not in cmd:
        raise ValueError(f"dvc.yaml: a stage command edgequant.deps cannot read: {cmd!r} (expected `python -m <module> ...`)")
    return cmd.split("python -m ", 1)[1].split()[0]


def is_code(dep: str) -> bool:
    return dep.split("/", 1)[0] in PACKAGES


def code_deps(cmd: str, root: Path) -> list[str]:
    return sorted(import_closure(entry_module(cmd), root) - package_inits(root))


def render(dvc_yaml: Path, root: Path) -> str:
    """dvc.yaml with each stage's code deps replaced by its import closure; data deps, comments and order kept."""
    from ruamel.yaml import YAML

    yaml = YAML()  # round trip: comments stay
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    doc = yaml.load(dvc_yaml.read_text())
    for stage in doc["stages"].values():
        body = stage.get("do", stage)
        data = [d for d in body["deps"] if not (isinstance(d, str) and is_code(d))]
        body["deps"].clear()
        body["deps"].extend([*data, *code_deps(body["cmd"], root)])
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def stale(root: Path) -> dict[Path, str]:
    """{file: what it should hold} for dvc.yaml, probe/dvc.yaml and each workload's dvc.yaml that differs from what
    would be written."""
    from edgequant.workloads import render as render_workload
    from edgequant.workloads import workload_folders

    reference = root / REFERENCE
    wanted = {reference: render(reference, root), root / PROBE: render(root / PROBE, root)}
    for folder in workload_folders(root):
        wanted[root / folder / "dvc.yaml"] = render_workload(wanted[reference], folder, root)
    return {path: text for path, text in wanted.items() if not path.is_file() or path.read_text() != text}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    from edgequant.files import write_text

    try:
        changes = stale(Path.cwd())
    except (ValueError, OSError) as exc:
        print(f"deps: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(p.relative_to(Path.cwd()).as_posix() for p in changes)
    if args.check:
        if changes:
            print(f"deps: stale: {names}; run `python -m edgequant.deps`", file=sys.stderr)
            return 1
        print(f"deps: {REFERENCE}, {PROBE} and every workload's dvc.yaml are up to date")
        return 0
    for path, text in changes.items():
        write_text(path, text)
    print(f"deps: wrote {names}" if changes else "deps: nothing to write")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
