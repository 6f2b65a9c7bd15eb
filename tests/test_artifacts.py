"""Artifacts from a teammate's remote cannot run code, and damaged ones are refused in one line naming the fix."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import pickle
import resource
import shutil
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import flatbuffers
import numpy as np
import onnx
import pytest
import torch

from edgequant.artifacts.read import check_torch_save, read_onnx, read_openvino_ir, read_pt2, read_pte, read_tflite
from edgequant.measure.timing import MethodRequest, check_runs
from edgequant.model.zoo import load_fp32
from edgequant.quantize.catalog import get_method
from edgequant.quantize.methods.pt2e import save_program

from .zipforge import Record, forge

REMEDY = "re-run `dvc repro quantize@pt2e_x86`"
MARKER = Path("/tmp/edgequant-artifact-code-ran")


def _touch_marker():
    MARKER.write_text("the artifact ran code")
    return ()  # what an empty sample-inputs record unpickles to: torch loads it without a word


class Exploit:
    def __reduce__(self):
        return (_touch_marker, ())


@pytest.fixture
def program(tmp_path) -> Path:
    """A .pt2 saved the way the pt2e method saves them."""
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    path = tmp_path / "model_b1.pt2"
    save_program(torch.export.export(module, (torch.zeros(1, 1, 8, 8),)), path)
    return path


def rewrite(path: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> None:
    """Rewrite records of a zip archive (matched by the end of their name) and add new ones."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for record in src.infolist():
            data = next((new for suffix, new in replace.items() if record.filename.endswith(suffix)), None)
            dst.writestr(record, src.read(record) if data is None else data)
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    path.write_bytes(out.getvalue())


@pytest.mark.slow
def test_saved_program_loads(program):
    torch.export.load(read_pt2(program, REMEDY)).module()(torch.zeros(1, 1, 8, 8))


@pytest.mark.slow
def test_pickled_sample_inputs_with_code_are_refused_before_torch_sees_them(program):
    MARKER.unlink(missing_ok=True)
    payload = io.BytesIO()
    torch.save(Exploit(), payload)  # what an attacker with write access to the remote would put there
    rewrite(program, {"data/sample_inputs/model.pt": payload.getvalue()})
    # What torch.export.load alone does with it: falls back to weights_only=False and runs the code.
    # (Its warning about the fallback then has one argument too few for its format, which pytest's
    # log capture raises as TypeError; the code has run by then.)
    with contextlib.suppress(TypeError):
        torch.export.load(program)
    assert MARKER.exists(), "torch.export.load no longer runs pickled sample inputs: this test shows nothing"
    MARKER.unlink()
    with pytest.raises(ValueError, match=r"model_b1.pt2: not a readable edgequant model \(carries pickled sample inputs\); re-run"):
        read_pt2(program, REMEDY)
    assert not MARKER.exists()


@pytest.mark.slow
def test_pickled_weights_and_foreign_records_are_refused(program, tmp_path):
    with zipfile.ZipFile(program) as archive:
        config = next(r for r in archive.namelist() if r.endswith("model_weights_config.json"))
        text = archive.read(config).decode()
    rewrite(program, {"model_weights_config.json": text.replace('"use_pickle": false', '"use_pickle": true').encode()})
    with pytest.raises(ValueError, match=r"model_weights_config.json asks to unpickle 0.weight"):
        read_pt2(program, REMEDY)
    other = tmp_path / "other.pt2"
    save_program(torch.export.export(torch.nn.Linear(2, 2), (torch.zeros(1, 2),)), other)
    rewrite(other, {}, {"archive/data/constants/custom_obj_0": pickle.dumps(Exploit())})
    with pytest.raises(ValueError, match=r"holds records edgequant never writes: archive/data/constants/custom_obj_0"):
        read_pt2(other, REMEDY)
    (tmp_path / "garbage.pt2").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"garbage.pt2: not a readable edgequant model \(not a zip archive"):
        read_pt2(tmp_path / "garbage.pt2", REMEDY)


def test_random_bytes_as_pte_are_refused_before_the_runtime_parses_them(tmp_path):
    (tmp_path / "model_b1.pte").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ValueError, match=r"model_b1.pte: not a readable edgequant model \(no ExecuTorch identifier ET12 at byte 4\)"):
        read_pte(tmp_path / "model_b1.pte", "re-run `dvc repro quantize@executorch_xnnpack_int8`", 1)


def test_garbage_and_external_data_onnx_are_refused(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\xff\xfe not a protobuf " * 50)
    with pytest.raises(ValueError, match=r"model.onnx: not a readable edgequant model \(.*\); re-run"):
        read_onnx(tmp_path / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [2], np.array([1.0, 2.0], dtype=np.float32).tobytes(), raw=True)
    onnx.external_data_helper.set_external_data(weight, location="../../../etc/passwd")
    weight.ClearField("raw_data")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [weight],
    )
    (tmp_path / "model.onnx").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(ValueError, match=r"weights in external files \(w\)"):
        read_onnx(tmp_path / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")


def _request(method: str) -> MethodRequest:
    return MethodRequest(method, 1, f"models/quantized/{method}", "test.pt", 1, 8, 0, 1, 0.01, False, False, 0)


def test_an_artifact_of_another_model_or_input_shape_is_named_with_the_fix(tmp_path, monkeypatch):
    # The method's record, as the quantize stage writes it: the model it was made from gives the expected logits.
    monkeypatch.chdir(tmp_path)  # a fresh clone has no models/ (DVC outputs): the test writes what it reads
    record = tmp_path / "models" / "quantized" / "pt2e_x86" / "meta.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"method": "pt2e_x86", "model": "cnn"}))

    def other_shape(x):  # what a .pt2 exported for another input shape does
        raise RuntimeError("Expected input at *args[0].shape[2] to be equal to 32, but got 28\nmore detail")

    with pytest.raises(ValueError, match=r"models/quantized/pt2e_x86: the artifact does not run on a \(8, 1, 28, 28\) batch"):
        check_runs(other_shape, torch.zeros(8, 1, 28, 28), _request("pt2e_x86"))
    with pytest.raises(ValueError, match=r"gives \(8, 3\) logits for \(8, 1, 28, 28\), not \(8, 10\); re-run `dvc repro quantize@"):
        check_runs(lambda x: torch.zeros(len(x), 3), torch.zeros(8, 1, 28, 28), _request("pt2e_x86"))


# --- Zip archives that our check and torch's reader (miniz) could read differently


def _duplicated_sample_inputs(program: Path, pickle_first: bool) -> None:
    """`program` with its (empty) sample-inputs record written twice, one copy carrying a pickle that runs code."""
    payload = io.BytesIO()
    torch.save(Exploit(), payload)
    out = io.BytesIO()
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(out, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicated name, and writes it
        for record in src.infolist():
            copies = [src.read(record)]
            if record.filename.endswith("data/sample_inputs/model.pt"):
                copies = [payload.getvalue(), b""] if pickle_first else [b"", payload.getvalue()]
            for data in copies:  # a fresh ZipInfo each: zipfile would point both central entries at the last copy
                dst.writestr(zipfile.ZipInfo(record.filename, record.date_time), data)
    program.write_bytes(out.getvalue())


@pytest.mark.slow
def test_a_duplicated_record_is_refused_before_torch_can_read_either_copy(program, tmp_path):
    """Which copy torch reads depends on where miniz's binary search over the sorted names lands: here one
    order of the two copies makes plain torch.export.load run the pickle. read_pt2 refuses both orders."""
    torch_ran = []
    for pickle_first in (True, False):
        hostile = tmp_path / f"first_{pickle_first}" / "model_b1.pt2"
        hostile.parent.mkdir()
        shutil.copy(program, hostile)
        _duplicated_sample_inputs(hostile, pickle_first)
        MARKER.unlink(missing_ok=True)
        with contextlib.suppress(TypeError):
            torch.export.load(hostile)
        torch_ran.append(MARKER.exists())
        MARKER.unlink(missing_ok=True)
        with pytest.raises(
            ValueError, match=r"model_b1.pt2: not a readable edgequant model \(the record name archive/data/sample_inputs/model.pt twice\)"
        ):
            read_pt2(hostile, REMEDY)
        assert not MARKER.exists()
    assert any(torch_ran), "torch.export.load read the empty copy both times: this test shows nothing"


@pytest.fixture
def state_records(tmp_path) -> list[Record]:
    """A small state dict as torch.save writes it, as records to forge archives from."""
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as archive:
        return [Record(r.filename, archive.read(r)) for r in archive.infolist()]


def _changed(records: list[Record], index: int, **fields) -> list[Record]:
    return [dataclasses.replace(r, **fields) if i == index else r for i, r in enumerate(records)]


AMBIGUOUS = {  # case: (how the archive is forged from the state dict's records, what the refusal says)
    "data prepended": (lambda rs: forge(rs, prepend=b"PK\x03\x04" + bytes(60)), "data between the central directory's end"),
    "data appended": (lambda rs: forge(rs, append=b"more"), "no end-of-archive record in its last 22 bytes"),
    "an archive comment": (lambda rs: forge(rs, comment=b"note"), "no end-of-archive record in its last 22 bytes"),
    "data between records": (lambda rs: forge(_changed(rs, 0, gap=bytes(16))), "not where the previous one ends"),
    "overlapping records": (lambda rs: forge(_changed(rs, 1, offset=0)), "not where the previous one ends"),
    "a wrong record count": (lambda rs: forge(rs, count=len(rs) + 1), "central records where the end record says"),
    "local and central names differ": (
        lambda rs: forge(_changed(rs, 0, central_name="m/version")),
        "the record name m/version twice|local header and central directory disagree",
    ),
    "an exact duplicate": (lambda rs: forge([*rs, rs[0]]), r"the record name m/data.pkl twice"),
    "a duplicate differing in case": (lambda rs: forge([*rs, dataclasses.replace(rs[0], name="m/DATA.PKL")]), "twice"),
    "an encrypted record": (lambda rs: forge(_changed(rs, 0, flags=1)), "encrypted, patched or compressed with method"),
    "a bzip2 record": (lambda rs: forge(_changed(rs, 0, method=12)), "compressed with method 12"),
    "a deflated tensor": (lambda rs: forge(_changed(rs, len(rs) - 1, deflate=True)), "compressed, where edgequant stores it"),
    "a size the data does not have": (lambda rs: forge(_changed(rs, 1, declared_size=999)), "declares 999"),
    "a parent-folder name": (lambda rs: forge(_changed(rs, 1, name="m/../version")), "not a plain relative path"),
    "an absolute name": (lambda rs: forge(_changed(rs, 1, name="/m/version")), "not a plain relative path"),
    "a backslash name": (lambda rs: forge(_changed(rs, 1, name="m\\version")), "not a plain relative path"),
    "two top-level folders": (lambda rs: forge(_changed(rs, 1, name="other/version")), "more than one top-level folder"),
}


def test_a_forged_archive_without_ambiguity_is_accepted(state_records, tmp_path):
    (tmp_path / "forged.pt").write_bytes(forge(state_records))
    check_torch_save(tmp_path / "forged.pt", "re-run")  # the refusals below come from each case's change alone


@pytest.mark.parametrize("case", AMBIGUOUS, ids=list(AMBIGUOUS))
def test_an_archive_two_readers_could_read_differently_is_refused(case, state_records, tmp_path):
    make, says = AMBIGUOUS[case]
    (tmp_path / "m.pt").write_bytes(make(state_records))
    with pytest.raises(ValueError, match=rf"m.pt: not a readable edgequant model \(.*({says}).*\); re-run `dvc repro train`") as refused:
        load_fp32(str(tmp_path / "m.pt"), "cnn")
    assert "\n" not in str(refused.value)


# --- Sizes: what a runtime would allocate is bounded before it reads the file


@contextlib.contextmanager
def allocates_under(limit_mb: float):
    """Fail if the process's peak memory grows by `limit_mb` inside the block (a refusal must come before allocation)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before < limit_mb


def _pt2_records(program: Path) -> list[Record]:
    with zipfile.ZipFile(program) as archive:
        return [Record(r.filename, archive.read(r), deflate=r.compress_type == zipfile.ZIP_DEFLATED) for r in archive.infolist()]


@pytest.mark.slow
def test_a_record_declaring_gigabytes_is_refused_before_it_is_inflated(program):
    records = _pt2_records(program)
    graph = next(i for i, r in enumerate(records) if r.name.endswith("models/model.json"))
    program.write_bytes(forge(_changed(records, graph, declared_size=3_500_000_000)))  # what a 4 MB deflated record can stand for
    with allocates_under(100), pytest.raises(ValueError, match=r"record archive/models/model.json declares 3500000000 bytes"):
        read_pt2(program, REMEDY)


@pytest.mark.slow
def test_a_deflated_record_where_edgequant_stores_one_is_refused(program):
    records = _pt2_records(program)
    ident = next(i for i, r in enumerate(records) if r.name.endswith(".data/serialization_id"))
    program.write_bytes(forge(_changed(records, ident, data=bytes(8 * 2**20), deflate=True)))  # 8 MB of zeros in 8 KB
    with pytest.raises(ValueError, match=r"record archive/.data/serialization_id is compressed, where edgequant stores it"):
        read_pt2(program, REMEDY)


@pytest.mark.slow
def test_a_weight_declaring_a_huge_tensor_over_few_bytes_is_refused(program):
    records = _pt2_records(program)
    config_at = next(i for i, r in enumerate(records) if r.name.endswith("model_weights_config.json"))
    config = json.loads(records[config_at].data)
    meta = {**next(iter(config["config"].values()))["tensor_meta"], "sizes": [{"as_int": 2**20}, {"as_int": 2**12}]}
    meta["strides"] = [{"as_int": 2**12}, {"as_int": 1}]
    # An empty record: torch.export.load builds the weight as torch.zeros of the declared shape, 16 GB here.
    config["config"]["extra.weight"] = {"path_name": "weight_99", "is_param": True, "use_pickle": False, "tensor_meta": meta}
    records = _changed(records, config_at, data=json.dumps(config).encode())
    program.write_bytes(forge([*records, Record("archive/data/weights/weight_99", b"")]))
    with allocates_under(100), pytest.raises(ValueError, match=r"extra.weight declares 4294967296 elements .* of a 0-byte record"):
        read_pt2(program, REMEDY)


class _Storage:
    """Stands for a storage in a hand-made torch.save pickle."""

    def __init__(self, numel: int):
        self.numel = numel


class _Tensor:
    def __init__(self, storage: _Storage, size: tuple, stride: tuple, quantized: bool = False):
        self.args = (storage, 0, size, stride)
        self.quantized = quantized

    def __reduce__(self):
        if self.quantized:
            return (torch._utils._rebuild_qtensor, (*self.args, (torch.per_tensor_affine, 0.1, 0), False, collections.OrderedDict()))
        return (torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, "0", "cpu", obj.numel)
        return None


def _state_dict_file(path: Path, tensor: _Tensor) -> None:
    pickled = io.BytesIO()
    _Pickler(pickled, protocol=2).dump({"weight": tensor})
    records = [("data.pkl", pickled.getvalue()), ("byteorder", b"little"), ("data/0", bytes(16)), ("version", b"3\n")]
    path.write_bytes(forge([Record(f"archive/{name}", data) for name, data in records]))


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        (_Tensor(_Storage(2**28), (2**28,), (1,)), r"storage '0' declares 268435456 elements of FloatStorage and has a record of 16 bytes"),
        (_Tensor(_Storage(4), (2**30,), (1,)), r"a tensor reaching past the end of its storage"),
        (_Tensor(_Storage(4), (2**15, 2**15), (0, 0), quantized=True), r"a quantized tensor larger than its storage"),
    ],
    ids=["storage-larger-than-record", "view-past-storage", "quantized-tensor-larger-than-storage"],
)
def test_a_state_dict_whose_pickle_asks_for_more_than_its_records_is_refused_before_torch_loads_it(tensor, says, tmp_path, monkeypatch):
    _state_dict_file(tmp_path / "m.pt", tensor)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was reached"))
    with allocates_under(100), pytest.raises(ValueError, match=rf"m.pt: not a readable edgequant model \({says}\); re-run"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")


def test_an_onnx_tensor_declaring_more_than_it_holds_is_refused(tmp_path):
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[2**16, 2**16], raw_data=bytes(4))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        [weight],
    )
    (tmp_path / "model.onnx").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    with pytest.raises(ValueError, match=r"tensor 'w' declares 4294967296 elements and holds 4 bytes"):
        read_onnx(tmp_path / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")


def test_an_onnx_graph_whose_constant_shapes_ask_for_gigabytes_is_refused(tmp_path):
    # ONNX Runtime folds ConstantOfShape of a constant shape when it loads the model: 40 GB before anything runs.
    shape = onnx.numpy_helper.from_array(np.array([100_000, 100_000], np.int64), "shape")
    fill = onnx.helper.make_node(
        "ConstantOfShape", ["shape"], ["big"], value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])
    )
    graph = onnx.helper.make_graph(
        [fill, onnx.helper.make_node("Add", ["x", "big"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [shape],
    )
    (tmp_path / "model.onnx").write_bytes(
        onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]).SerializeToString()
    )
    with pytest.raises(
        ValueError, match=r"model.onnx: not a readable edgequant model \(values of 80000000000 bytes by their inferred shapes"
    ):
        read_onnx(tmp_path / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")


def _tflite(shape: list[int]) -> bytes:
    """A minimal LiteRT model: one subgraph with one tensor of `shape`, float32, and one empty buffer."""
    b = flatbuffers.Builder(0)
    b.StartVector(4, len(shape), 4)
    for dim in reversed(shape):
        b.PrependInt32(dim)
    dims = b.EndVector()
    b.StartObject(10)
    b.PrependUOffsetTRelativeSlot(0, dims, 0)
    tensor = b.EndObject()
    b.StartVector(4, 1, 4)
    b.PrependUOffsetTRelative(tensor)
    tensors = b.EndVector()
    b.StartObject(5)
    b.PrependUOffsetTRelativeSlot(0, tensors, 0)
    subgraph = b.EndObject()
    b.StartObject(3)
    empty = b.EndObject()
    vectors = []
    for item in (subgraph, empty):
        b.StartVector(4, 1, 4)
        b.PrependUOffsetTRelative(item)
        vectors.append(b.EndVector())
    b.StartObject(8)
    b.PrependUint32Slot(0, 3, 0)
    b.PrependUOffsetTRelativeSlot(2, vectors[0], 0)
    b.PrependUOffsetTRelativeSlot(4, vectors[1], 0)
    b.Finish(b.EndObject(), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_a_tflite_tensor_declaring_gigabytes_is_refused(tmp_path):
    (tmp_path / "model_b1.tflite").write_bytes(_tflite([1, 28, 28]))
    read_tflite(tmp_path / "model_b1.tflite", "re-run")  # the same model with a real shape passes
    (tmp_path / "model_b1.tflite").write_bytes(_tflite([2**16, 2**14]))
    with pytest.raises(ValueError, match=r"model_b1.tflite: not a readable edgequant model \(tensors of 4294967296 bytes, over the"):
        read_tflite(tmp_path / "model_b1.tflite", "re-run")


def test_an_openvino_constant_declaring_more_than_it_holds_is_refused(tmp_path):
    ir = """<?xml version="1.0"?><net name="m" version="11"><layers>
        <layer id="0" name="w" type="Const" version="opset1"><data element_type="f32" shape="65536,65536" offset="0" size="4"/>
        <output><port id="0" precision="FP32"><dim>65536</dim><dim>65536</dim></port></output></layer></layers></net>"""
    (tmp_path / "model.xml").write_text(ir)
    (tmp_path / "model.bin").write_bytes(bytes(4))
    with pytest.raises(ValueError, match=r"constant 'w' of shape \[65536,65536\] holds only 4 bytes"):
        read_openvino_ir(tmp_path / "model.xml", "re-run `dvc repro quantize@openvino_int8`")


# --- ExecuTorch programs: damaged or hostile ones give one line, never an abort


def tiny_pte(out: Path) -> Path:
    """`out`/model_b1.pte: a tiny XNNPACK-delegated program, exported as the executorch methods export theirs."""
    from edgequant.quantize.methods.executorch import _write_pte

    out.mkdir(parents=True, exist_ok=True)
    module = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10)).eval()
    return _write_pte(module, lambda bs: torch.zeros(bs, 1, 28, 28), out, (1,))


@pytest.fixture(scope="module")
def pte_dir(tmp_path_factory) -> Path:
    return tiny_pte(tmp_path_factory.mktemp("quantized") / "executorch_xnnpack_fp32").parent


@pytest.fixture
def damaged(pte_dir, tmp_path) -> Path:
    """A copy of the method directory, for a test to damage."""
    copy = tmp_path / "quantized" / pte_dir.name
    shutil.copytree(pte_dir, copy)
    return copy


def _load_pte(out_dir: Path):
    return get_method("executorch_xnnpack_fp32").load(out_dir, 1, 1)


@pytest.mark.slow
def test_the_tiny_program_loads_and_runs(pte_dir):
    assert _load_pte(pte_dir)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


PTE_REMEDY = r"re-run `dvc repro quantize@executorch_xnnpack_fp32`$"


@pytest.mark.slow
def test_a_truncated_pte_is_refused_in_one_line(damaged):
    pte = damaged / "model_b1.pte"
    pte.write_bytes(pte.read_bytes()[:-1000])
    with pytest.raises(
        ValueError, match=rf"model_b1.pte: not a readable edgequant model \(\d+ bytes where its header says \d+ .*\); {PTE_REMEDY}"
    ):
        _load_pte(damaged)


@pytest.mark.slow
def test_a_pte_that_executorch_refuses_after_the_checks_is_one_line_with_the_remedy(damaged):
    pte = damaged / "model_b1.pte"
    pte.write_bytes(pte.read_bytes().replace(b"XnnpackBackend", b"XnnpackBackenX"))  # names a backend that is not there
    with pytest.raises(
        ValueError, match=rf"model_b1.pte: ExecuTorch refuses it \(Failed to load method forward.*\); {PTE_REMEDY}"
    ) as refused:
        _load_pte(damaged)
    assert "\n" not in str(refused.value)


def _xnnpack_identifier_at(data: bytes) -> int:
    at = data.index(b"XH00")
    return at - 4 + struct.unpack_from("<I", data, at + 6)[0] + 4  # the delegate's flatbuffer, bytes 4-8


@pytest.mark.slow
def test_a_pte_whose_logged_names_are_not_utf8_is_refused_where_executorch_would_abort(damaged):
    pte = damaged / "model_b1.pte"
    data = bytearray(pte.read_bytes())
    at = _xnnpack_identifier_at(data)
    assert bytes(data[at : at + 4]) in (b"XN00", b"XN01")
    data[at : at + 4] = b"\xfd\xfe\xff\xfa"
    pte.write_bytes(bytes(data))
    # ExecuTorch alone: it logs the identifier it found, pybind11 cannot decode it, the process aborts.
    proc = subprocess.run(
        [sys.executable, "-c", f"from executorch.runtime import Runtime; Runtime.get().load_program({str(pte)!r}).load_method('forward')"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGABRT, f"ExecuTorch no longer aborts on this file: this case shows nothing ({proc.returncode})"
    with pytest.raises(ValueError, match=rf"\(XNNPACK data without its identifier\); {PTE_REMEDY}"):
        _load_pte(damaged)


@pytest.mark.slow
def test_a_pte_planning_terabytes_is_refused_before_executorch_allocates(damaged):
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte = damaged / "model_b1.pte"
    program = deserialize_pte_binary(pte.read_bytes())
    sizes = program.program.execution_plan[0].non_const_buffer_sizes
    sizes[-1] = 2**40  # the planned buffer ExecuTorch allocates when it loads the program
    pte.write_bytes(bytes(serialize_pte_binary(program, extract_delegate_segments=True)))
    with allocates_under(100), pytest.raises(ValueError, match=r"planned memory of 1099511\d+ bytes, over the \d+ a model for this batch"):
        _load_pte(damaged)


# --- Symbolic links among artifacts


def _tiny_onnx(path: Path) -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path.write_bytes(onnx.helper.make_model(graph).SerializeToString())


def test_an_artifact_that_is_a_symbolic_link_is_refused_even_to_a_valid_model(tmp_path):
    outside, method = tmp_path / "elsewhere", tmp_path / "quantized" / "onnx_fp32"
    outside.mkdir()
    method.mkdir(parents=True)
    _tiny_onnx(outside / "model.onnx")
    (method / "model.onnx").symlink_to(outside / "model.onnx")
    with pytest.raises(
        ValueError, match=r"onnx_fp32/model.onnx: not a readable edgequant model \(a symbolic link \(to .*elsewhere/model.onnx\)"
    ):
        read_onnx(method / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")
    (method / "model.onnx").unlink()
    method.rmdir()
    method.symlink_to(outside)  # the method's whole directory
    with pytest.raises(
        ValueError, match=r"quantized/onnx_fp32 is a symbolic link \(to .*elsewhere\); edgequant reads artifacts only as regular"
    ):
        read_onnx(method / "model.onnx", "re-run `dvc repro quantize@onnx_fp32`")


def test_read_meta_refuses_a_shipped_file_or_record_that_is_a_symbolic_link(tmp_path):
    from stages.benchmark import read_meta

    artifacts, secret = tmp_path / "quantized", tmp_path / "secret.txt"
    (artifacts / "onnx_fp32").mkdir(parents=True)
    secret.write_text("not an artifact")
    (artifacts / "onnx_fp32" / "meta.json").write_text(json.dumps({"shipped": "model.onnx", "model": "cnn"}))
    (artifacts / "onnx_fp32" / "model.onnx").symlink_to(secret)
    with pytest.raises(ValueError, match=r"meta.json: the file it ships, 'model.onnx': a symbolic link \(to .*secret.txt\)"):
        read_meta(artifacts, "onnx_fp32")
    (artifacts / "onnx_fp32" / "model.onnx").unlink()
    _tiny_onnx(artifacts / "onnx_fp32" / "model.onnx")
    assert read_meta(artifacts, "onnx_fp32")["size_bytes"] == (artifacts / "onnx_fp32" / "model.onnx").stat().st_size
    (artifacts / "onnx_fp32" / "meta.json").unlink()
    (artifacts / "onnx_fp32" / "meta.json").symlink_to(secret)
    with pytest.raises(ValueError, match=r"meta.json: not a quantize record \(a symbolic link"):
        read_meta(artifacts, "onnx_fp32")
