"""Pipeline outputs against what dvc.lock recorded: a damaged copy is refused where it is loaded.

DVC stores each output in its cache under the md5 of its content, and trusts that name afterwards: an
object damaged in the remote and pulled without `verify = true` (edgequant.team.remote) sits in the cache
under its old name, is checked out, and `dvc status` stays clean, because DVC's state database
remembers the hash it expected rather than the one the bytes have. A loader that hashes the bytes it
reads tells the two apart: a file that differs from its dvc.lock record *and* whose cached object no
longer hashes to its own name is damaged (no edit changes a read-only cache object), and is refused. A
file that differs while its cached object is intact was changed since the record (a stage run by hand),
which DVC itself reports, and passes. Loading costs one md5 of bytes already in memory (~0.2 s per
100 MB here); the cached object is hashed only when the file differs.

`python -m edgequant.artifacts.recorded` checks every recorded output at once (after a `dvc pull`, in CI).
"""

from __future__ import annotations

import configparser
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import yaml

CHUNK = 1 << 20
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml reads the two lock files in ~0.1 s, not ~1 s
VERIFY = "with `verify = true` on the remote (`python -m edgequant.team.remote` names remotes without it)"


class DamagedListing(ValueError):
    """The cached listing of a directory output no longer hashes to its own name."""


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def absolute(path: Path) -> Path:
    """`path` made absolute without following links: with cache type symlink an output links into the cache."""
    return Path(os.path.normpath(os.path.abspath(path)))


def find_root(start: Path) -> Path | None:
    """The DVC repository holding `start`, or None."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return None


def lock_files(root: Path) -> list[Path]:
    """The pipelines' lock files: the reference's and each workload's (workloads/<name>/dvc.lock)."""
    return [lock for lock in (root / "dvc.lock", *sorted((root / "workloads").glob("*/dvc.lock"))) if lock.is_file()]


def cache_dir(root: Path) -> Path:
    """DVC's cache: `cache.dir` from the repo's config (an experiment's temporary copy points at its parent's), else .dvc/cache."""
    found = root / ".dvc" / "cache"
    for name in ("config", "config.local"):
        parser = configparser.ConfigParser()
        try:
            parser.read(root / ".dvc" / name)
        except configparser.Error:
            continue
        if parser.has_option("cache", "dir"):
            found = (root / ".dvc" / parser.get("cache", "dir")).resolve()
    return found


def object_path(root: Path, md5: str) -> Path:
    return cache_dir(root) / "files" / "md5" / md5[:2] / md5[2:]


@functools.lru_cache(maxsize=8)
def _records(lock: Path, mtime_ns: int) -> dict[Path, str]:
    """{absolute output path: md5} of one lock file; paths are relative to each stage's wdir in the dvc.yaml beside it."""
    stages = (yaml.load(lock.read_text(), Loader=LOADER) or {}).get("stages", {})
    pipeline = lock.with_name("dvc.yaml")
    definitions = (yaml.load(pipeline.read_text(), Loader=LOADER) or {}).get("stages", {}) if pipeline.is_file() else {}
    records = {}
    for name, stage in stages.items():
        wdir = (definitions.get(name.split("@")[0]) or {}).get("wdir", ".")
        for out in stage.get("outs", []):
            if out.get("md5"):
                records[absolute(lock.parent / wdir / out["path"])] = out["md5"]
    return records


def records(root: Path) -> dict[Path, str]:
    merged = {}
    for lock in lock_files(root):
        merged.update(_records(lock, lock.stat().st_mtime_ns))
    return merged


def recorded_md5(path: Path, root: Path) -> str | None:
    """The md5 dvc.lock records for `path`: its own, or its entry in the listing of the directory output holding it."""
    path = absolute(path)
    found = records(root)
    if path in found:
        return found[path]
    for folder in path.parents:
        md5 = found.get(folder)
        if md5 is None:
            continue
        try:
            listing = object_path(root, md5).read_bytes()
        except OSError:
            return None  # no listing in the cache (never pulled, or garbage-collected): nothing to compare with
        if hashlib.md5(listing).hexdigest() != md5.removesuffix(".dir"):
            raise DamagedListing(f"the listing of {folder.relative_to(root)} in DVC's cache ({object_path(root, md5)}) is damaged")
        try:
            entries = json.loads(listing)
        except ValueError:
            return None
        relpath = path.relative_to(folder).as_posix()
        return next((e.get("md5") for e in entries if isinstance(e, dict) and e.get("relpath") == relpath), None)
    return None


def damage(path: Path, data: bytes | None = None) -> str | None:
    """Why `path` (whose bytes are `data`, if already read) is a damaged copy of a recorded output, or None."""
    path = absolute(Path(path))
    root = find_root(path.parent)
    if root is None:
        return None
    try:
        expected = recorded_md5(path, root)
    except DamagedListing as exc:
        return f"{exc}. Delete it, then `dvc pull --force` {VERIFY}"
    if expected is None:
        return None
    if data is None and not path.is_file():
        return None  # nothing loaded: the loader's own error names a missing file
    actual = hashlib.md5(data).hexdigest() if data is not None else md5_of(path)
    if actual == expected:
        return None
    cached = object_path(root, expected)
    if not cached.is_file():
        return None  # nothing to tell a damaged copy from a changed one
    cached_md5 = actual if cached.samefile(path) else md5_of(cached)  # a link (cache type hardlink/symlink) is the object
    if cached_md5 == expected:
        return None  # the cache is intact: the file was changed since dvc.lock recorded it, which `dvc status` shows
    # Both copies go: DVC's state database still vouches for the workspace copy, so a pull would keep it.
    return (
        f"dvc.lock records md5 {expected}, and DVC's cached copy {cached} hashes to {cached_md5}: damaged in the remote "
        f"or on this disk. Delete that cache file and {path}, then `dvc pull` {VERIFY}"
    )


def check_loaded(path: str | Path, data: bytes | None = None) -> None:
    """Refuse a damaged copy of a recorded output in one line naming the file, the two hashes and the fix."""
    problem = damage(Path(path), data)
    if problem:
        raise ValueError(f"{path}: {problem}")


def read_checked(path: str | Path) -> bytes:
    """The bytes of `path`, refused (ValueError) when they are a damaged copy of a recorded output."""
    data = Path(path).read_bytes()
    check_loaded(path, data)
    return data


def damaged_outputs(root: Path) -> list[str]:
    """Every recorded output file (each file of a directory output too) that is damaged, one line each."""
    problems = []
    for out in sorted(records(root)):
        files = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".tmp")) if out.is_dir() else [out]
        for file in files:
            if file.is_file() and (problem := damage(file)):
                problems.append(f"{file.relative_to(root)}: {problem}")
    return problems


def main(argv: list[str] | None = None) -> int:
    root = find_root(absolute(Path.cwd()))
    if root is None:
        print("recorded: not inside a DVC repository (no .dvc folder above the working directory)", file=sys.stderr)
        return 1
    problems = damaged_outputs(root)
    for line in problems:
        print(f"recorded: {line}", file=sys.stderr)
    if not problems:
        print(f"recorded: every output in {', '.join(str(lock.relative_to(root)) for lock in lock_files(root))} matches its cached copy")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
