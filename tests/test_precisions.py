"""The precision table: every method, roofline engine and chart marker reads it; a CPU without a precision's
instructions gets a one-line reason instead of a measurement."""

import pytest

from edgequant.measure.roofline import ENGINES
from edgequant.quantize.catalog import get_method, register
from edgequant.quantize.precisions import BASELINE, PRECISIONS, get_precision, lacking
from edgequant.quantize.refusal import precision_refusals

ZEN3_FLAGS = {"avx2": True, "avx512f": False, "avx512_bf16": False}  # the AVX2 EPYC: no BF16 instructions
ZEN4_FLAGS = {"avx2": True, "avx512f": True, "avx512_bf16": True}
ZEN3 = {"flags": ZEN3_FLAGS, "isa": {"onednn": "AVX2"}}
ZEN4 = {"flags": ZEN4_FLAGS, "isa": {"onednn": "AVX512_CORE_BF16"}}


def test_an_unknown_precision_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown precision 'fp8'; known precisions: fp32, bf16, int8"):
        get_precision("fp8")


def test_a_method_of_an_unknown_precision_cannot_register():
    with pytest.raises(ValueError, match=r"precision must be one of fp32, bf16, int8, got 'fp8'"):
        register("fp8_method", runtime="x", precision="fp8", baseline="fp32")


def test_every_precision_has_a_roofline_engine_and_fp32_is_the_one_baseline():
    assert set(ENGINES) == set(PRECISIONS)
    assert [p.name for p in PRECISIONS.values() if p.baseline] == [BASELINE] == ["fp32"]


def test_bf16_runs_in_both_runtimes_against_its_own_fp32():
    assert {name: get_method(name).baseline for name in ("bf16", "openvino_bf16")} == {"bf16": "fp32", "openvino_bf16": "openvino_fp32"}
    assert get_method("bf16").precision == get_method("openvino_bf16").precision == "bf16"


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bf16_and_measured_where_x86_or_arm_has_it():
    why = lacking("bf16", ZEN3_FLAGS)
    assert why is not None and "\n" not in why and "avx512_bf16" in why and "not measured" in why
    assert lacking("bf16", ZEN4_FLAGS) is None
    assert lacking("bf16", {"asimd": True, "bf16": True}) is None  # Arm's BF16
    assert lacking("int8", ZEN3_FLAGS) is None and lacking("fp32", {}) is None
    refused = precision_refusals(["fp32", "bf16", "onnx_qdq_int8", "openvino_bf16"], ZEN3)
    assert refused == {"bf16": f"bf16: {why}", "openvino_bf16": f"openvino_bf16: {why}"}
    assert precision_refusals(["fp32", "bf16", "openvino_bf16"], ZEN4) == {}


def test_bf16_is_refused_where_onednn_is_capped_below_its_kernels():
    capped = {"flags": ZEN4_FLAGS, "isa": {"onednn": "AVX2"}}  # ONEDNN_MAX_CPU_ISA=AVX2 on the AVX-512 EPYC
    why = precision_refusals(["fp32", "bf16", "onnx_qdq_int8"], capped)
    assert list(why) == ["bf16"] and "oneDNN is capped at AVX2" in why["bf16"] and "\n" not in why["bf16"]
    assert lacking("bf16", ZEN4_FLAGS, "AVX512_CORE_AMX") is None and lacking("bf16", {"bf16": True}, None) is None  # AMX; Arm


@pytest.mark.slow
def test_openvino_bf16_exports_under_an_avx2_cap_and_the_capped_probe_refuses_to_time_it(tmp_path, subprocess_env):
    """ONEDNN_MAX_CPU_ISA=AVX2 stands in for the AVX2 EPYC: OpenVINO's BF16 kernels cannot compile under it on a CPU
    that has them (the plugin reads CPUID, oneDNN the cap), so the export records that and the probe's record refuses."""
    import json
    import subprocess
    import sys

    from .conftest import ROOT

    script = (
        "import json, sys, torch; from pathlib import Path; from edgequant.model.zoo import build_model;"
        " from edgequant.quantize.catalog import get_method; from edgequant.measure.machine import probe;"
        " from edgequant.quantize.refusal import precision_refusals;"
        " m = build_model('cnn').eval(); x = torch.rand(4, 1, 28, 28);"
        " e = get_method('openvino_bf16').export(m, x, x, Path(sys.argv[1]), (1,));"
        " print(json.dumps({'settings': e.settings, 'refused': precision_refusals(['fp32', 'openvino_bf16'], probe())}))"
    )
    env = {**subprocess_env, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["settings"]["inference_precision_hint"] == "bf16" and (tmp_path / "model.xml").is_file()
    compiled = got["settings"]["runtime_precision_on_export_machine"]  # per layer where the plugin compiled it, else why not
    assert isinstance(compiled, dict) or compiled.startswith("not compiled on the export machine: OpenVINO refuses it (")
    assert list(got["refused"]) == ["openvino_bf16"]  # no BF16 instructions, or oneDNN capped below them
