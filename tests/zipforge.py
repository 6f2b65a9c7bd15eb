"""Write zip archives byte by byte, with every field under the test's control: what a hostile teammate would craft."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass


@dataclass
class Record:
    name: str
    data: bytes
    deflate: bool = False
    flags: int = 0
    method: int | None = None  # None: 8 when deflated, else 0
    central_name: str | None = None  # what the central directory calls it, where it differs from the local header
    declared_size: int | None = None  # the uncompressed size both headers declare, where it differs from the data's
    offset: int | None = None  # where the central directory says the local header is
    gap: bytes = b""  # written after the record's data, before the next record


def forge(records: list[Record], prepend: bytes = b"", append: bytes = b"", count: int | None = None, comment: bytes = b"") -> bytes:
    """A zip archive of `records` as given, with data before it, after it, a wrong record count or a comment."""
    out, central = bytearray(prepend), bytearray()
    for r in records:
        stored = _deflate(r.data) if r.deflate else r.data
        method = r.method if r.method is not None else (8 if r.deflate else 0)
        size = len(r.data) if r.declared_size is None else r.declared_size
        crc, local_at = zlib.crc32(r.data), len(out) - len(prepend)
        name = r.name.encode()
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, r.flags, method, 0, 0x21, crc, len(stored), size, len(name), 0) + name
        out += stored + r.gap
        cname = (r.central_name or r.name).encode()
        offset = local_at if r.offset is None else r.offset
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, r.flags, method, 0, 0x21, crc, len(stored), size, len(cname), 0, 0, 0, 0, 0, offset
        )
        central += cname
    start = len(out) - len(prepend)
    n = len(records) if count is None else count
    out += central + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, n, n, len(central), start, len(comment)) + comment
    return bytes(out + append)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()
