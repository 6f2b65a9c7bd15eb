"""DVC's lock file `.dvc/tmp/rwlock` after a full disk: find it cut short, say the fix in one line, repair it.

Each time a stage takes or releases its locks, dvc 3.67.1 rewrites `.dvc/tmp/rwlock` in place: it truncates
the file, then writes the JSON. When the disk is full at that moment the file is left cut short (empty, or
cut at a page: 4096 bytes on a tmpfs, where a stage with many dependencies needs a second page), and every
later dvc command that takes a lock (`dvc status`, `dvc repro`, `dvc exp run`) fails with "Unable to read
RWLock-file '.dvc/tmp/rwlock'. JSON structure is corrupted" until the file is removed. The file records only
which running dvc process holds which path (DVC drops the entries of processes that died), so once no dvc
process runs in the repository it holds nothing worth keeping, and removing it is the repair.

`python -m edgequant.team.dvclock` names the problem and exits 1; `--repair` removes the file when no dvc process
runs in the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

RWLOCK = Path(".dvc") / "tmp" / "rwlock"
DVC_MESSAGE = "Unable to read RWLock-file"  # dvc 3.67.1's words for an unreadable rwlock (RWLockFileCorruptedError)


def find_root(start: Path | None = None) -> Path | None:
    start = Path(os.path.abspath(start or Path.cwd()))
    return next((folder for folder in (start, *start.parents) if (folder / ".dvc").is_dir()), None)


def damage(root: Path) -> str | None:
    """What is wrong with `root`'s rwlock, or None when it is absent or reads as DVC's format."""
    path = root / RWLOCK
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return f"holds bytes that are not text ({path.stat().st_size} bytes)"
    if not text.strip():
        return f"is empty ({len(text)} bytes)"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"is cut short or damaged at {len(text.encode())} bytes ({exc})"
    if not isinstance(data, dict) or not set(data) <= {"read", "write"} or not all(isinstance(v, dict) for v in data.values()):
        return "is not in DVC's format (a JSON object of read and write locks)"
    return None


def running_dvc(root: Path) -> list[int]:
    """Process ids of dvc commands whose working directory is in `root` (other than this process)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline, cwd = proc.info.get("cmdline") or [], proc.info.get("cwd")
        if proc.info["pid"] == os.getpid() or not cmdline or not cwd:
            continue
        program = [os.path.basename(arg) for arg in cmdline[:3]]
        is_dvc = program[0] == "dvc" or (program[0].startswith("python") and ("dvc" in program[1:2] or cmdline[1:3] == ["-m", "dvc"]))
        if is_dvc and (Path(cwd) == root or root in Path(cwd).parents):
            found.append(proc.info["pid"])
    return found


def advice(root: Path) -> str | None:
    """One line naming the damaged rwlock and the fix, or None when it is fine."""
    problem = damage(root)
    if problem is None:
        return None
    return (
        f"{RWLOCK} {problem}, left so by DVC on a full disk: every dvc command fails reading it until it is removed; "
        "free disk space, then `python -m edgequant.team.dvclock --repair` (it holds only the locks of running dvc commands)"
    )


def explain(output: str, root: Path | None = None) -> str:
    """For a failed dvc command's `output`: the one-line fix when the rwlock is why it failed, else ""."""
    root = root or find_root()
    if DVC_MESSAGE not in output or root is None:
        return ""
    return advice(root) or ""


def repair(root: Path) -> str:
    """Remove a damaged rwlock when no dvc process runs in `root`; say what was done. ValueError when it cannot be."""
    problem = damage(root)
    if problem is None:
        return f"{RWLOCK} is fine"
    pids = running_dvc(root)
    if pids:
        raise ValueError(f"{RWLOCK} {problem}, but dvc runs in this repository (pid {', '.join(map(str, pids))}): let it end, then repair")
    (root / RWLOCK).unlink()
    return f"removed {RWLOCK}, which {problem} (it held only the locks of dvc commands, and none runs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repair", action="store_true", help="remove a damaged rwlock when no dvc command runs in the repository")
    args = parser.parse_args(argv)
    root = find_root()
    if root is None:
        return 0  # not a DVC repository: nothing of DVC's to check
    if not args.repair:
        line = advice(root)
        if line:
            print(f"dvclock: {line}", file=sys.stderr)
        return 1 if line else 0
    try:
        done = repair(root)
    except ValueError as exc:
        print(f"dvclock: {exc}", file=sys.stderr)
        return 1
    if not done.endswith("is fine"):
        print(f"dvclock: {done}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
