"""Saved runs on other params (a dataset and a model by name): what the README's workload tables are made from.

python -m edgequant.workloads workloads/fashion_mnist-dwsep_cnn   # after `dvc repro benchmark` on that workload's params
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

from edgequant.io import atomic_dir, write_json

FILES = ("params.yaml", "metrics/benchmark.json", "metrics/train.json")


def save(workspace: Path, out: Path) -> list[str]:
    """Copy the run's params and metrics from `workspace` into `out` (replaced whole), with each method's
    export settings (meta.json's `settings`: the layers an accuracy-aware method kept in FP32, and what it tried)."""
    missing = [f for f in FILES if not (workspace / f).is_file()]
    if missing:
        raise ValueError(f"{workspace} has no {', '.join(missing)}: run `dvc repro benchmark` there first")
    metrics = json.loads((workspace / "metrics/benchmark.json").read_text())
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    if metrics.get("model") != params["train"]["model"]:
        raise ValueError(
            f"{workspace}: metrics/benchmark.json is of model {metrics.get('model')!r}, params.yaml says"
            f" {params['train']['model']!r}: run `dvc repro benchmark` there first"
        )
    settings = {}
    for method in metrics["methods"]:
        meta = json.loads((workspace / "models/quantized" / method / "meta.json").read_text())
        settings[method] = meta.get("settings")
    with atomic_dir(out) as tmp:
        for f in FILES:
            shutil.copy(workspace / f, tmp / Path(f).name)
        write_json(tmp / "settings.json", settings)
    return sorted(p.name for p in out.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the folder to write, e.g. workloads/<dataset>-<model>")
    parser.add_argument("--workspace", default=".", help="the checkout whose run to save (default: this one)")
    args = parser.parse_args(argv)
    try:
        saved = save(Path(args.workspace), Path(args.out))
    except (ValueError, OSError) as exc:
        print(f"workloads: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out}: {', '.join(saved)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
