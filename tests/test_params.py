"""params.yaml validation: unknown keys, wrong types and out-of-range values are rejected with clear messages."""

import dataclasses

import pytest
import yaml

from edgequant import params
from edgequant.params import (
    SECTIONS,
    BenchmarkParams,
    DownloadParams,
    GateParams,
    ParamsError,
    PrepareParams,
    QuantizeParams,
    TrainParams,
    parse,
)
from edgequant.validate import load_all

from .conftest import ROOT

REAL = yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(tmp_path, **sections):
    """params.yaml with the real values, some sections replaced (None drops one)."""
    data = {**REAL, **sections}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    return path


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
        ("threads", 0, r"threads must be in \[1, 1024\]"),
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
        (["dynamic_int8"], "must include 'fp32'"),
        (["fp32", "fp32"], "duplicates"),
        ("fp32", "expected a list"),
        (["fp32", "../../tests"], r"'\.\./\.\./tests' is not a method name"),
        (["fp32", "a/b"], "is not a method name"),
    ],
)
def test_bad_method_lists_rejected(methods, message):
    with pytest.raises(ValueError, match=message):
        parse(QuantizeParams, {"methods": methods, "qat_epochs": 1}, "quantize")


@pytest.mark.parametrize(("key", "value"), [("threads", []), ("threads", [0]), ("latency_runs", 0), ("min_run_time_s", 0)])
def test_bad_benchmark_values_rejected(key, value):
    with pytest.raises(ParamsError, match=key):
        parse(BenchmarkParams, dict(REAL["benchmark"], **{key: value}), "benchmark")


def test_calib_size_must_be_positive():
    with pytest.raises(ParamsError, match="calib_size must be > 0"):
        parse(PrepareParams, {"calib_size": 0, "calib_seed": 0, "val_size": 1}, "prepare")


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
        ("methods", ["../x"], "is not a method name"),
        ("min_speedup", 0, "gate.min_speedup must be > 0"),
        ("max_size_ratio", 1.5, "gate.max_size_ratio must be in"),
    ],
)
def test_bad_gate_values_rejected(key, value, message):
    with pytest.raises(ValueError, match=message):
        parse(GateParams, {**REAL["gate"], key: value}, "gate")


@pytest.mark.parametrize(
    ("quantize", "gate", "message"),
    [
        (["fp32", "int4_magic"], None, "unknown quantization method 'int4_magic'; known methods: fp32, dynamic_int8"),
        (["fp32", "onnx_qdq_int8"], None, "lists onnx_qdq_int8 but not its FP32 baseline onnx_fp32: add onnx_fp32, or drop onnx_qdq_int8"),
        (["fp32", "onnx_fp32", "onnx_qdq_int8"], ["executorch_xnnpack_int8"], "gate.methods lists executorch_xnnpack_int8, which quantize"),
        (["fp32", "onnx_fp32", "onnx_qdq_int8"], ["onnx_fp32"], "an FP32 method"),
        (["fp32", "bf16", "onnx_fp32", "onnx_qdq_int8"], ["bf16"], "a BF16 method: the gate holds INT8 candidates"),
    ],
)
def test_cross_section_rules(tmp_path, quantize, gate, message):
    gate_section = {**REAL["gate"], "methods": gate or ["onnx_qdq_int8"]}
    with pytest.raises(ValueError, match=message):
        load_all(write_params(tmp_path, quantize={**REAL["quantize"], "methods": quantize}, gate=gate_section))


def test_the_pipeline_needs_the_method_the_npu_stage_reads(tmp_path):
    from edgequant.validate import check_pipeline

    p = load_all(
        write_params(
            tmp_path,
            quantize={**REAL["quantize"], "methods": ["fp32", "onnx_fp32", "onnx_qdq_int8"]},
            gate={**REAL["gate"], "methods": ["onnx_qdq_int8"]},
        )
    )
    with pytest.raises(ParamsError, match="quantize.methods must list litert_int8: the npu stage"):
        check_pipeline(p)
    check_pipeline(load_all(ROOT / "params.yaml"))


def test_real_params_pass_the_whole_file_check():
    everything = load_all(ROOT / "params.yaml")
    assert everything.download.dataset == "mnist" and "fp32" in everything.quantize.methods


def test_unknown_method_suggests_the_closest(tmp_path):
    with pytest.raises(ValueError, match=r"unknown quantization method 'onnx_qdq_int9' \(did you mean 'onnx_qdq_int8'\?\)"):
        quantize = {**REAL["quantize"], "methods": ["fp32", "onnx_fp32", "onnx_qdq_int9"]}
        load_all(write_params(tmp_path, quantize=quantize, gate={**REAL["gate"], "methods": ["onnx_fp32"]}))


def test_unknown_and_missing_sections(tmp_path):
    with pytest.raises(ParamsError, match=r"unknown section 'trian'. Did you mean 'train'\?"):
        load_all(write_params(tmp_path, trian=REAL["train"]))
    with pytest.raises(ParamsError, match=r"unknown section 'trian'"):  # a stage reading one section refuses it too
        params.load(PrepareParams, "prepare", write_params(tmp_path, trian=REAL["train"]))
    with pytest.raises(ParamsError, match=r"missing section\(s\) 'gate'"):
        load_all(write_params(tmp_path, gate=None))


@pytest.mark.parametrize(("value", "text"), [(float("inf"), "inf"), (float("-inf"), "-inf"), (float("nan"), "nan")])
def test_non_finite_numbers_rejected(value, text):
    with pytest.raises(ParamsError, match=f"train.lr: expected a finite number, got {text}"):
        parse(TrainParams, dict(REAL["train"], lr=value), "train")


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("benchmark", {"throughput_batch": 10001}, "benchmark.throughput_batch = 10001 exceeds the 10000 test images of mnist"),
        ("benchmark", {"latency_batch": 20000}, "benchmark.latency_batch = 20000 exceeds the 10000 test images"),
        ("benchmark", {"peak_gemm_size": 80000}, r"benchmark.peak_gemm_size must be <= 8192 .*got 80000"),
        ("prepare", {"calib_size": 60001}, r"prepare.calib_size \+ prepare.val_size = 62001 exceeds the 60000 training images of mnist"),
    ],
)
def test_impossible_sizes_rejected_before_any_work(tmp_path, section, values, message):
    with pytest.raises(ParamsError, match=message):
        load_all(write_params(tmp_path, **{section: {**REAL[section], **values}}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"dataset": "kmnist"}, "download.dataset 'kmnist' is not known; known datasets: mnist, fashion_mnist, custom"),
        ({"dataset": "custom"}, "download.md5 must give the 32-hex-digit md5"),
        ({"dataset": "mnist", "md5": {"a": "b"}}, "download.md5 is only for dataset 'custom'"),
    ],
)
def test_bad_download_values_rejected(values, message):
    with pytest.raises(ParamsError, match=message):
        parse(DownloadParams, {**REAL["download"], **values}, "download")


def test_unknown_model_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'dwsep' \(did you mean 'dwsep_cnn'\?\); known models: cnn, dwsep_cnn"):
        load_all(write_params(tmp_path, train={**REAL["train"], "model": "dwsep"}))


def test_a_method_written_for_one_model_is_refused_for_another(tmp_path):
    quantize = {**REAL["quantize"], "methods": ["fp32", "eager_static_x86"]}
    gate = {**REAL["gate"], "methods": ["eager_static_x86"]}
    train = {**REAL["train"], "model": "dwsep_cnn"}
    with pytest.raises(ParamsError, match="eager_static_x86 quantizes only cnn, not train.model dwsep_cnn: drop it from quantize.methods"):
        load_all(write_params(tmp_path, train=train, quantize=quantize, gate=gate))
    load_all(write_params(tmp_path, train=REAL["train"], quantize=quantize, gate=gate))  # the model it was written for


def test_a_refusal_names_the_params_file_it_read(tmp_path):
    workload = {**REAL, "train": {**REAL["train"], "epochs": 0}}
    (tmp_path / "w").mkdir()
    (tmp_path / "w/params.yaml").write_text(yaml.safe_dump(workload))
    with pytest.raises(ParamsError, match=r"^.*w/params\.yaml: train\.epochs must be > 0"):
        load_all(tmp_path / "w/params.yaml")
    with pytest.raises(ParamsError, match=r"^.*w/params\.yaml: train\.epochs must be > 0"):
        params.load(TrainParams, "train", tmp_path / "w/params.yaml")


@pytest.mark.parametrize(("key", "value"), [("model", "dwsep"), ("model", "resnet")])
def test_an_unknown_model_in_a_workloads_params_names_that_file(tmp_path, key, value):
    (tmp_path / "w").mkdir()
    (tmp_path / "w/params.yaml").write_text(yaml.safe_dump({**REAL, "train": {**REAL["train"], key: value}}))
    with pytest.raises(ParamsError, match=rf"^.*w/params\.yaml: train\.model: unknown model '{value}'"):
        load_all(tmp_path / "w/params.yaml")


def test_an_unknown_method_in_a_workloads_params_names_that_file(tmp_path):
    (tmp_path / "w").mkdir()
    quantize = {**REAL["quantize"], "methods": [*REAL["quantize"]["methods"], "onnx_qdq_int9"]}
    (tmp_path / "w/params.yaml").write_text(yaml.safe_dump({**REAL, "quantize": quantize}))
    with pytest.raises(ParamsError, match=r"^.*w/params\.yaml: quantize\.methods: unknown quantization method 'onnx_qdq_int9'"):
        load_all(tmp_path / "w/params.yaml")


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)  # 361 bytes that expand to 9**9 values: DVC's `dvc status` held 3 GB of them before it was stopped


def test_a_yaml_alias_bomb_is_refused_before_any_value_is_built(tmp_path):
    import time

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(REAL) + BOMB)
    start = time.perf_counter()
    with pytest.raises(ParamsError, match=r"params\.yaml: its YAML aliases expand to 490,329,[0-9]+ values .*remove the anchors"):
        load_all(path)
    assert time.perf_counter() - start < 1.0
    path.write_text(yaml.safe_dump(REAL) + "shared: &s {a: 1}\nagain: *s\n")  # a few aliases are fine, an unknown section is not
    with pytest.raises(ParamsError, match="unknown section 'shared'"):
        load_all(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x: " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("x: '" + "a" * (2 << 20) + "'\n", "more than a params file needs"),
    ],
    ids=["deep", "huge"],
)
@pytest.mark.slow
def test_a_params_file_too_deep_or_too_big_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message):
        load_all(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "seed", 2**70, r"train\.seed: expected an integer in \[-2147483648, 2147483647\], got 1180591620717411303424"),
        ("prepare", "calib_seed", 2**70, r"prepare\.calib_seed: expected an integer in"),
        ("train", "seed", -1, r"train\.seed must be >= 0"),
        ("prepare", "calib_seed", -5, r"prepare\.calib_seed must be >= 0"),
        ("train", "threads", 100_000, r"train\.threads must be in \[1, 1024\]"),
        ("benchmark", "threads", [1, 5000], r"benchmark\.threads must all be in \[1, 1024\]"),
        ("benchmark", "latency_runs", 10**9, r"benchmark\.latency_runs must be <= 1000000"),
        ("benchmark", "min_run_time_s", 1e300, r"benchmark\.min_run_time_s must be in \(0, 600.0\]"),
        ("quantize", "qat_epochs", 2**40, r"quantize\.qat_epochs: expected an integer in"),
    ],
)
def test_integers_beyond_what_a_stage_can_use_are_refused_naming_the_key(section, key, value, message):
    cls = SECTIONS[section]
    with pytest.raises(ParamsError, match=message):
        parse(cls, {**REAL[section], key: value}, section)


@pytest.mark.slow
def test_the_command_line_check_refuses_a_scalar_method_list_in_one_line(tmp_path):
    import subprocess
    import sys

    path = write_params(tmp_path, quantize={**REAL["quantize"], "methods": "fp32"})
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant.validate", str(ROOT / "params.yaml"), str(path)], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{path}: quantize.methods: expected a list, got str 'fp32'" in proc.stderr
