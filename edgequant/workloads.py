"""Workloads beside the reference: a folder with its own params.yaml and a dvc.yaml derived from the reference's.

python -m edgequant.workloads workloads/fashion_mnist-dwsep_cnn   # writes its dvc.yaml from ./dvc.yaml
(`python -m edgequant.deps` writes the reference's code deps, then every workload's dvc.yaml, in one go.)

Each workload's stages are the reference's, with every output moved under the workload's folder and every
value read from the workload's params.yaml, so one `dvc repro -P` runs them all, a param changed in one
workload re-runs only that workload's stages, and `dvc metrics show` / `dvc plots show` list each beside
the reference. The machine is probed once, by the probe stage (probe/dvc.yaml), and shared.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import sys
from pathlib import Path

import yaml

from edgequant.files import write_text
from edgequant.params import read_sections
from edgequant.tracked import user_deps

# What a workload leaves out: what concerns the shipped reference only (the fleet of machines, the device bundle).
# The machine probe is shared: it lives in probe/dvc.yaml, and each workload reads its output (SHARED).
SKIPPED = ("fleet", "bundle")
SHARED = ("metrics/machine.json",)
OUTPUT_ROOTS = ("data", "models", "metrics", "plots")
# A workload is a folder of its own under workloads/: its name reaches every stage's command line and every
# output path, so it is a plain word (no shell or path syntax), and no pipeline output can contain it (the
# bundle stage replaced `bundle/w` whole).
FOLDER = re.compile(r"workloads/[a-z0-9][a-z0-9_-]{0,63}")
HEADER = (
    "# Written by `python -m edgequant.workloads {folder}` from the reference's dvc.yaml: edit that one and\n"
    "# re-run the command (tests/test_workloads.py fails while this file is stale). Values: {folder}/params.yaml.\n"
)


def move(path: str, folder: str) -> str:
    """A path of the reference's pipeline as the workload's: outputs move under `folder`, code and the machine stay."""
    outputs = path.split("/", 1)[0] in OUTPUT_ROOTS  # `plots` (plot's --out) as well as `plots/ops.csv`
    return f"{folder}/{path}" if outputs and path not in SHARED else path


def _entries(entries: list, folder: str) -> list:
    """deps/outs/metrics/plots: each a path, or {path: options}."""
    return [move(e, folder) if isinstance(e, str) else {move(k, folder): v for k, v in e.items()} for e in entries]


def _params(entries: list, params_file: str) -> list:
    """`- train` and `- params.yaml:` (all of it) become the same keys of the workload's params file."""
    keys, whole = [], False
    for e in entries:
        if isinstance(e, str):
            keys.append(e)
        elif set(e) == {"params.yaml"} and e["params.yaml"] is None:
            whole = True
        else:
            raise ValueError(f"dvc.yaml: a params entry edgequant.workloads cannot move: {e!r}")
    return [{params_file: None if whole else keys}]


def derive_stage(name: str, stage: dict, folder: str, wdir: str) -> dict:
    if "wdir" in stage or not isinstance(stage.get("cmd"), str):
        raise ValueError(f"dvc.yaml: stage {name} needs one cmd string and no wdir of its own for edgequant.workloads to move it")
    body = copy.deepcopy(stage)
    tokens = [move(token, folder) for token in body["cmd"].split()]
    params_file = f"{folder}/params.yaml"
    body["cmd"] = " ".join(shlex.quote(token) for token in [*tokens, "--params", params_file])
    for key in ("deps", "outs", "metrics", "plots"):
        if key in body:
            body[key] = _entries(body[key], folder)
    if "params" in body:
        body["params"] = _params(body["params"], params_file)
    return {"wdir": wdir, **body}  # run from the repo root, where `python -m stages.<name>` imports


def derive(reference: dict, folder: str, user: dict[str, list[str]] | None = None) -> dict:
    """The workload's dvc.yaml (as a mapping) from the reference's: `folder` is relative to the repo root; `user` adds
    the user's files its params name to the stages that read them (`user_deps`)."""
    wdir = os.path.relpath(".", folder)
    stages = {}
    for name, stage in reference["stages"].items():
        if name in SKIPPED:
            continue
        if "foreach" in stage:
            stages[name] = {"foreach": stage["foreach"], "do": derive_stage(name, stage["do"], folder, wdir)}
        else:
            stages[name] = derive_stage(name, stage, folder, wdir)
        body = stages[name].get("do", stages[name])
        body["deps"] = [*body.get("deps", []), *(user or {}).get(name, [])]
    # The top-level plots stay as they are: DVC reads their paths from the dvc.yaml's own folder, not from wdir.
    return {"stages": stages, "plots": copy.deepcopy(reference.get("plots", []))}


def render(reference: str, folder: str, root: Path = Path(".")) -> str:
    """The workload's dvc.yaml, as text, from the reference's dvc.yaml text and the workload's params.yaml under `root`."""
    params = root / folder / "params.yaml"
    user = user_deps(read_sections(params), root) if params.is_file() else {}
    body = yaml.safe_dump(derive(yaml.safe_load(reference), folder, user), sort_keys=False, width=200)
    return HEADER.format(folder=folder) + body


def check_folder(folder: str) -> str:
    """`folder` as workloads/<name>, refused in one line when it is anything else."""
    folder = Path(folder).as_posix().rstrip("/")
    if not FOLDER.fullmatch(folder):
        raise ValueError(
            f"{folder!r}: a workload is a folder workloads/<name>, the name of lower-case letters, digits, '_' and '-'"
            " (it becomes part of every stage's command and output path), e.g. workloads/fashion_mnist-dwsep_cnn"
        )
    return folder


def workload_folders(root: Path = Path(".")) -> list[str]:
    """Every workload of the repository at `root`: a folder under workloads/ with a params.yaml."""
    found = sorted(p.parent.relative_to(root).as_posix() for p in root.glob("workloads/*/params.yaml"))
    return [check_folder(folder) for folder in found]


def write(folder: str, reference_path: Path = Path("dvc.yaml")) -> Path:
    """Write `folder`/dvc.yaml; `folder`/params.yaml must exist (a copy of ./params.yaml to edit)."""
    folder = check_folder(folder)
    if not (Path(folder) / "params.yaml").is_file():
        raise ValueError(f"{folder}/params.yaml does not exist: copy params.yaml there and edit it first")
    out = Path(folder) / "dvc.yaml"
    write_text(out, render(reference_path.read_text(), folder))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="workload folders, e.g. workloads/<dataset>-<model>")
    args = parser.parse_args(argv)
    try:
        written = [write(folder) for folder in args.folders]
    except (ValueError, OSError) as exc:
        print(f"workloads: {exc}", file=sys.stderr)
        return 1
    print("\n".join(f"wrote {path}" for path in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
