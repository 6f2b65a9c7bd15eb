"""The whole of params.yaml at once: every section, the names the registry knows, and the rules between sections.

`dvc repro` runs this first (stage `validate`, which every other stage depends on), because DVC deletes
a stage's outputs before the stage runs: a value refused inside the stage would come too late.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgequant.data.datasets import dataset_for
from edgequant.device import npu
from edgequant.model.zoo import get_model
from edgequant.params import (
    SECTIONS,
    BenchmarkParams,
    DownloadParams,
    GateParams,
    ParamsError,
    PrepareParams,
    QuantizeParams,
    TrainParams,
    naming,
    parse,
    read_sections,
)
from edgequant.quantize.catalog import get_method


@dataclasses.dataclass(frozen=True)
class Params:
    download: DownloadParams
    prepare: PrepareParams
    train: TrainParams
    quantize: QuantizeParams
    benchmark: BenchmarkParams
    gate: GateParams

    def __post_init__(self) -> None:
        known(get_model, self.train.model, "train.model")
        for key in ("quantize", "gate"):
            for name in getattr(self, key).methods:
                known(get_method, name, f"{key}.methods")
        for name in self.quantize.methods:
            models = get_method(name).models
            if models is not None and self.train.model not in models:
                raise ParamsError(
                    f"params.yaml: {name} quantizes only {', '.join(models)}, not train.model {self.train.model}:"
                    " drop it from quantize.methods"
                )
        for name in self.quantize.methods:
            baseline = get_method(name).baseline
            if baseline not in self.quantize.methods:
                raise ParamsError(
                    f"params.yaml: quantize.methods lists {name} but not its FP32 baseline {baseline}: add {baseline}, or drop {name}"
                )
        for name in self.gate.methods:
            if name not in self.quantize.methods:
                raise ParamsError(
                    f"params.yaml: gate.methods lists {name}, which quantize.methods does not: add it there, or stop gating it"
                )
            if get_method(name).precision != "int8":
                raise ParamsError(
                    f"params.yaml: gate.methods lists {name}, an FP32 method: the gate holds INT8 candidates to their FP32 baseline"
                )
        dataset = dataset_for(self.download.dataset, self.download.md5)
        drawn = self.prepare.calib_size + self.prepare.val_size
        if dataset.train_images is not None and drawn > dataset.train_images:
            raise ParamsError(
                f"params.yaml: prepare.calib_size + prepare.val_size = {drawn} exceeds the {dataset.train_images} training images"
                f" of {dataset.name}"
            )
        if dataset.test_images is not None:
            self.benchmark.check_batches(dataset.test_images, dataset.name)


def known(lookup, name: str, key: str) -> None:
    """A name the registry knows; otherwise its refusal (which lists the known names) as a ParamsError naming the key,
    so that a workload's refusal names that workload's params file."""
    try:
        lookup(name)
    except ValueError as exc:
        raise ParamsError(f"params.yaml: {key}: {exc}") from exc


def load_all(path: str | Path = "params.yaml") -> Params:
    """Load and validate every section of params.yaml, and the rules between them."""
    with naming(path):
        data = read_sections(path)
        missing = [s for s in SECTIONS if s not in data]
        if missing:
            raise ParamsError(f"{path}: missing section(s) {', '.join(repr(s) for s in missing)}")
        return Params(**{section: parse(cls, data[section], section) for section, cls in SECTIONS.items()})


def check_pipeline(p: Params) -> None:
    """Rules dvc.yaml adds to a valid file: a stage that reads one method's artifacts needs that method."""
    if npu.METHOD not in p.quantize.methods:
        raise ParamsError(f"params.yaml: quantize.methods must list {npu.METHOD}: the npu stage estimates Ethos-U figures from its .tflite")


def main(argv: list[str] | None = None) -> int:
    """`python -m edgequant.validate params.yaml workloads/*/params.yaml`: what `make repro` runs before DVC,
    which reads the files itself first (a scalar `quantize.methods` reads there as an error in dvc.yaml)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Check params files as the validate stage does, before DVC reads them.")
    parser.add_argument("files", nargs="+")
    for path in parser.parse_args(argv).files:
        try:
            with naming(path):
                check_pipeline(load_all(path))
        except ValueError as exc:
            print(f"validate: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
