"""Atomic file and directory writes, so an interrupted stage leaves nothing half-written."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it into place, on failure delete it.

    The temporary lives in the same directory so the final `os.replace` is a rename on one
    filesystem, which POSIX makes atomic: readers see the old file or the new one, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # name the output, not the directory its temporary would have gone in
        raise OSError(exc.errno, exc.strerror, str(path)) from exc
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should be readable like any other
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise naming_output(exc, tmp, path) from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `path` whole, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        try:
            yield tmp
        except OSError as exc:
            raise naming_output(exc, tmp, path) from exc
        if path.exists():
            # Two renames rather than rmtree-then-rename: the old copy stays whole until the new one is in place.
            old = path.with_name(f".{path.name}.old.tmp")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def naming_output(exc: OSError, tmp: Path, path: Path) -> OSError:
    """`exc` naming the output instead of its hidden temporary, or naming it at all: a write that runs out of
    space raises ENOSPC with no file name, and "No space left on device" alone says nothing of what was lost."""
    name = exc.filename
    if name is None or Path(name) == tmp:
        name = path
    elif Path(name).is_relative_to(tmp):
        name = path / Path(name).relative_to(tmp)
    else:
        return exc
    return OSError(exc.errno, exc.strerror, str(name))


# Room a stage asks for before long work: its own outputs (a few MB) and DVC's lock files, which DVC rewrites
# in place after the stage (a full disk there left .dvc/tmp/rwlock empty and every dvc command failing).
MIN_FREE_BYTES = 64 << 20


def require_free_space(*outputs: str | os.PathLike, need: int = MIN_FREE_BYTES) -> None:
    """Refuse, naming the outputs, before work whose results could not be written (a benchmark measured for
    32 s and then failed on a full disk)."""
    for output in outputs:
        folder = Path(output).parent
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if free < need:
            raise OSError(errno.ENOSPC, f"{free >> 20} MiB free, {need >> 20} MiB needed before starting", str(output))


def remove_stale(path: Path) -> None:
    """Delete temporaries a killed run (SIGKILL: no cleanup runs) left beside `path`.

    DVC holds a lock per repo, so no other writer of the same output can be running. Until swept they
    are invisible: `.dvcignore` and `.gitignore` leave out `.*.tmp`, so a leftover inside a directory
    dependency (models/quantized) neither changes its hash nor shows in `git status`. A kill between
    `atomic_dir`'s two renames leaves the output missing and its earlier copy whole as `.<name>.old.tmp`:
    that copy is put back, not swept."""
    old = path.with_name(f".{path.name}.old.tmp")
    if old.is_dir() and not path.exists() and not path.is_symlink():
        os.replace(old, path)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: object) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_torch(obj: object, path: str | os.PathLike) -> None:
    """`torch.save`, atomically and byte-reproducibly.

    torch names the archive's inner folder after the file it writes; saving to a random temporary
    name would make every run's bytes (and so DVC's hash) differ. A buffer is always named "archive".
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())
