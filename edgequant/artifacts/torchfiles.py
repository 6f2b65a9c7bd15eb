"""What torch would allocate when it loads a torch.save or torch.export.save archive, checked before torch reads it.

torch sizes its buffers from the archive's own metadata, not from the bytes present: torch.load allocates each
storage at the element count its pickle names (and a quantized tensor at its shape) before it compares that
with the record; torch.export.load builds a weight whose record is empty as `torch.zeros(shape)` from the
weights config. A few bytes of metadata can so ask for gigabytes. Here every tensor must fit in the bytes of its
record, and every storage must match its record's size exactly, before torch sees the file.
"""

from __future__ import annotations

import collections
import io
import json
import math
import pickle
import re

# torch.save's storage classes (what edgequant's state dicts and splits use, and their relatives) and element sizes.
STORAGE_ITEMSIZE = {
    **dict.fromkeys(("ByteStorage", "CharStorage", "BoolStorage", "QInt8Storage", "QUInt8Storage"), 1),
    **dict.fromkeys(("ShortStorage", "HalfStorage", "BFloat16Storage"), 2),
    **dict.fromkeys(("IntStorage", "FloatStorage", "QInt32Storage"), 4),
    **dict.fromkeys(("LongStorage", "DoubleStorage"), 8),
}
QUANTIZATION = {"qint8", "quint8", "qint32", "per_tensor_affine", "per_channel_affine", "per_channel_affine_float_qparams"}
MAX_DIMS = 16  # a tensor of more dimensions than this is no model's weight
PAYLOAD = re.compile(r"(weight|tensor)_\d+")


class _Storage:
    """A storage the pickle names: `numel` elements of `itemsize` bytes, checked against its record."""

    def __init__(self, numel: int, itemsize: int):
        self.numel, self.itemsize = numel, itemsize


class _Tensor:
    """Where the real unpickler would build a tensor."""


def _shape(size, stride, offset) -> tuple[int, int]:
    """(elements of the shape, elements of storage the view reaches), refusing anything but small non-negative ints."""
    if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list) and len(size) == len(stride) <= MAX_DIMS):
        raise ValueError("a tensor whose shape and strides do not match")
    values = [offset, *size, *stride]
    if not all(type(v) is int and v >= 0 for v in values):
        raise ValueError("a tensor with a negative or non-integer shape, stride or offset")
    numel = math.prod(size)
    return numel, (offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1 if numel else 0)


def _rebuild_tensor(storage, offset, size, stride, *_):
    if not isinstance(storage, _Storage) or _shape(size, stride, offset)[1] > storage.numel:
        raise ValueError("a tensor reaching past the end of its storage")
    return _Tensor()


def _rebuild_qtensor(storage, offset, size, stride, *_):
    if not isinstance(storage, _Storage) or max(_shape(size, stride, offset)) > storage.numel:
        raise ValueError("a quantized tensor larger than its storage")  # torch allocates it at its shape before set_
    return _Tensor()


def _rebuild_parameter(data, *_):
    return data


class _StorageScan(pickle.Unpickler):
    """Runs a torch.save pickle with stand-ins for the only callables edgequant's files name, so nothing of the
    file's choosing runs and each storage is compared with its record."""

    def __init__(self, pickled: bytes, records: dict, folder: str):
        super().__init__(io.BytesIO(pickled))
        self.records, self.folder, self.storages = records, folder, {}

    def find_class(self, module: str, name: str):
        allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
            ("torch._utils", "_rebuild_qtensor"): _rebuild_qtensor,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        }
        if (module, name) in allowed:
            return allowed[module, name]
        if module == "torch" and (name in STORAGE_ITEMSIZE or name in QUANTIZATION):
            return name
        raise ValueError(f"a pickle naming {module}.{name}, which edgequant never saves")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in STORAGE_ITEMSIZE):
            raise ValueError("a pickle with a persistent id that is not a storage")
        _, kind, key, _, numel = pid
        if key in self.storages:  # torch reuses the first load of a key
            return self.storages[key]
        record = self.records.get(f"{self.folder}/data/{key}")
        if record is None or type(numel) is not int or numel * STORAGE_ITEMSIZE[kind] != len(record):
            size = "no record" if record is None else f"a record of {len(record)} bytes"
            raise ValueError(f"storage {key!r} declares {numel!r} elements of {kind} and has {size}")
        self.storages[key] = _Storage(numel, STORAGE_ITEMSIZE[kind])
        return self.storages[key]


def check_storages(records: dict, folder: str) -> None:
    """Refuse a torch.save archive whose pickle would make torch allocate more than its records hold."""
    pickled = records.get(f"{folder}/data.pkl")
    if pickled is None:
        raise ValueError("no data.pkl")
    try:
        _StorageScan(bytes(pickled), records, folder).load()
    except (pickle.UnpicklingError, EOFError, TypeError, IndexError, AttributeError, KeyError, RecursionError, MemoryError) as exc:
        raise ValueError(f"a pickle that does not read as a state dict ({type(exc).__name__}: {exc})") from exc


def _ints(values, field: str) -> list[int]:
    if not isinstance(values, list) or not all(isinstance(v, dict) and type(v.get("as_int")) is int for v in values):
        raise ValueError(f"tensor_meta {field} that are not plain integers")
    return [v["as_int"] for v in values]


def check_payload_config(config: dict, records: dict, prefix: str, itemsizes: dict[int, int]) -> None:
    """Refuse a .pt2 weights or constants config that names a pickle, a record that is not there, or a tensor
    larger than its record (torch.export.load makes an empty record `torch.zeros` of the declared shape)."""
    dtypes = {}
    for fqn, entry in config.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False:
            raise ValueError(f"asks to unpickle {fqn}")
        path, meta = entry.get("path_name"), entry.get("tensor_meta")
        if not isinstance(path, str) or not PAYLOAD.fullmatch(path) or f"{prefix}{path}" not in records or not isinstance(meta, dict):
            raise ValueError(f"{fqn} names no tensor record of the archive ({path!r})")
        itemsize = itemsizes.get(meta.get("dtype"))
        if itemsize is None or dtypes.setdefault(path, meta["dtype"]) != meta["dtype"]:
            raise ValueError(f"{fqn} has dtype {meta.get('dtype')!r}, unknown or not its record's")
        offset = meta.get("storage_offset")
        offset = _ints([offset], "storage_offset")[0]
        numel, reach = _shape(_ints(meta.get("sizes"), "sizes"), _ints(meta.get("strides"), "strides"), offset)
        stored = len(records[f"{prefix}{path}"])
        if stored % itemsize or reach * itemsize > stored or (numel and not stored):
            raise ValueError(f"{fqn} declares {numel} elements reaching {reach * itemsize} bytes of a {stored}-byte record")


def read_json(records: dict, name: str):
    try:
        return json.loads(bytes(records[name]))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name} is not JSON ({exc})") from exc


def torch_dtype_sizes() -> dict[int, int]:
    """Element size per dtype number of torch.export's serialized tensor_meta."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    return {int(kind): dtype.itemsize for kind, dtype in _SERIALIZE_TO_TORCH_DTYPE.items()}
