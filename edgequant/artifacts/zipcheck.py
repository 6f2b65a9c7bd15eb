"""Read an artifact as one regular file of bounded size, and refuse a zip archive that two readers could read differently.

Standard library only: the bench bundle carries this file (beside `run_bench.py`) to devices without edgequant.
Every check raises ValueError with the problem alone; callers add the file's name and the remedy.

torch reads `.pt` and `.pt2` archives with miniz (caffe2's PyTorchStreamReader): it finds the end record by
scanning back from the end, follows the zip64 locator's offset, sorts the central directory and looks names up
case-insensitively, and reads each record at the offset and sizes the central directory gives, skipping the local
header by its own name and extra lengths (no CRC check). Python's zipfile (numpy's `.npz`, and our own check)
keeps the last of duplicated names, accepts data prepended to the archive by shifting every offset, and
counts central records by bytes rather than by the stated number. An archive passes here only where all of these
agree by construction: records laid end to end from byte 0 in central-directory order, each local header repeating
its central one, the central directory right after them, the end record(s) right after that and nothing after
them, no two names equal ignoring case, and names that are plain relative paths in one top-level folder.
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zlib
from pathlib import Path

# The largest file edgequant writes is the prepared training split, 47 MB (60,000 images of 28x28);
# the largest model is the FP32 CNN, 4.8 MB. 256 MiB leaves room for a ResNet-50-sized FP32 model (98 MB).
MAX_ARTIFACT_BYTES = 256 * 2**20
# Deflated records edgequant writes: a .pt2's JSON (the CNN's graph is 27 KB) and the bundle's input arrays
# (1000 images as float32, 3.1 MB). A deflated record may stand for 1000 times its size, so it gets its own bound.
MAX_DEFLATED_RECORD_BYTES = 16 * 2**20

LOCAL, CENTRAL, DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
END, ZIP64_END, ZIP64_LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
STORED, DEFLATED = 0, 8
FLAG_DESCRIPTOR, FLAG_UTF8 = 0x0008, 0x0800  # torch.save writes both; anything else (encryption, patches) is refused
ZIP64_EXTRA, TORCH_PADDING_EXTRA = 0x0001, 0x4246  # torch pads local headers with an "FB" field to align tensor data
SATURATED = 0xFFFFFFFF
NAME = re.compile(r"[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*")  # printable, no backslash, no empty component


def _open_regular(path: Path, root: Path) -> int:
    """A descriptor of `path`, a regular file below `root` reached through no symbolic link.

    Edgequant writes artifacts as regular files and DVC checks them out as copies (or reflinks, hardlinks): a
    link among them was put there by hand, and the bundle, which leaves the machine, would carry whatever it
    points to. A link that stays inside the folder is refused as well, since it can be pointed elsewhere later.
    """
    relative = Path(os.path.relpath(path, root))
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"lies outside {root}")
    here = Path(root)
    for part in relative.parts[:-1]:
        here = here / part
        if here.is_symlink():
            raise ValueError(f"{here} is a symbolic link (to {os.readlink(here)}); edgequant reads artifacts only as regular files")
    try:  # O_NOFOLLOW: the last component may not be a link either, even one made after the loop above
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if Path(path).is_symlink():
            raise ValueError(f"a symbolic link (to {os.readlink(path)}); edgequant reads artifacts only as regular files") from exc
        raise ValueError(f"cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError("not a regular file")
    return fd


def size_of_regular(path: Path, root: Path) -> int:
    """The size of `path`, checked as read_regular checks it."""
    fd = _open_regular(path, root)
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def read_regular(path: Path, root: Path, limit: int = MAX_ARTIFACT_BYTES) -> bytes:
    """The bytes of `path`, a regular file below `root` reached through no symbolic link, of at most `limit` bytes."""
    with os.fdopen(_open_regular(path, root), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{size} bytes, over the {limit} an artifact may have")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"over the {limit} bytes an artifact may have")
    return data


def _unpack(fmt: str, data: bytes, at: int) -> tuple:
    if at < 0 or at + struct.calcsize(fmt) > len(data):
        raise ValueError(f"a header at byte {at} runs past the end")
    return struct.unpack_from(fmt, data, at)


def _extras(raw: bytes, allowed: tuple[int, ...]) -> dict[int, bytes]:
    fields, at = {}, 0
    while at < len(raw):
        key, size = _unpack("<HH", raw, at)
        if key not in allowed or key in fields or at + 4 + size > len(raw):
            raise ValueError(f"an extra field 0x{key:04x} edgequant never writes")
        fields[key], at = raw[at + 4 : at + 4 + size], at + 4 + size
    return fields


def _end_of_central_directory(data: bytes) -> tuple[int, int, int]:
    """(records, central directory offset, its end) from the end record(s), which must close the file."""
    if len(data) < 22 or data[-22:-18] != END:
        raise ValueError("no end-of-archive record in its last 22 bytes (data appended, or an archive comment)")
    disk, cd_disk, on_disk, total, size, offset, comment = _unpack("<4H2LH", data, len(data) - 18)
    if disk or cd_disk or on_disk != total or comment:
        raise ValueError("a multi-disk archive or an archive comment")
    end = len(data) - 22
    if end >= 20 and data[end - 20 : end - 16] == ZIP64_LOCATOR:
        locator_disk, at, disks = _unpack("<LQL", data, end - 16)
        if locator_disk or disks != 1 or at != end - 76 or data[at : at + 4] != ZIP64_END:
            raise ValueError("a zip64 locator that does not point at the zip64 record just before it")
        length, _, _, disk64, cd_disk64, on_disk64, total64, size64, offset64 = _unpack("<QHHLLQQQQ", data, at + 4)
        if length != 44 or disk64 or cd_disk64 or (on_disk64, total64, size64, offset64) != (on_disk, total, size, offset):
            raise ValueError("zip64 and classic end records that disagree")
        end = at
    if offset + size != end:
        raise ValueError(f"data between the central directory's end ({offset + size}) and the end record ({end})")
    return total, offset, end


def _central_directory(data: bytes, count: int, start: int, end: int) -> list[tuple]:
    entries, at = [], start
    while at < end:
        if data[at : at + 4] != CENTRAL:
            raise ValueError(f"no central directory record at byte {at}")
        _, _, flags, method, _, _, crc, csize, usize, nlen, xlen, clen, disk, _, _, offset = _unpack("<6H3L5H2L", data, at + 4)
        name = data[at + 46 : at + 46 + nlen]
        if xlen or clen or disk or SATURATED in (csize, usize, offset):
            raise ValueError(f"record {name[:60]!r} has a central extra field, a comment or zip64 sizes")
        entries.append((name, flags, method, crc, csize, usize, offset))
        at += 46 + nlen
    if at != end or len(entries) != count:
        raise ValueError(f"{len(entries)} central records where the end record says {count}")
    return entries


def _check_name(raw: bytes, folder: bool) -> str:
    name = raw.decode("ascii", errors="replace")
    parts = name.split("/")
    if not NAME.fullmatch(name) or any(p in (".", "..") for p in parts) or (folder and len(parts) < 2):
        raise ValueError(f"a record named {name[:80]!r}, not a plain relative path" + (" inside a folder" if folder else ""))
    return name


def read_zip(
    data: bytes, folder: bool, deflated: re.Pattern | None = None, limit: int = MAX_ARTIFACT_BYTES
) -> dict[str, bytes | memoryview]:
    """Every record of the archive `data` by name (stored ones as views into `data`), each checked against its CRC.

    `folder`: every name lies in one top-level folder (torch's archives); `deflated`: the names that may be
    deflated (others must be stored); `limit`: the most bytes the records may hold together, uncompressed."""
    count, cd_start, cd_end = _end_of_central_directory(data)
    records, seen, total, at, view = {}, set(), 0, 0, memoryview(data)
    for raw, flags, method, crc, csize, usize, offset in _central_directory(data, count, cd_start, cd_end):
        name = _check_name(raw, folder)
        if name.lower() in seen:  # miniz looks names up ignoring case
            raise ValueError(f"the record name {name} twice")
        seen.add(name.lower())
        if folder and name.split("/")[0] != next(iter(records), name).split("/")[0]:
            raise ValueError(f"records in more than one top-level folder ({name})")
        if flags & ~(FLAG_DESCRIPTOR | FLAG_UTF8) or method not in (STORED, DEFLATED):
            raise ValueError(f"record {name} is encrypted, patched or compressed with method {method}")
        if method == DEFLATED and not (deflated and deflated.fullmatch(name)):
            raise ValueError(f"record {name} is compressed, where edgequant stores it")
        if method == STORED and csize != usize:
            raise ValueError(f"record {name} is stored in {csize} bytes but declares {usize}")
        total += usize
        if total > limit or method == DEFLATED and usize > MAX_DEFLATED_RECORD_BYTES:
            raise ValueError(f"record {name} declares {usize} bytes: the records would hold over {limit} bytes uncompressed")
        if offset != at or data[at : at + 4] != LOCAL:
            raise ValueError(f"record {name} is not where the previous one ends (byte {at}): data before, between or overlapping")
        _, lflags, lmethod, _, _, lcrc, lcsize, lusize, nlen, xlen = _unpack("<5H3L2H", data, at + 4)
        extras = _extras(data[at + 30 + nlen : at + 30 + nlen + xlen], (ZIP64_EXTRA, TORCH_PADDING_EXTRA))
        if (data[at + 30 : at + 30 + nlen], lflags, lmethod) != (raw, flags, method):
            raise ValueError(f"record {name}'s local header and central directory disagree")
        if lusize == lcsize == SATURATED and len(extras.get(ZIP64_EXTRA, b"")) == 16:  # what numpy's force_zip64 writes
            lusize, lcsize = struct.unpack("<QQ", extras[ZIP64_EXTRA])
        elif ZIP64_EXTRA in extras:
            raise ValueError(f"record {name} has a zip64 field it does not need")
        local = (0, 0, 0) if flags & FLAG_DESCRIPTOR else (crc, csize, usize)
        if (lcrc, lcsize, lusize) != local:
            raise ValueError(f"record {name}'s local header and central directory disagree on its size or checksum")
        start = at + 30 + nlen + xlen
        at = start + csize
        if at > cd_start:
            raise ValueError(f"record {name} runs into the central directory")
        if flags & FLAG_DESCRIPTOR:
            if data[at : at + 4] != DESCRIPTOR or _unpack("<3L", data, at + 4) != (crc, csize, usize):
                raise ValueError(f"record {name}'s data descriptor is missing or disagrees with the central directory")
            at += 16
        records[name] = _content(view[start : start + csize], method, usize, crc, name)
    if at != cd_start:
        raise ValueError(f"{cd_start - at} bytes between the last record and the central directory")
    return records


def _content(stored: memoryview, method: int, size: int, crc: int, name: str) -> bytes | memoryview:
    content = stored
    if method == DEFLATED:
        inflater = zlib.decompressobj(-15)
        try:
            content = inflater.decompress(stored, size + 1)  # never more than declared, whatever the stream says
        except zlib.error as exc:
            raise ValueError(f"record {name} does not inflate ({exc})") from exc
        if len(content) != size or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
            raise ValueError(f"record {name} does not inflate to the {size} bytes it declares")
    if zlib.crc32(content) != crc:
        raise ValueError(f"record {name} fails its CRC check")
    return content
