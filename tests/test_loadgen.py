"""The loadgen stage: LoadGen's logs read back, its params, the sizing of its expected figures, and real LoadGen runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from edgequant.measure.loadgen import (
    LATENCY_MARGIN,
    QPS_MARGIN,
    SCENARIOS,
    LoadgenRequest,
    expected_latency_ns,
    expected_qps,
    measure_method,
    settings,
    skipped_methods,
)
from edgequant.measure.mlperf_log import LogError, parse_detail, parse_summary, read_logs
from edgequant.params import LoadgenParams, ParamsError, parse
from edgequant.quantize.precisions import lacking

from .conftest import TINY, write_artifacts

SAMPLES = Path(__file__).parent / "loadgen"  # summaries LoadGen 6.0.17 wrote (the INVALID one from a mis-sized run)
SHORT = LoadgenParams(min_duration_ms=200, min_query_count=64, official=False)
MLPERF_MIN_DURATION_MS = 600_000  # MLPerf's rules: every scenario runs at least ten minutes
MLPERF_RESNET50_OFFLINE_SAMPLES = 24_576


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_a_valid_single_stream_summary_gives_the_p90_and_its_early_stopping_estimate():
    parsed = parse_summary(sample("single_stream_valid_summary.txt"))
    assert parsed["scenario"] == "SingleStream" and parsed["result"] == "VALID" and parsed["invalid_reasons"] == []
    assert parsed["latency_ms_p90"] == pytest.approx(0.500445)  # "90.0th percentile latency (ns) : 500445"
    assert parsed["latency_ms_p90_early_stopping"] == pytest.approx(0.513549)  # "Early stopping 90.0th percentile estimate"
    assert parsed["latency_ms_p50"] == pytest.approx(0.424273) and parsed["latency_ms_mean"] == pytest.approx(0.444923)
    assert (parsed["min_duration_ms"], parsed["min_query_count"], parsed["samples_per_query"]) == (200, 64, 1)


def test_an_offline_summary_gives_samples_per_second_and_the_settings_loadgen_applied():
    parsed = parse_summary(sample("offline_valid_summary.txt"))
    assert parsed["scenario"] == "Offline" and parsed["result"] == "VALID"
    assert parsed["samples_per_s"] == pytest.approx(2611.65)
    # Offline issues one query of every sample: the count asked for is its minimum number of samples
    assert (parsed["min_duration_ms"], parsed["min_query_count"], parsed["samples_per_query"]) == (200, 1, 961)


def test_an_invalid_run_records_every_reason_loadgen_gave(tmp_path):
    (tmp_path / "mlperf_log_summary.txt").write_text(sample("single_stream_invalid_summary.txt"))
    (tmp_path / "mlperf_log_detail.txt").write_text(sample("single_stream_invalid_detail.txt"))
    parsed = read_logs(tmp_path)
    assert parsed["result"] == "INVALID" and parsed["query_count"] == 81
    reasons = parsed["invalid_reasons"]
    assert reasons[:2] == ["Min duration not satisfied", "Decrease the expected latency so the loadgen pre-generates more queries."]
    assert reasons[2].startswith("Ending early: Ran out of generated queries") and len(reasons) == 3


def test_a_cut_summary_is_refused_naming_the_file():
    text = sample("single_stream_valid_summary.txt").split("Result is")[0]
    with pytest.raises(LogError, match=r"^run/mlperf_log_summary.txt: no 'Result is :' line"):
        parse_summary(text, "run/mlperf_log_summary.txt")


def test_a_detail_line_cut_mid_write_is_skipped():
    text = sample("single_stream_invalid_detail.txt") + ':::MLLOG {"key": "result_query_co'
    assert parse_detail(text)["query_count"] == 81


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"min_duration_ms": 0}, r"^params.yaml: loadgen.min_duration_ms must be in \[1, 3600000\], got 0$"),
        ({"min_query_count": -1}, r"^params.yaml: loadgen.min_query_count must be in \[1, 10000000\], got -1$"),
        ({"official": "yes"}, r"^params.yaml: loadgen.official: expected true or false, got str 'yes'$"),
        ({"min_duration": 5}, r"^params.yaml: unknown key 'loadgen.min_duration'\. Did you mean 'loadgen.min_duration_ms'\?"),
    ],
)
def test_a_bad_loadgen_param_is_refused_in_one_line_naming_it(values, message):
    with pytest.raises(ParamsError, match=message) as caught:
        parse(LoadgenParams, {**TINY["loadgen"], **values}, "loadgen")
    assert "\n" not in str(caught.value)


def test_expected_latency_leaves_single_stream_more_queries_than_it_needs():
    calls_s = [0.0005, 0.0004, 0.0006]
    # LoadGen pre-generates 2 x min_duration / expected queries; the run needs min_duration / actual of them
    generated = 2 * 1.0 / (expected_latency_ns(calls_s) / 1e9)
    needed = 1.0 / min(calls_s)
    assert expected_latency_ns(calls_s) == int(LATENCY_MARGIN * 0.0004 * 1e9) and generated >= 4 * needed * 0.99


def test_expected_qps_makes_offline_outlast_its_minimum_duration():
    calls_s, batch = [0.1, 0.08, 0.09], 256
    qps = expected_qps(calls_s, batch)
    assert qps == pytest.approx(QPS_MARGIN * batch / 0.08)
    # Offline issues 1.1 x min_duration x expected samples; at the fastest calibrated rate they take this long
    assert 1.1 * 1.0 * qps / (batch / 0.08) > 1.0


def test_official_settings_are_mlperfs_own_from_loadgen():
    official = LoadgenParams(min_duration_ms=100, min_query_count=64, official=True)
    single, offline = (settings(official, s) for s in SCENARIOS)
    assert single["min_duration_ms"] == offline["min_duration_ms"] == MLPERF_MIN_DURATION_MS
    assert offline["min_query_count"] == MLPERF_RESNET50_OFFLINE_SAMPLES
    assert settings(SHORT, "Offline") == {"min_duration_ms": 200, "min_query_count": 64}


def test_a_refused_method_one_without_its_runtime_and_one_without_its_precision_are_skipped_with_one_line_each(tmp_path, monkeypatch):
    import edgequant.measure.loadgen as loadgen

    (tmp_path / "onnx_fp32").mkdir()
    (tmp_path / "onnx_fp32/meta.json").write_text(json.dumps({"method": "onnx_fp32", "refused": "onnx_fp32: no kernel for aten::foo"}))
    monkeypatch.setattr(loadgen, "missing_modules", lambda method: ["openvino"] if method.runtime == "openvino" else [])
    skipped = skipped_methods(tmp_path, ["fp32", "onnx_fp32", "onnx_qdq_int8", "openvino_int8", "bf16"], {"flags": {"avx2": True}})
    assert skipped == {
        "onnx_fp32": "onnx_fp32: no kernel for aten::foo",
        "openvino_int8": "openvino_int8: its runtime is not installed (openvino missing): `make runtimes` installs it",
        "bf16": f"bf16: {lacking('bf16', {})}",
    }
    assert "bf16" not in skipped_methods(tmp_path, ["fp32", "bf16"], {"flags": {"avx2": True, "avx512_bf16": True}})


@pytest.mark.slow
def test_both_scenarios_run_valid_with_their_logs_in_the_outdir_only(tiny_model, tmp_path, monkeypatch):
    root = write_artifacts(tiny_model, tmp_path / "art", ["fp32"])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # A relative outdir, as dvc.yaml gives it: LoadGen runs in an empty temporary directory, the logs still land here.
    request = LoadgenRequest("fp32", 1, str(root / "quantized/fp32"), str(root / "test.pt"), 1, 16, SHORT, "logs")
    result = measure_method(request)
    single, offline = result["SingleStream"], result["Offline"]
    assert single["result"] == "VALID" and offline["result"] == "VALID", result
    assert 0 < single["latency_ms_p50"] <= single["latency_ms_p90"] and single["query_count"] >= SHORT.min_query_count
    assert single["latency_ms_p90_early_stopping"] >= single["latency_ms_p90"] and offline["samples_per_s"] > 0
    for scenario in SCENARIOS:
        written = {p.name for p in (cwd / "logs" / scenario).iterdir()}
        assert {"mlperf_log_summary.txt", "mlperf_log_detail.txt"} <= written
        assert (cwd / "logs" / scenario / "mlperf_log_trace.json").stat().st_size == 0  # trace turned off
    assert os.listdir(cwd) == ["logs"]  # nothing else, audit.config lookups included


@pytest.mark.slow
def test_the_stage_skips_a_refused_method_and_measures_the_rest(tiny_model, tmp_path, subprocess_env):
    import subprocess
    import sys

    from .conftest import ROOT

    root = write_artifacts(tiny_model, tmp_path / "art", ["fp32"])
    for refused in ("onnx_fp32", "onnx_qdq_int8"):
        (root / "quantized" / refused).mkdir()
        reason = f"{refused}: ONNX Runtime has no kernel for aten::foo"
        (root / "quantized" / refused / "meta.json").write_text(json.dumps({"method": refused, "refused": reason}))
    methods = {"methods": ["fp32", "onnx_fp32", "onnx_qdq_int8"], "qat_epochs": 1}
    params = {**TINY, "download": {"dataset": "mnist", "md5": {}}, "quantize": methods}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stages.loadgen", "--artifacts", str(root / "quantized"), "--test", str(root / "test.pt")]
    (tmp_path / "machine.json").write_text(json.dumps({"flags": {}}))
    command += ["--machine", str(tmp_path / "machine.json"), "--metrics", str(out / "loadgen.json"), "--logs", str(out / "logs")]
    command += ["--params", str(tmp_path / "params.yaml")]
    done = subprocess.run(command, cwd=ROOT, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "loadgen.json").read_text())
    assert set(metrics["methods"]) == {"fp32"} and set(metrics["skipped"]) == {"onnx_fp32", "onnx_qdq_int8"}
    assert metrics["skipped"]["onnx_fp32"] == "onnx_fp32: ONNX Runtime has no kernel for aten::foo"
    assert metrics["methods"]["fp32"]["SingleStream"]["result"] == "VALID" and sorted(os.listdir(out / "logs")) == ["fp32"]


def test_the_loadgen_table_shows_a_run_where_every_method_was_skipped_or_a_count_is_missing():
    from edgequant.report.loadgentable import loadgen_table

    minimums = {s: {"min_duration_ms": 1000, "min_query_count": 64} for s in SCENARIOS}
    record = {
        "loadgen_version": "6.0.17",
        "official": False,
        "threads": 1,
        "minimums": minimums,
        "methods": {},
        "skipped": {"x": "x: refused"},
    }
    text = loadgen_table(record, {"methods": {}})
    assert "| `x` | x: refused |" in text and "SingleStream at batch –" in text
    single = {"result": "VALID", "latency_ms_p50": 0.2, "latency_ms_p90": 0.3, "query_count": None, "batch": 1}
    offline = {"result": "VALID", "samples_per_s": 5000.0, "batch": 256}
    record["methods"] = {"fp32": {"SingleStream": single, "Offline": offline}}
    assert "| `fp32` | VALID | 0.200 | 0.300 | – | – | – | VALID | 5,000 | – | – |" in loadgen_table(record, {"methods": {}})
