"""Check a flatbuffer model (ExecuTorch `.pte`, LiteRT `.tflite`) before its runtime parses it.

Standard library only: the bench bundle carries this file to devices that have ExecuTorch's runtime and no edgequant.
Every check raises ValueError with the problem alone; callers add the file's name and the remedy.

Why each check: random bytes abort ExecuTorch (SIGABRT), because its log of the identifier it found is not UTF-8,
and pybind11 cannot raise from inside the log callback; so does any name from the file that it logs (an operator
it lacks, a backend, a delegate's data key). A truncated file is refused here by the sizes in its header. The
memory a runtime plans comes from the file (ExecuTorch's planned buffers, XNNPACK's tensor shapes, LiteRT's
tensor shapes), so those are bounded before it allocates them.
"""

from __future__ import annotations

import math
import struct

try:
    from .zipcheck import MAX_ARTIFACT_BYTES
except ImportError:  # in the bench bundle, beside zipcheck.py
    from zipcheck import MAX_ARTIFACT_BYTES

PTE_IDENTIFIER, TFLITE_IDENTIFIER = b"ET12", b"TFL3"
XNNPACK_HEADER, XNNPACK_IDENTIFIERS = b"XH00", (b"XN00", b"XN01")
# Memory a model may ask its runtime to plan, per image of the batch it was exported for: the CNN's tensors as
# declared (XNNPACK, fp32, every value counted as if none shared memory) come to 0.35 MB per image, LiteRT's to
# 0.1 MB; 1 MiB leaves room for models three times as large. On top come the weights, at most an artifact's size.
PLANNED_BYTES_PER_IMAGE = 2**20


def planned_limit(batch: int) -> int:
    """The most memory a model exported for `batch` images may declare."""
    return MAX_ARTIFACT_BYTES + batch * PLANNED_BYTES_PER_IMAGE


TFLITE_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 8: 8, 9: 1, 10: 8, 11: 16, 12: 8, 15: 4, 16: 2, 17: 1, 18: 2}


class Table:
    """A flatbuffer table at `pos` of `buf`; every read is bounds-checked, so a damaged file raises ValueError."""

    def __init__(self, buf: memoryview, pos: int):
        self.buf, self.pos = buf, pos
        self.vtable = pos - _read(buf, "<i", pos)
        self.vtable_size = _read(buf, "<H", self.vtable)

    def _field(self, slot: int) -> int | None:
        at = 4 + 2 * slot
        offset = _read(self.buf, "<H", self.vtable + at) if at + 2 <= self.vtable_size else 0
        return self.pos + offset if offset else None

    def scalar(self, slot: int, fmt: str, default: int = 0):
        at = self._field(slot)
        return default if at is None else _read(self.buf, fmt, at)

    def _target(self, slot: int) -> int | None:
        at = self._field(slot)
        return None if at is None else at + _read(self.buf, "<I", at)

    def table(self, slot: int) -> Table | None:
        at = self._target(slot)
        return None if at is None else Table(self.buf, at)

    def vector(self, slot: int, itemsize: int) -> tuple[int, int]:
        """(first element's position, length) of a vector field; (0, 0) where it is absent."""
        at = self._target(slot)
        if at is None:
            return 0, 0
        length = _read(self.buf, "<I", at)
        if at + 4 + length * itemsize > len(self.buf):
            raise ValueError(f"a vector of {length} elements runs past the end")
        return at + 4, length

    def tables(self, slot: int) -> list[Table]:
        start, length = self.vector(slot, 4)
        return [Table(self.buf, start + 4 * i + _read(self.buf, "<I", start + 4 * i)) for i in range(length)]

    def scalars(self, slot: int, fmt: str) -> list:
        start, length = self.vector(slot, struct.calcsize(fmt))
        return list(struct.unpack_from(f"<{length}{fmt[-1]}", self.buf, start)) if length else []

    def bytes(self, slot: int) -> memoryview:
        start, length = self.vector(slot, 1)
        return self.buf[start : start + length]

    def string(self, slot: int) -> str:
        try:
            return bytes(self.bytes(slot)).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"a name that is not UTF-8 ({bytes(self.bytes(slot))[:40]!r})") from exc


def _read(buf: memoryview, fmt: str, at: int):
    if at < 0 or at + struct.calcsize(fmt) > len(buf):
        raise ValueError(f"an offset ({at}) outside the file")
    return struct.unpack_from(fmt, buf, at)[0]


def _root(buf: memoryview) -> Table:
    return Table(buf, _read(buf, "<I", 0))


def _bounded(numel: int, what: str, limit: int) -> None:
    if numel > limit:
        raise ValueError(f"{what} of {numel} bytes, over the {limit} a model for this batch size may plan")


def check_pte(data: bytes, limit: int) -> None:
    """An ExecuTorch program whose header, segments, names and planned memory are sound."""
    buf = memoryview(data)
    if bytes(buf[4:8]) != PTE_IDENTIFIER:
        raise ValueError(f"no ExecuTorch identifier {PTE_IDENTIFIER.decode()} at byte 4")
    if bytes(buf[8:12]) != b"eh00" or _read(buf, "<I", 12) < 32:
        raise ValueError("no ExecuTorch extended header at byte 8")
    program_size, segment_base, segment_size = (_read(buf, "<Q", at) for at in (16, 24, 32))
    end = segment_base + segment_size if segment_base else program_size
    if end != len(data) or program_size > (segment_base or len(data)):
        raise ValueError(f"{len(data)} bytes where its header says {end} (truncated, or data appended)")
    program = _root(buf[:program_size])
    segments = [(s.scalar(0, "<Q"), s.scalar(1, "<Q")) for s in program.tables(4)]
    if any(offset + size > segment_size for offset, size in segments):
        raise ValueError("a segment outside the file")
    inline, planned, seen = program.tables(3), {}, set()
    for plan in _unique(program.tables(1), "plan", seen):
        plan.string(0)
        for meta in _unique([plan.table(1)], "meta", seen):
            meta.string(0), meta.string(1)
        for i, size in enumerate(plan.scalars(8, "q")):
            if size < 0:
                raise ValueError("a negative planned buffer size")
            planned[i] = max(planned.get(i, 0), size)
        for value in _unique(plan.tables(2), "value", seen):
            _check_value(value, limit)
        for operator in _unique(plan.tables(6), "operator", seen):
            operator.string(0), operator.string(1)
        for chain in _unique(plan.tables(5), "chain", seen):
            for frames in _unique(chain.tables(3), "frames", seen):
                for frame in _unique(frames.tables(0), "frame", seen):
                    frame.string(0), frame.string(2), frame.string(3)
        for delegate in _unique(plan.tables(7), "delegate", seen):
            _check_delegate(delegate, segments, inline, buf, segment_base, limit)
    _bounded(sum(planned.values()), "planned memory", limit)
    for named in _unique(program.tables(7), "named", seen):
        named.string(0)


def _unique(tables: list[Table | None], kind: str, seen: set) -> list[Table]:
    """The tables not visited yet: a vector may point at one table many times, and nested vectors would multiply."""
    fresh = [t for t in tables if t is not None and (kind, t.pos) not in seen]
    seen.update((kind, t.pos) for t in fresh)
    return list({t.pos: t for t in fresh}.values())


def _check_value(value: Table, limit: int) -> None:
    kind, content = value.scalar(0, "<B"), value.table(1)
    if content is None:
        return
    if kind == 5:  # Tensor
        sizes = content.scalars(2, "i")
        if any(s < 0 for s in sizes):
            raise ValueError("a tensor with a negative size")
        _bounded(math.prod(sizes), "a tensor", limit)
        for extra in filter(None, [content.table(9)]):
            extra.string(1)
    elif kind == 6:  # String
        content.string(0)


def _check_delegate(delegate: Table, segments: list, inline: list, buf: memoryview, base: int, limit: int) -> None:
    backend = delegate.string(0)
    for spec in delegate.tables(2):
        spec.string(0)
    processed = delegate.table(1)
    location, index = (processed.scalar(0, "<b"), processed.scalar(1, "<I")) if processed else (-1, 0)
    if location == 1 and index < len(segments):
        offset, size = segments[index]
        blob = buf[base + offset : base + offset + size]
    elif location == 0 and index < len(inline):
        blob = inline[index].bytes(0)
    else:
        raise ValueError(f"backend {backend} has no data in the file")
    if backend == "XnnpackBackend":
        _check_xnnpack(blob, limit)


def _check_xnnpack(blob: memoryview, limit: int) -> None:
    graph = blob
    if bytes(blob[4:8]) == XNNPACK_HEADER:
        start, size, constants, constant_size = (_read(blob, fmt, at) for fmt, at in (("<I", 10), ("<I", 14), ("<I", 18), ("<Q", 22)))
        if start + size > len(blob) or constants + constant_size > len(blob):
            raise ValueError("an XNNPACK header pointing outside its data")
        graph = blob[start : start + size]
    if bytes(graph[4:8]) not in XNNPACK_IDENTIFIERS:
        raise ValueError("XNNPACK data without its identifier")
    root = _root(graph)
    root.string(0)
    values = 0  # XNNPACK defines one value per entry, so repeated entries count again
    for value in root.tables(2):
        tensor = value.table(1)
        if tensor is not None and value.scalar(0, "<B") == 2:  # a quantized tensor wraps a plain one
            tensor = tensor.table(0)
        values += 4 * math.prod(tensor.scalars(2, "I")) if tensor is not None else 0
    _bounded(values, "XNNPACK's tensors", limit)
    _bounded(sum(root.scalars(7, "I")), "XNNPACK's buffers", limit)
    for constant in _unique(root.tables(8), "constant", set()):
        constant.string(2)


def check_tflite(data: bytes, limit: int) -> None:
    """A LiteRT model whose tensors, as declared, fit in `limit` bytes, and whose buffers lie inside the file."""
    buf = memoryview(data)
    if bytes(buf[4:8]) != TFLITE_IDENTIFIER:
        raise ValueError(f"no LiteRT identifier {TFLITE_IDENTIFIER.decode()} at byte 4")
    model = _root(buf)
    buffers = model.tables(4)
    for buffer in buffers:
        offset, size = buffer.scalar(1, "<Q"), buffer.scalar(2, "<Q")
        if offset > 1 and offset + size > len(data):  # models over 2 GB keep buffers after the flatbuffer
            raise ValueError("a buffer outside the file")
    subgraphs, sizes = model.tables(2), {}
    for subgraph in _unique(subgraphs, "subgraph", set()):
        sizes[subgraph.pos] = 0  # the interpreter allocates every entry of the tensors vector, repeated or not
        for tensor in subgraph.tables(0):
            shape = tensor.scalars(0, "i")
            if any(s < 0 for s in shape) or tensor.scalar(2, "<I") >= max(len(buffers), 1):
                raise ValueError("a tensor with a negative size or no buffer")
            sizes[subgraph.pos] += math.prod(shape) * TFLITE_ITEMSIZE.get(tensor.scalar(1, "<b"), 8)
    _bounded(sum(sizes[s.pos] for s in subgraphs), "tensors", limit)
