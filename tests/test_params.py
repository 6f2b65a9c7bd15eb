"""params.yaml validation: unknown keys, wrong types and out-of-range values are rejected with clear messages."""

import dataclasses

import pytest
import yaml

from edgequant import params
from edgequant.params import BenchmarkParams, GateParams, ParamsError, PrepareParams, QuantizeParams, TrainParams, parse

from .conftest import ROOT

REAL = yaml.safe_load((ROOT / "params.yaml").read_text())
SECTIONS = {"prepare": PrepareParams, "train": TrainParams, "quantize": QuantizeParams, "benchmark": BenchmarkParams, "gate": GateParams}


@pytest.mark.parametrize("section", SECTIONS)
def test_real_params_parse(section):
    parsed = params.load(SECTIONS[section], section, ROOT / "params.yaml")
    assert dataclasses.asdict(parsed).keys() == REAL[section].keys()


def test_unknown_key_suggests_the_close_one():
    raw = dict(REAL["train"], epoch=3)
    with pytest.raises(ParamsError, match=r"unknown key 'train.epoch'.*Did you mean 'train.epochs'"):
        parse(TrainParams, raw, "train")


def test_missing_key_is_named():
    raw = {k: v for k, v in REAL["train"].items() if k != "lr"}
    with pytest.raises(ParamsError, match=r"missing key\(s\) train.lr"):
        parse(TrainParams, raw, "train")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("epochs", "3", "expected an integer"),
        ("epochs", True, "expected an integer"),
        ("lr", "fast", "expected a number"),
        ("optimizer", 3, "expected a string"),
        ("epochs", 0, "epochs must be > 0"),
        ("batch_size", -1, "batch_size must be > 0"),
        ("threads", 0, "threads must be > 0"),
        ("dropout_fc", 1.0, r"dropout_fc must be in \[0, 1\)"),
        ("optimizer", "sgd", "optimizer must be one of"),
    ],
)
def test_bad_train_values_rejected(key, value, message):
    with pytest.raises(ParamsError, match=message):
        parse(TrainParams, dict(REAL["train"], **{key: value}), "train")


def test_int_accepted_where_float_expected():
    assert parse(TrainParams, dict(REAL["train"], lr=1), "train").lr == 1.0


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        ([], "quantize.methods is empty"),
        (["fp32", "int4_magic"], "unknown quantization method 'int4_magic'; known methods: fp32, dynamic_int8"),
        (["dynamic_int8"], "must include 'fp32'"),
        (["fp32", "fp32"], "duplicates"),
        ("fp32", "expected a list"),
    ],
)
def test_bad_method_lists_rejected(methods, message):
    with pytest.raises(ValueError, match=message):
        parse(QuantizeParams, {"methods": methods}, "quantize")


@pytest.mark.parametrize(("key", "value"), [("threads", []), ("threads", [0]), ("latency_runs", 0), ("min_run_time_s", 0)])
def test_bad_benchmark_values_rejected(key, value):
    with pytest.raises(ParamsError, match=key):
        parse(BenchmarkParams, dict(REAL["benchmark"], **{key: value}), "benchmark")


def test_calib_size_must_be_positive():
    with pytest.raises(ParamsError, match="calib_size must be > 0"):
        parse(PrepareParams, {"calib_size": 0, "calib_seed": 0}, "prepare")


def test_missing_file_and_section(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        params.load(TrainParams, "train", tmp_path / "nope.yaml")
    (tmp_path / "p.yaml").write_text("prepare: {calib_size: 1, calib_seed: 0}\n")
    with pytest.raises(ParamsError, match="missing section 'train'"):
        params.load(TrainParams, "train", tmp_path / "p.yaml")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("methods", [], "gate.methods is empty"),
        ("methods", ["int3"], "unknown quantization method 'int3'"),
        ("min_speedup", 0, "gate.min_speedup must be > 0"),
        ("max_size_ratio", 1.5, "gate.max_size_ratio must be in"),
    ],
)
def test_bad_gate_values_rejected(key, value, message):
    with pytest.raises(ValueError, match=message):
        parse(GateParams, {**REAL["gate"], key: value}, "gate")
