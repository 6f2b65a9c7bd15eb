"""Which DVC remotes re-hash what `dvc pull` downloads, and how to make the others do so.

DVC stores an object under the md5 of its content and, by default, trusts the remote's copy: a damaged
object (one flipped byte in the store, a faulty disk under it) is fetched into the cache under its old name,
checked out, and reported clean by `dvc status` from then on. `verify = true` on a remote makes dvc 3.67.1
hash each object as it arrives; a damaged one is dropped from the cache and `dvc pull` fails (exit 1,
"Checkout failed ... Is your cache up to date?") with nothing written in the workspace. `dvc remote add`
leaves `verify` out (false) for a directory, S3, GCS, Azure, SSH or HTTP remote, so every remote the team
adds needs it set: `python -m edgequant.team.remote` names those that lack it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from edgequant.data.urls import redact

# `dvc remote add` defaults `verify` to true only for these (dvc/config_schema.py); every other type trusts the remote.
VERIFIED_BY_DEFAULT = ("oss://", "gdrive://")


@dataclasses.dataclass(frozen=True)
class Remote:
    name: str
    url: str
    verify: bool
    default: bool


def find_root(start: Path | None = None) -> Path:
    """The DVC repository holding `start` (default: the working directory)."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise ValueError(f"{start}: not inside a DVC repository (no .dvc folder above it)")


def remotes(root: Path, levels: tuple[str, ...] | None = None) -> list[Remote]:
    """The remotes as DVC sees them in `root`: every config level merged (system, global, the committed
    `.dvc/config`, the git-ignored `.dvc/config.local`), or only `levels` (e.g. ("repo",): what git holds)."""
    from dvc.config import Config

    config = Config(dvc_dir=str(root / ".dvc"), validate=False)
    merged: dict = {}
    for level in levels or Config.LEVELS:
        layer = config.load_one(level)
        for section in ("core", "remote"):
            for key, value in layer.get(section, {}).items():
                merged.setdefault(section, {})
                if section == "remote":
                    merged[section].setdefault(key, {}).update(value)
                else:
                    merged[section][key] = value
    default = merged.get("core", {}).get("remote")
    found = []
    for name, settings in sorted(merged.get("remote", {}).items()):
        url = str(settings.get("url", ""))
        verify = str(settings.get("verify", url.startswith(VERIFIED_BY_DEFAULT))).strip().lower() in ("true", "1", "yes")
        found.append(Remote(name, url, verify, name == default))
    return found


def unverified(found: list[Remote]) -> list[str]:
    """One line per remote that would check out a damaged object unnoticed: what it is and the command that fixes it."""
    return [
        f"DVC remote '{r.name}'{' (the default)' if r.default else ''} at {redact(r.url)} does not re-hash what `dvc pull` "
        f"downloads, so a damaged object would be checked out as if intact: `dvc remote modify {r.name} verify true`"
        for r in found
        if not r.verify
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--committed", action="store_true", help="check only .dvc/config, what git shares with the team")
    args = parser.parse_args(argv)
    try:
        root = find_root()
    except ValueError as exc:
        print(f"remote: {exc}", file=sys.stderr)
        return 1
    found = remotes(root, ("repo",) if args.committed else None)
    problems = unverified(found)
    for line in problems:
        print(f"remote: {line}", file=sys.stderr)
    if not problems:
        print(f"remote: {len(found)} DVC remote(s), each re-hashing what `dvc pull` downloads")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
