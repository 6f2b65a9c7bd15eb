"""Refuse an artifact that could run code, ask for unbounded memory, or hold anything edgequant never writes, before a
runtime parses it.

Artifacts travel between teammates through the DVC remote, so whoever can write to the remote must not be able to
run code on, or exhaust the memory of, the machines that load them. Every loader reads its file through here: the
file is read once (a regular file, no symbolic link, at most zipcheck.MAX_ARTIFACT_BYTES), checked, and the
checked bytes are what the runtime gets, so nothing can change between the check and the load.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

from edgequant.artifacts.flatcheck import check_pte, check_tflite, planned_limit
from edgequant.artifacts.recorded import check_loaded
from edgequant.artifacts.zipcheck import read_regular, read_zip, size_of_regular

# torch.save archives (state dicts, prepared splits): the pickle is only ever read with weights_only=True.
TORCH_SAVE_RECORDS = re.compile(r"data\.pkl|\.format_version|\.storage_alignment|byteorder|version|data/\d+|\.data/serialization_id")
# torch.export.save archives as edgequant writes them: one program named "model", tensors stored raw, JSON deflated.
PT2_REQUIRED = (
    "archive_format",
    "archive_version",
    ".data/version",
    "byteorder",
    "models/model.json",
    "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json",
    "data/sample_inputs/model.pt",
)
PT2_RECORDS = re.compile(
    r"data/weights/weight_\d+|data/constants/tensor_\d+|\.data/serialization_id|" + "|".join(map(re.escape, PT2_REQUIRED))
)
PT2_DEFLATED = re.compile(r"[^/]+/.*\.json")  # pt2e.compress_metadata deflates the JSON records and nothing else


def _refuse(path: Path, problem: str, remedy: str) -> ValueError:
    return ValueError(f"{path}: not a readable edgequant model ({problem}); {remedy}")


@contextlib.contextmanager
def refusing(path: Path, remedy: str) -> Iterator[None]:
    """Turn a check's ValueError (the problem alone) into the one-line refusal naming the file and the remedy."""
    try:
        yield
    except ValueError as exc:
        raise _refuse(path, str(exc), remedy) from exc


def read_artifact(path: Path, remedy: str, root: Path | None = None) -> bytes:
    """The bytes of the artifact `path`: a regular file of bounded size, reached from `root` through no symbolic
    link. By default `root` is the folder above the file's own, so that neither the file nor its method's
    directory may be a link; the folders above that are the user's layout."""
    with refusing(path, remedy):
        data = read_regular(path, root or path.parent.parent)
    check_loaded(path, data)  # a damaged copy of a recorded output, pulled from a remote without `verify`
    return data


def read_record(artifacts: Path, method: str) -> tuple[dict, Path]:
    """A method's quantize record (its meta.json) and the file it names as shipped: both regular files in the
    method's own directory under `artifacts`, reached through no symbolic link, so that a damaged or hostile
    record cannot bring a file from elsewhere into the benchmark or into the bundle, which leaves the machine."""
    remedy = f"re-run `dvc repro quantize@{method}`"
    path = artifacts / method / "meta.json"
    if not path.exists() and not path.is_symlink() and not (artifacts / method).is_symlink():
        raise ValueError(f"no artifacts for {method} in {artifacts}: {remedy}")
    try:
        meta = json.loads(read_regular(path, artifacts))
        shipped = meta["shipped"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"{path}: not a quantize record ({exc}); {remedy}") from exc
    if not isinstance(shipped, str) or Path(shipped).name != shipped or shipped in ("", ".", ".."):
        raise ValueError(f"{path}: names no file of {artifacts / method} as the one shipped ({shipped!r}); {remedy}")
    try:
        size_of_regular(artifacts / method / shipped, artifacts)
    except ValueError as exc:
        raise ValueError(f"{path}: the file it ships, {shipped!r}: {exc}; {remedy}") from exc
    return meta, artifacts / method / shipped


def _torch_archive(path: Path, allowed: re.Pattern, remedy: str, deflated: re.Pattern | None = None) -> tuple[bytes, dict, str]:
    """The bytes of a torch zip archive, its records and its folder, refusing any record edgequant never writes."""
    data = read_artifact(path, remedy)
    with refusing(path, remedy):
        if data[:4] != b"PK\x03\x04":
            raise ValueError("not a zip archive")
        records = read_zip(data, folder=True, deflated=deflated)
        folder = next(iter(records)).split("/")[0]
        unexpected = [name for name in records if not allowed.fullmatch(name.split("/", 1)[1])]
        if unexpected:
            raise ValueError(f"holds records edgequant never writes: {', '.join(unexpected[:3])}")
    return data, records, folder


def check_torch_save(path: Path, remedy: str) -> bytes:
    """A torch.save archive holding only tensors and containers, each tensor within its record (the pickle itself
    is read with weights_only, after a scan that runs none of its code)."""
    from edgequant.artifacts.torchfiles import check_storages

    data, records, folder = _torch_archive(path, TORCH_SAVE_RECORDS, remedy)
    with refusing(path, remedy):
        check_storages(records, folder)
    return data


def read_pt2(path: Path, remedy: str) -> io.BytesIO:
    """A .pt2 program whose every record is plain data: torch.export.load unpickles pickled weights,
    constants, custom objects and sample inputs with weights_only=False, so any of those is refused."""
    from edgequant.artifacts.torchfiles import check_payload_config, read_json, torch_dtype_sizes

    data, records, folder = _torch_archive(path, PT2_RECORDS, remedy, PT2_DEFLATED)
    with refusing(path, remedy):
        missing = [name for name in PT2_REQUIRED if f"{folder}/{name}" not in records]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        if len(records[f"{folder}/data/sample_inputs/model.pt"]):  # edgequant saves programs without sample inputs
            raise ValueError("carries pickled sample inputs")
        for kind in ("weights", "constants"):
            name = f"{folder}/data/{kind}/model_{kind}_config.json"
            config = read_json(records, name)
            if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
                raise ValueError(f"{name} is not a payload config")
            try:
                check_payload_config(config["config"], records, f"{folder}/data/{kind}/", torch_dtype_sizes())
            except ValueError as exc:
                raise ValueError(f"{name.split('/', 1)[1]} {exc}") from exc
    return io.BytesIO(data)


def read_pte(path: Path, remedy: str, batch: int) -> bytes:
    """A .pte program checked as flatcheck.check_pte does, for a model exported for `batch` images."""
    data = read_artifact(path, remedy)
    with refusing(path, remedy):
        check_pte(data, planned_limit(batch))
    return data


def read_tflite(path: Path, remedy: str, batch: int = 1) -> bytes:
    """A .tflite flatbuffer: LiteRT's identifier, buffers inside the file, tensors within the bound for `batch`."""
    data = read_artifact(path, remedy)
    with refusing(path, remedy):
        check_tflite(data, planned_limit(batch))
    return data


def read_onnx(path: Path, remedy: str) -> bytes:
    """An ONNX model's serialized bytes, refusing one that points at external data files (which could name
    any file on the machine), one that does not parse, tensors whose data is not the size they declare, and
    values whose inferred shapes ask for more memory than a model may plan."""
    import onnx
    from google.protobuf.message import DecodeError

    from edgequant.artifacts.graphcheck import check_inferred_sizes, check_tensors

    data = read_artifact(path, remedy)
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeWarning) as exc:
        raise _refuse(path, f"not an ONNX model: {exc}", remedy) from exc
    if not model.graph.node:
        raise _refuse(path, "an ONNX model with no nodes", remedy)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise _refuse(path, f"weights in external files ({', '.join(external[:3])})", remedy)
    with refusing(path, remedy):
        check_tensors(model.graph)
        check_inferred_sizes(model, planned_limit(1))  # edgequant's ONNX models have a dynamic batch, counted as one image
    return data


def read_openvino_ir(xml: Path, remedy: str) -> tuple[bytes, bytes]:
    """An OpenVINO IR (topology .xml and weights .bin beside it), refusing XML that is not an IR, any DTD or
    entity (no IR has one; expanding them is how XML files exhaust memory), and constants that are not the size
    their shape declares or lie past the end of the .bin."""
    import xml.etree.ElementTree as ET

    from edgequant.artifacts.graphcheck import check_ir_sizes

    text = read_artifact(xml, remedy)
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise _refuse(xml, "XML with a DTD or entity declarations", remedy)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _refuse(xml, f"not XML: {exc}", remedy) from exc
    if root.tag != "net" or root.find("layers") is None:
        raise _refuse(xml, f"an XML file whose root is <{root.tag}>, not an IR's <net> with layers", remedy)
    weights_path = xml.with_suffix(".bin")
    if not weights_path.exists() and not weights_path.is_symlink():
        raise _refuse(xml, f"no weights file {weights_path.name} beside it", remedy)
    weights = read_artifact(weights_path, remedy)
    with refusing(xml, remedy):
        check_ir_sizes(root, len(weights), planned_limit(1))  # edgequant's IR has a dynamic batch, counted as one image
    return text, weights
