"""The edge runtimes (LiteRT, OpenVINO, Vela): refused artifacts, a missing package, INT8 I/O, NPU estimates, layer precisions."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgequant.data.splits import to_input
from edgequant.quantize.catalog import get_method

from .conftest import ROOT, make_digits

# Every test here exports artifacts or starts processes: the slow tier (make test-fast leaves it out).
pytestmark = pytest.mark.slow

RUNTIMES = ("litert_fp32", "litert_int8", "openvino_fp32", "openvino_int8")
REFUSED = r"not a readable edgequant model \({}\); re-run `dvc repro quantize@{}`"


@pytest.fixture(scope="module")
def data():
    images, _ = make_digits(96, 5)
    x = to_input(torch.from_numpy(images))
    return x[:64], x[64:]  # calibration, evaluation


@pytest.fixture(scope="module")
def litert_int8(tiny_model, data, tmp_path_factory):
    pytest.importorskip("litert_torch", reason="litert-torch is not installed (pip install -e '.[runtimes]')")
    out = tmp_path_factory.mktemp("litert_int8")
    get_method("litert_int8").export(tiny_model, *data, out, (1, 8))
    return out


def test_a_tflite_without_litert_identifier_is_refused_before_litert_reads_it(tmp_path):
    out = tmp_path / "litert_int8"
    out.mkdir()
    (out / "model_b1.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=REFUSED.format("no LiteRT identifier TFL3 at byte 4", "litert_int8")) as err:
        get_method("litert_int8").load(out, 1, 1)
    assert "\n" not in str(err.value)


def test_a_damaged_tflite_with_the_identifier_is_refused_in_one_line(tmp_path):
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install -e '.[runtimes]')")
    out = tmp_path / "litert_fp32"
    out.mkdir()
    (out / "model_b1.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4)
    with pytest.raises(
        ValueError,
        match=r"model_b1.tflite: (LiteRT refuses it|not a readable edgequant model) \(.*\); re-run `dvc repro quantize@litert_fp32`",
    ) as err:
        get_method("litert_fp32").load(out, 1, 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("xml", "weights", "problem"),
    [
        (b"\x89garbage", b"", "not XML: .*"),
        (b'<!DOCTYPE net [<!ENTITY a "aaaa">]><net><layers/></net>', b"", "XML with a DTD or entity declarations"),
        (b"<html><body/></html>", b"", "an XML file whose root is <html>, not an IR's <net> with layers"),
        (b'<net><layers><layer><data offset="0" size="64"/></layer></layers></net>', b"\x00" * 16, "a constant at offset 0 of 64 .*"),
        (b"<net><layers/></net>", None, "no weights file model.bin beside it"),
    ],
)
def test_a_corrupt_openvino_ir_is_refused_before_openvino_reads_it(tmp_path, xml, weights, problem):
    out = tmp_path / "openvino_int8"
    out.mkdir()
    (out / "model.xml").write_bytes(xml)
    if weights is not None:
        (out / "model.bin").write_bytes(weights)
    with pytest.raises(ValueError, match=REFUSED.format(problem, "openvino_int8")) as err:
        get_method("openvino_int8").load(out, 1, 1)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", RUNTIMES)
def test_a_missing_runtime_package_is_one_line_naming_it_and_the_extra(name, tiny_model, data, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module
    heavy = ("openvino", "nncf", "litert_torch", "ai_edge_litert", "ethosu")

    def missing(module, *args):
        if module.split(".")[0] in heavy:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return real(module, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    package = {"litert_fp32": "litert-torch", "litert_int8": "litert-torch", "openvino_fp32": "openvino", "openvino_int8": "nncf"}[name]
    with pytest.raises(ValueError, match=rf"{name} needs the {package} package, .*`pip install -e '\.\[runtimes\]'`") as err:
        get_method(name).export(tiny_model, *data, tmp_path, (1,))
    assert "\n" not in str(err.value)


def test_the_registry_lists_the_runtime_methods_without_their_packages():
    blocked = ["openvino", "nncf", "litert_torch", "ai_edge_litert", "ethosu"]
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {blocked!r}: raise ModuleNotFoundError(name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edgequant.quantize.catalog import known_methods\n"
        "print(' '.join(known_methods()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
    assert set(RUNTIMES) <= set(out.split())


def test_the_int8_tflite_runner_quantizes_pixels_with_the_files_own_scale_and_zero_point(litert_int8, tiny_model, data, monkeypatch):
    import edgequant.quantize.methods.litert as litert

    seen = []
    spy = litert.quantize_input
    monkeypatch.setattr(litert, "quantize_input", lambda x, detail: seen.append(detail["quantization"]) or spy(x, detail))
    run = get_method("litert_int8").load(litert_int8, 8, 1)
    source = run.interpreter.get_input_details()[0]
    scale, zero_point = source["quantization"]
    assert source["dtype"] == np.int8 and 0 < scale < 0.01, "int8 pixels of the file's calibrated scale"
    x = data[1][:8].contiguous()
    with torch.no_grad():
        reference = tiny_model(x).argmax(1)
    assert (run(x).argmax(1) == reference).float().mean() >= 0.75
    assert seen == [(scale, zero_point)]
    expected = np.clip(np.round(x.numpy() / scale) + zero_point, -128, 127).astype(np.int8)
    assert np.array_equal(spy(x.numpy(), source), expected)
    # The same file fed the pixels cast to int8 without its scale (0 for every pixel below 1): chance.
    runner, sink = run.interpreter, run.interpreter.get_output_details()[0]
    runner.set_tensor(source["index"], x.numpy().astype(np.int8))
    runner.invoke()
    naive = torch.from_numpy(litert.dequantize_output(runner.get_tensor(sink["index"]), sink))
    assert (naive.argmax(1) == reference).float().mean() <= 0.5
    assert "DELEGATE" in {op["op_name"] for op in runner._get_ops_details()}, f"{litert.DELEGATE} took no operator"


def test_vela_estimates_the_tiny_int8_tflite_for_both_npus(litert_int8):
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed (pip install -e '.[runtimes]')")
    from edgequant.device.npu import KIND, TARGETS, estimate_all

    metrics, rows = estimate_all(litert_int8 / "model_b1.tflite")
    assert metrics["kind"] == KIND == "compiler estimate (Vela), not a measurement"
    assert set(metrics["accelerators"]) == set(TARGETS)
    u55, u85 = metrics["accelerators"]["ethos-u55-128"], metrics["accelerators"]["ethos-u85-256"]
    assert (u55["clock_mhz"], u85["clock_mhz"]) == (500.0, 1000.0)
    for m in (u55, u85):
        assert m["cpu_operators"] == 0 and m["npu_operators"] > 0 and m["cpu_fallback"] == []
        assert m["est_latency_ms"] == pytest.approx(m["est_cycles_per_inference"] / (m["clock_mhz"] * 1e3))
        assert m["sram_used_kib"] > 0 and m["flash_used_kib"] + m["dram_used_kib"] > 1000  # 1.2 MB of int8 weights
    assert {r["operator"] for r in rows} >= {"Conv2D", "FullyConnected", "MaxPool"}


def test_a_vela_failure_is_one_line(tmp_path):
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela is not installed (pip install -e '.[runtimes]')")
    from edgequant.device.npu import estimate

    tflite = tmp_path / "model_b1.tflite"
    tflite.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"model_b1.tflite: Vela failed for ethos-u55-128 \(exit \d+: .+\)") as err:
        estimate(tflite, "ethos-u55-128")
    assert "\n" not in str(err.value)


def test_openvino_reports_int8_kernels_for_every_int8_layer_and_f32_for_fp32(tiny_model, data, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install -e '.[runtimes]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install -e '.[runtimes]')")
    from edgequant.quantize.methods.openvino import layer_precisions

    layers = ["conv1", "conv2", "fc1", "fc2"]
    for name, allowed in (("openvino_fp32", {"f32"}), ("openvino_int8", {"i8", "u8"})):
        out = tmp_path / name
        out.mkdir()
        exported = get_method(name).export(tiny_model, *data, out, (1,))
        precisions = layer_precisions(out, tiny_model)
        assert sorted(precisions) == layers and set(precisions.values()) <= allowed, precisions
        assert exported.settings["runtime_precision_on_export_machine"] == precisions  # what meta.json records
