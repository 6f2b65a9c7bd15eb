"""Artifacts from a teammate's remote cannot run code, and damaged ones are refused in one line naming the fix."""

from __future__ import annotations

import contextlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgequant.artifacts import read_onnx, read_pt2, read_pte
from edgequant.benchmark import MethodRequest, check_runs
from edgequant.methods.pt2e import save_program

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


def test_saved_program_loads(program):
    torch.export.load(read_pt2(program, REMEDY)).module()(torch.zeros(1, 1, 8, 8))


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
        read_pte(tmp_path / "model_b1.pte", "re-run `dvc repro quantize@executorch_xnnpack_int8`")


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


def test_an_artifact_of_another_model_or_input_shape_is_named_with_the_fix():
    def other_shape(x):  # what a .pt2 exported for another input shape does
        raise RuntimeError("Expected input at *args[0].shape[2] to be equal to 32, but got 28\nmore detail")

    with pytest.raises(ValueError, match=r"models/quantized/pt2e_x86: the artifact does not run on a \(8, 1, 28, 28\) batch"):
        check_runs(other_shape, torch.zeros(8, 1, 28, 28), _request("pt2e_x86"))
    with pytest.raises(ValueError, match=r"gives \(8, 3\) logits for \(8, 1, 28, 28\), not \(8, 10\); re-run `dvc repro quantize@"):
        check_runs(lambda x: torch.zeros(len(x), 3), torch.zeros(8, 1, 28, 28), _request("pt2e_x86"))
