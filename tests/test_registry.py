"""Every registered method on tiny data: exports, loads, agrees with FP32, keeps per-layer SQNR high, shrinks."""

import json

import pytest
import torch

from edgequant.data.splits import to_input
from edgequant.measure.ops import KIND_ORDER, conv_gmacs, kind_of, ms_by_kind, op_rows, profile_torch
from edgequant.model.layers import conv_macs, net_macs, sqnr_db
from edgequant.quantize.catalog import Exported, Labelled, get_method, known_methods, missing_modules, record, register

from .conftest import ROOT, make_digits

BATCHES = (1, 8)

# Named limits (as torchao names its SQNR limits). FP32 through another engine differs by float rounding only;
# INT8 logits on the tiny models must keep their shape above these.
FP32_ENGINE_SQNR_DB = 60
INT8_LOGIT_SQNR_DB = 15
INT8_STRESS_LOGIT_SQNR_DB = 10  # the depthwise-separable model: per-tensor depthwise weights lose more
INT8_LAYER_SQNR_DB = 20
INT8_STRESS_LAYER_SQNR_DB = 15  # compared after the BatchNorm each exporter folds in
INT8_TOP1_AGREEMENT = 0.75
INT8_SIZE_RATIO = 0.27  # INT8 weights: about a quarter of the same runtime's FP32 file, plus scales
BF16_LOGIT_SQNR_DB = 30  # bfloat16 keeps 8 significant bits: ~50 dB per op, less after a few layers
BF16_TOP1_AGREEMENT = 0.95
LOGIT_SQNR_DB = {"fp32": FP32_ENGINE_SQNR_DB, "bf16": BF16_LOGIT_SQNR_DB, "int8": INT8_LOGIT_SQNR_DB}
STRESS_LOGIT_SQNR_DB = {"fp32": FP32_ENGINE_SQNR_DB, "bf16": BF16_LOGIT_SQNR_DB, "int8": INT8_STRESS_LOGIT_SQNR_DB}
TOP1_AGREEMENT = {"bf16": BF16_TOP1_AGREEMENT, "int8": INT8_TOP1_AGREEMENT}
CLOCKED_CALLS = 5  # calls timed on both clocks


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown quantization method 'int3'; known methods: fp32, dynamic_int8, .*onnx_qdq_int8"):
        get_method("int3")


def test_a_name_registered_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register("fp32", runtime="x", precision="fp32", baseline="fp32")(type("Again", (), {"export": None, "load": None}))


def test_unknown_method_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown quantization method 'onnx_qdq_int9' \(did you mean 'onnx_qdq_int8'\?\)"):
        get_method("onnx_qdq_int9")


@pytest.mark.parametrize("name", ["../x", "a/b", "Upper", "1st", "with.dot", ""])
def test_names_that_are_not_plain_words_cannot_register(name):
    with pytest.raises(ValueError, match="must be lower-case letters, digits and '_'"):
        register(name, runtime="x", precision="fp32", baseline=name)


def test_every_method_names_a_registered_fp32_baseline_that_is_its_own():
    for name in known_methods():
        base = get_method(get_method(name).baseline)
        assert base.precision == "fp32" and base.baseline == base.name, name


def test_sqnr_is_infinite_for_equal_tensors_and_40_db_for_one_percent_noise():
    x = torch.randn(1000)
    assert sqnr_db(x, x) == float("inf")
    assert sqnr_db(x, x + 0.01 * torch.randn(1000)) == pytest.approx(40, abs=2)


@pytest.fixture(scope="module")
def data():
    images, _ = make_digits(96, 5)
    x = to_input(torch.from_numpy(images))
    return x[:64], x[64:]  # calibration, evaluation


def extra(method) -> dict:
    """What the quantize stage adds for methods that learn or search: labels for the calibration images
    (make_digits is seeded, so these are the images `data` calibrates with), a validation set, and a
    budget wide enough that an accuracy-aware method keeps no layer in FP32 (tests/test_mixed.py checks
    the search itself)."""
    if not method.labelled:
        return {}
    _, calib_labels = make_digits(96, 5)
    images, labels = make_digits(128, 9)
    return {
        "labelled": Labelled(
            torch.from_numpy(calib_labels[:64]).long(), to_input(torch.from_numpy(images)), torch.from_numpy(labels).long(), 100.0, 1
        )
    }


# Labelled methods export through these same paths plus a search (tests/test_mixed.py runs it on this model).
@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in known_methods() if get_method(m).models is None and not get_method(m).labelled])
def test_every_method_for_any_model_quantizes_the_stress_model(name, tiny_stress_model, data, tmp_path, monkeypatch):
    """The depthwise-separable model through every method that claims any model: export, record, load, run."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    method = get_method(name)
    if missing_modules(method):
        pytest.skip(f"{name} needs {', '.join(missing_modules(method))}, not installed (pip install -e '.[runtimes]')")
    calib, x = data
    exported = method.export(tiny_stress_model, calib, x, tmp_path, BATCHES, **extra(method))
    (tmp_path / "meta.json").write_text(json.dumps(record(method, "dwsep_cnn", exported, BATCHES)))
    with torch.no_grad():
        reference = tiny_stress_model(x[:8])
    out = method.load(tmp_path, 8, 1)(x[:8].contiguous())
    assert out.shape == (8, 10)
    assert sqnr_db(reference, out) > STRESS_LOGIT_SQNR_DB[method.precision], sqnr_db(reference, out)
    if exported.sqnr_db is not None:  # one value per conv/linear layer of this model, not of the classic CNN
        assert list(exported.sqnr_db) == list(net_macs("dwsep_cnn"))
        assert min(exported.sqnr_db.values()) > INT8_STRESS_LAYER_SQNR_DB, exported.sqnr_db


@pytest.mark.slow
@pytest.mark.parametrize("name", known_methods())
def test_every_method_exports_reproducibly_loads_and_agrees_with_fp32(name, tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    method = get_method(name)
    if missing_modules(method):  # an optional runtime: `make runtimes` installs it (CI does)
        pytest.skip(f"{name} needs {', '.join(missing_modules(method))}, not installed (pip install -e '.[runtimes]')")
    calib, x = data
    exported = method.export(tiny_model, calib, x, tmp_path, BATCHES, **extra(method))
    assert isinstance(exported, Exported) and exported.shipped.is_file()
    # Byte-identical on a second export: DVC hashes these files, so noise in them would make every run
    # look like a change (torch once named its zip folder after the random temporary file).
    again = method.export(tiny_model, calib, x, tmp_path / "again", BATCHES, **extra(method))
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert files and all((tmp_path / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in files)
    assert again.sqnr_db == exported.sqnr_db
    # Nor may they depend on where the checkout is: no absolute source path inside (stack traces).
    assert str(ROOT).encode() not in exported.shipped.read_bytes()
    (tmp_path / "meta.json").write_text(json.dumps(record(method, tiny_model.NAME, exported, BATCHES)))  # as the quantize stage does
    with torch.no_grad():
        reference = tiny_model(x[:8])
    run = method.load(tmp_path, 8, 1)
    out = run(x[:8].contiguous())
    assert out.shape == (8, 10)
    assert sqnr_db(reference, out) > LOGIT_SQNR_DB[method.precision], sqnr_db(reference, out)
    if method.precision != "fp32":
        assert (out.argmax(1) == reference.argmax(1)).float().mean() >= TOP1_AGREEMENT[method.precision]
    if method.precision == "int8":  # BF16 may keep its FP32 file (OpenVINO converts the weights when it compiles)
        fp32_size = get_method(method.baseline).export(tiny_model, calib, x, tmp_path / "base", BATCHES).shipped.stat().st_size
        assert exported.shipped.stat().st_size <= INT8_SIZE_RATIO * fp32_size
    if exported.sqnr_db is not None:
        assert list(exported.sqnr_db) == ["conv1", "conv2", "fc1", "fc2"]
        assert min(exported.sqnr_db.values()) > INT8_LAYER_SQNR_DB
    if method.static_shapes:
        one = method.load(tmp_path, 1, 1)(x[:1].contiguous())
        assert one.shape == (1, 10)
    # Its runtime's profiler sees the convolutions, named so the benchmark can tell them apart.
    batch = x[:8].contiguous()
    ops = method.profile(tmp_path, 8, 1, batch, 2) if method.profile else profile_torch(run, batch, 2)
    assert ops and all(ms >= 0 for ms in ops.values())
    assert "conv" in {kind_of(op) for op in ops}, ops
    # Its runtime's own clock, where it keeps one: a record for every call, each inside the wall time around it.
    if method.clock:
        clocked = method.clock(tmp_path, 8, 1, batch, CLOCKED_CALLS)
        assert len(clocked.wall_ms) == len(clocked.internal_ms) == CLOCKED_CALLS, clocked
        assert all(0 < inside <= around for inside, around in zip(clocked.internal_ms, clocked.wall_ms, strict=True)), clocked


@pytest.mark.parametrize(
    ("op", "kind"),
    [
        ("Convolution (NHWC, QC8) IGEMM #2", "conv"),  # XNNPACK, via ETDump
        ("Convert (NC) #1", "layout & quantize"),  # ...not a convolution
        ("Fully Connected (NC, QS8, QC8W) GEMM #1", "fully connected"),
        ("Max Pooling (NHWC, S8) #1", "max pool"),
        ("QLinearConv node_conv2d_token_1", "conv"),  # ONNX Runtime
        ("QGemm node_linear", "fully connected"),
        ("DequantizeLinear logits_DequantizeLinear", "layout & quantize"),
        ("quantized::conv2d_relu", "conv"),  # torch.ao eager
        ("quantized::linear_relu", "fully connected"),
        ("onednn::qlinear_pointwise", "fully connected"),  # inductor
        ("aten::quantize_per_tensor", "layout & quantize"),
        ("aten::addmm", "fully connected"),
        ("aten::clamp_min", "ReLU"),  # eager F.relu
        ("ReorderOutput ReorderOutput", "layout & quantize"),  # ORT's NCHWc blocked layout back to NCHW
        ("Subtract (ND) #1", "other"),
        ("DEPTHWISE_CONV_2D #1", "conv"),  # LiteRT builtin ops
        ("FULLY_CONNECTED #7", "fully connected"),
        ("MAX_POOL_2D #3", "max pool"),
        ("QUANTIZE #4", "layout & quantize"),
        ("Convolution __module.conv2/aten::_convolution/Convolution (brgconv_avx512_I8)", "conv"),  # OpenVINO
        ("FullyConnectedQuantizedLegacy __module.fc1/aten::linear/MatMul/DequantizationMultiply (brgemm_avx512_I8)", "fully connected"),
        ("Reorder Multiply_3_abcd_acdb___module.conv1/aten::_convolution/Convolution (jit_uni_f32)", "layout & quantize"),
        ("FakeQuantize aten::div/Divide/fq_output_0 (jit_avx512_f32)", "layout & quantize"),
        ("MaxPool aten::max_pool2d/MaxPool (jit_avx512_I8)", "max pool"),
        ("PowerStatic Multiply_7 (jit_avx512_f32)", "other"),  # the input normalization
    ],
)
def test_operator_kinds_across_runtimes(op, kind):
    assert kind_of(op) == kind


def test_time_by_kind_sums_each_methods_operators_slowest_method_first():
    rows = op_rows("fast", "rt", "int8", 1, 256, conv_macs("cnn"), {"Convolution #1": 2.0, "Convolution #2": 3.0, "Transpose #1": 0.5})
    rows += op_rows("slow", "rt", "fp32", 1, 256, conv_macs("cnn"), {"aten::mkldnn_convolution": 9.0, "aten::clamp_min": 4.0})
    rows = [{k: str(v) for k, v in r.items()} for r in rows]  # as csv.DictReader hands them over
    by_kind = ms_by_kind(rows)
    assert list(by_kind) == ["slow", "fast"]
    assert list(by_kind["fast"]) == list(KIND_ORDER)
    assert by_kind["fast"]["conv"] == 5.0 and by_kind["fast"]["layout & quantize"] == 0.5 and by_kind["fast"]["ReLU"] == 0.0
    assert by_kind["slow"]["ReLU"] == 4.0
    assert conv_gmacs(256, 5.0, conv_macs("cnn")) == pytest.approx(256 * conv_macs("cnn") / 5e-3 / 1e9)
    assert conv_gmacs(256, 0.0, 1) is None and ms_by_kind([]) == {}


def test_pt2e_archive_deflates_its_graph_and_stores_tensors(tmp_path):
    import zipfile

    from edgequant.quantize.methods.pt2e import save_program

    module = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()).eval()
    x = torch.randn(2, 64)
    save_program(torch.export.export(module, (x,)), tmp_path / "m.pt2")
    with zipfile.ZipFile(tmp_path / "m.pt2") as archive:
        kinds = {r.filename.rsplit("/", 1)[-1]: r.compress_type for r in archive.infolist()}
    assert kinds["model.json"] == zipfile.ZIP_DEFLATED
    assert {kinds[n] for n in kinds if n.startswith("weight_")} == {zipfile.ZIP_STORED}
    assert torch.equal(torch.export.load(tmp_path / "m.pt2").module()(x), module(x))


def test_every_variant_table_entry_is_registered_from_its_config():
    from edgequant.quantize.methods.executorch import XNNPACK_VARIANTS
    from edgequant.quantize.methods.onnx import QDQ_VARIANTS

    for table in (QDQ_VARIANTS, XNNPACK_VARIANTS):
        for name, config in table.items():
            method = get_method(name)
            assert method.description == config.description and method.export.__self__ is config, name
            assert method.labelled == (config.aware or getattr(config, "qat", False)), name


def test_a_variant_config_that_cannot_be_built_is_refused_when_written():
    from edgequant.quantize.methods.executorch import XnnpackConfig
    from edgequant.quantize.methods.onnx import QdqConfig

    with pytest.raises(ValueError, match=r"calibrator 'Histogram' is not one of MinMax, Percentile"):
        QdqConfig("x", calibrator="Histogram")
    with pytest.raises(ValueError, match="aware .* and qat .* exclude each other"):
        XnnpackConfig("x", aware=True, qat=True)


def test_a_new_variant_is_one_config_value_and_exports_what_it_says(tmp_path):
    """A variant added from outside the table: per-tensor weights through ORT's QDQ path show one scale per weight."""
    pytest.importorskip("onnxruntime")
    import onnx
    from onnx import numpy_helper

    from edgequant.model.zoo import build_model
    from edgequant.quantize.catalog import add_method
    from edgequant.quantize.methods.onnx import QdqConfig

    config = QdqConfig("per-tensor, percentile", per_channel=False, calibrator="Percentile")
    base = get_method("onnx_qdq_int8")
    method = add_method(
        "test_qdq_per_tensor_percentile",
        runtime=base.runtime,
        precision="int8",
        baseline=base.baseline,
        description=config.description,
        export=config.export,
        load=base.load,
    )
    try:
        torch.manual_seed(0)
        model = build_model("cnn").eval()
        calib = torch.rand(16, *model.example_input(1).shape[1:])
        exported = method.export(model, calib, calib[:4], tmp_path, BATCHES)
        graph = onnx.load(str(exported.shipped)).graph
        weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        dequantized = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
        scales = [weights[n.input[1]] for n in dequantized if weights[n.input[0]].dtype.name == "int8"]
        assert scales and all(s.size == 1 for s in scales)  # per tensor: one scale for each weight
        assert get_method(method.name) is method and method.name in known_methods()
    finally:
        import edgequant.quantize.catalog as catalog

        catalog._METHODS.pop(method.name)
        catalog._MODULES.pop(method.name)
