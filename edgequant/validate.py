"""The whole of params.yaml at once: every section, the names the registry knows, and the rules between sections.

`dvc repro` runs this first (stage `validate`, which every other stage depends on), because DVC deletes
a stage's outputs before the stage runs: a value refused inside the stage would come too late.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgequant.data.datasets import LOCAL_KINDS, dataset_for
from edgequant.device import npu
from edgequant.measure.tools import TOOLS
from edgequant.model.zoo import get_model
from edgequant.params import (
    SECTIONS,
    BenchmarkParams,
    DownloadParams,
    GateParams,
    LoadgenParams,
    ParamsError,
    PrepareParams,
    QuantizeParams,
    TrainParams,
    VendorParams,
    is_import_path,
    naming,
    parse,
    read_sections,
)
from edgequant.quantize.catalog import get_method
from edgequant.quantize.precisions import get_precision


@dataclasses.dataclass(frozen=True)
class Params:
    download: DownloadParams
    prepare: PrepareParams
    train: TrainParams
    quantize: QuantizeParams
    benchmark: BenchmarkParams
    gate: GateParams
    vendor: VendorParams
    loadgen: LoadgenParams

    def __post_init__(self) -> None:
        check_model(self.train)  # the user's data and checkpoint may be another stage's outputs: their readers check them
        for key in ("quantize", "gate", "vendor"):
            for name in getattr(self, key).methods:
                known(get_method, name, f"{key}.methods")
        for name in self.vendor.methods:  # refused here, before training, rather than when the vendor stage runs
            runtime = get_method(name).runtime
            if runtime not in TOOLS:
                raise ParamsError(
                    f"params.yaml: vendor.methods lists {name}, a {runtime} method; tools exist for {', '.join(TOOLS)} methods"
                )
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
            precision = get_precision(get_method(name).precision)
            if precision.name != "int8":  # its limits (size ratio, speed-up) are an INT8 release's
                # Labels are said letter by letter: an FP32, a BF16.
                kind = f"{'an' if precision.label[0] in 'AEFHILMNORSX' else 'a'} {precision.label} method"
                raise ParamsError(f"params.yaml: gate.methods lists {name}, {kind}: the gate holds INT8 candidates to their FP32 baseline")
        if self.download.dataset in LOCAL_KINDS:  # its size is known once imported: the prepare and benchmark stages check it
            return
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


def check_model(train: TrainParams) -> None:
    """train.model names a registered model, or an imported one whose module imports and whose class builds with
    train.model_args (its forward on the data is checked by the train stage, which has the data)."""
    if not is_import_path(train.model):
        known(get_model, train.model, "train.model")
        return
    from edgequant.model.imported import construct

    try:
        construct(train.model, train.model_args)
    except ValueError as exc:
        raise ParamsError(f"params.yaml: {exc}") from exc


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


def check_tracked(path: str | Path, p: Params) -> None:
    """The user's files the params name (model module, checkpoint, data) are dependencies of the stages that read them
    in the dvc.yaml beside the params file, so DVC re-runs those stages when the files change. A workload's dvc.yaml gets
    them from `python -m edgequant.deps`; the reference's lists them by hand."""
    import yaml

    from edgequant.tracked import user_deps

    dvc_yaml = Path(path).parent / "dvc.yaml"
    wanted = user_deps({"train": dataclasses.asdict(p.train), "download": dataclasses.asdict(p.download)})
    if not wanted or not dvc_yaml.is_file():
        return
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    for name, files in wanted.items():
        stage = stages.get(name)
        deps = (stage.get("do", stage) if isinstance(stage, dict) else {}).get("deps") or []
        missing = [f for f in files if f not in deps]
        if stage is not None and missing:
            fix = (
                "run `python -m edgequant.deps`"
                if Path(path).parent.parent.name == "workloads"
                else f"add it to the stage's deps in {dvc_yaml}"
            )
            raise ParamsError(
                f"params.yaml: {missing[0]} is not a dependency of stage {name} in {dvc_yaml}, so a change to it would not re-run it: {fix}"
            )


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
                everything = load_all(path)
                check_pipeline(everything)
                check_tracked(path, everything)
        except ValueError as exc:
            print(f"validate: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
