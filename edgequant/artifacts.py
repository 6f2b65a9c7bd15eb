"""Refuse an artifact that could run code, or that holds anything edgequant never writes, before a runtime parses it.

Artifacts travel between teammates through the DVC remote, so whoever can write to the remote must
not be able to run code on the machines that load them. Every loader reads its file through here.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

# torch.save archives (state dicts, prepared splits): the pickle is only ever read with weights_only=True.
TORCH_SAVE_RECORDS = re.compile(
    r"[^/]+/(data\.pkl|\.format_version|\.storage_alignment|byteorder|version|data/\d+|\.data/serialization_id)"
)
# torch.export.save archives as edgequant writes them: one program named "model", tensors stored raw.
PT2_RECORDS = re.compile(
    r"[^/]+/(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/(model_weights_config\.json|weight_\d+)|data/constants/(model_constants_config\.json|tensor_\d+)"
    r"|data/sample_inputs/model\.pt)"
)
PTE_IDENTIFIER = b"ET12"  # ExecuTorch's flatbuffer file identifier, bytes 4-8 of every .pte


def _refuse(path: Path, problem: str, remedy: str) -> ValueError:
    return ValueError(f"{path}: not a readable edgequant model ({problem}); {remedy}")


def read_zip(path: Path, allowed: re.Pattern, remedy: str) -> tuple[bytes, zipfile.ZipFile]:
    """The file's bytes and its zip index, refusing a record whose name edgequant never writes."""
    data = path.read_bytes()
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise _refuse(path, f"not a zip archive: {exc}", remedy) from exc
    unexpected = [r.filename for r in archive.infolist() if not allowed.fullmatch(r.filename)]
    if unexpected:
        raise _refuse(path, f"holds records edgequant never writes: {', '.join(unexpected[:3])}", remedy)
    return data, archive


def check_torch_save(path: Path, remedy: str) -> bytes:
    """A torch.save archive holding only tensors and containers (the pickle itself is read with weights_only)."""
    return read_zip(path, TORCH_SAVE_RECORDS, remedy)[0]


def read_pt2(path: Path, remedy: str) -> io.BytesIO:
    """A .pt2 program whose every record is plain data: torch.export.load unpickles pickled weights,
    constants, custom objects and sample inputs with weights_only=False, so any of those is refused."""
    data, archive = read_zip(path, PT2_RECORDS, remedy)
    names = {r.filename.split("/", 1)[1]: r for r in archive.infolist()}
    for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
        if config not in names:
            raise _refuse(path, f"no {config}", remedy)
        try:
            entries = json.loads(archive.read(names[config]))["config"]
        except (ValueError, KeyError, TypeError) as exc:
            raise _refuse(path, f"{config} is not a payload config: {exc}", remedy) from exc
        pickled = [fqn for fqn, entry in entries.items() if not isinstance(entry, dict) or entry.get("use_pickle") is not False]
        if pickled:
            raise _refuse(path, f"{config} asks to unpickle {', '.join(pickled[:3])}", remedy)
    sample = names.get("data/sample_inputs/model.pt")
    if sample is not None and sample.file_size:  # edgequant saves programs without sample inputs
        raise _refuse(path, "carries pickled sample inputs", remedy)
    return io.BytesIO(data)


def read_pte(path: Path, remedy: str) -> bytes:
    """A .pte flatbuffer: checked for ExecuTorch's identifier, since random bytes abort its loader."""
    data = path.read_bytes()
    if data[4:8] != PTE_IDENTIFIER:
        raise _refuse(path, f"no ExecuTorch identifier {PTE_IDENTIFIER.decode()} at byte 4", remedy)
    return data


def read_onnx(path: Path, remedy: str) -> bytes:
    """An ONNX model's serialized bytes, refusing one that points at external data files (which
    could name any file on the machine) and one that does not parse."""
    import onnx
    from google.protobuf.message import DecodeError

    data = path.read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeWarning) as exc:
        raise _refuse(path, f"not an ONNX model: {exc}", remedy) from exc
    if not model.graph.node:
        raise _refuse(path, "an ONNX model with no nodes", remedy)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise _refuse(path, f"weights in external files ({', '.join(external[:3])})", remedy)
    return data


TFLITE_IDENTIFIER = b"TFL3"  # LiteRT's flatbuffer file identifier, bytes 4-8 of every .tflite


def read_tflite(path: Path, remedy: str) -> bytes:
    """A .tflite flatbuffer: checked for LiteRT's identifier, since the interpreter trusts the offsets inside."""
    data = path.read_bytes()
    if data[4:8] != TFLITE_IDENTIFIER:
        raise _refuse(path, f"no LiteRT identifier {TFLITE_IDENTIFIER.decode()} at byte 4", remedy)
    return data


def read_openvino_ir(xml: Path, remedy: str) -> tuple[bytes, bytes]:
    """An OpenVINO IR (topology .xml and weights .bin beside it), refusing XML that is not an IR, any DTD or
    entity (no IR has one; expanding them is how XML files exhaust memory), and constants past the end of the .bin."""
    import xml.etree.ElementTree as ET

    text = xml.read_bytes()
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise _refuse(xml, "XML with a DTD or entity declarations", remedy)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _refuse(xml, f"not XML: {exc}", remedy) from exc
    if root.tag != "net" or root.find("layers") is None:
        raise _refuse(xml, f"an XML file whose root is <{root.tag}>, not an IR's <net> with layers", remedy)
    weights_path = xml.with_suffix(".bin")
    if not weights_path.is_file():
        raise _refuse(xml, f"no weights file {weights_path.name} beside it", remedy)
    weights = weights_path.read_bytes()
    for data in root.iter("data"):
        offset, size = data.get("offset"), data.get("size")
        if offset is None or size is None:
            continue
        if not (offset.isdigit() and size.isdigit()) or int(offset) + int(size) > len(weights):
            raise _refuse(xml, f"a constant at offset {offset} of {size} bytes lies outside {weights_path.name}", remedy)
    return text, weights
