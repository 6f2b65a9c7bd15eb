"""Fetch a dataset's four IDX files from a list of mirrors, keeping only files whose content checks out."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from edgequant.data.datasets import FILES, Dataset
from edgequant.data.urls import has_schemeless_credentials, redact, request
from edgequant.files import atomic_dir
from edgequant.stage import StageError

MIRROR_ENV = "MNIST_MIRROR"  # a directory or URL tried before the dataset's own mirrors
CHUNK = 1 << 16


class DownloadError(StageError):
    """No mirror produced a file with the expected checksum."""


def mirrors_for(dataset: Dataset, env: dict[str, str] | None = None) -> list[str]:
    """$MNIST_MIRROR (a directory or URL) first, then an installed local copy, then the public mirrors."""
    env = os.environ if env is None else env
    local = env.get(MIRROR_ENV, "").strip()
    installed = [d for d in dataset.local_dirs if Path(d).is_dir()]
    return ([normalize_mirror(local)] if local else []) + [normalize_mirror(d) for d in installed] + list(dataset.mirrors)


def normalize_mirror(mirror: str) -> str:
    """Turn a directory path into a file:// URL; leave URLs alone. Always ends with '/'."""
    if "://" not in mirror:
        if has_schemeless_credentials(mirror):
            raise DownloadError(f"${MIRROR_ENV}={redact(mirror)!r}: a URL without its scheme; write it as http://… or https://…")
        path = Path(mirror).expanduser().resolve()
        if not path.is_dir():
            raise DownloadError(
                f"${MIRROR_ENV}={redact(mirror)!r}: no such directory (give a directory or a URL holding the four .gz files)"
            )
        mirror = path.as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


class GzipContent:
    """md5 of the decompressed bytes of a gzip stream fed in chunks (several members allowed)."""

    def __init__(self) -> None:
        self.md5, self.members, self.error = hashlib.md5(), 0, ""
        self._inflate, self._pending = zlib.decompressobj(16 + zlib.MAX_WBITS), False

    def update(self, chunk: bytes) -> None:
        while chunk and not self.error:
            try:
                self.md5.update(self._inflate.decompress(chunk))
            except zlib.error as exc:
                self.error = f"not a gzip file ({exc})"
                return
            self._pending = not self._inflate.eof
            if self._pending:
                return
            self.members += 1
            chunk = self._inflate.unused_data
            self._inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)

    @property
    def complete(self) -> bool:
        return not self.error and self.members > 0 and not self._pending


def fetch_one(url: str, dest: Path, content_md5: str, gz_md5: str | None, timeout_s: float) -> None:
    """Stream `url` to `dest`, hashing the bytes and their decompression as they arrive; raise
    OSError/ValueError with the reason on any failure.

    `timeout_s` bounds each socket wait and, through a deadline, the whole file, so a mirror
    that hangs or trickles bytes forever cannot stall the pipeline.
    """
    deadline = time.monotonic() + timeout_s
    raw, content, received = hashlib.md5(), GzipContent(), 0
    with urllib.request.urlopen(request(url), timeout=timeout_s) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = Path(urlparse(url).path).name
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
            # read1 returns what has arrived (≤ CHUNK); read() would block until CHUNK bytes came,
            # letting a trickling mirror slip past the deadline check for minutes.
            while chunk := response.read1(CHUNK):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"took longer than {timeout_s:g} s")
                raw.update(chunk)
                content.update(chunk)
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes (truncated transfer)")
    if gz_md5 is not None and raw.hexdigest() == gz_md5:
        return  # the upstream file itself
    if not content.complete:
        raise ValueError(content.error or f"truncated gzip file ({received} bytes; a different or corrupt file)")
    if content.md5.hexdigest() != content_md5:
        raise ValueError(f"content md5 {content.md5.hexdigest()} != expected {content_md5} (a different or corrupt file)")


def download(out_dir: str | Path, dataset: Dataset, mirrors: list[str], timeout_s: float = 60.0) -> None:
    """Fill `out_dir` with the four verified files of `dataset`, or raise DownloadError and leave it untouched.

    The files land in a temporary directory beside `out_dir`, which replaces it only once all four are verified:
    an earlier `out_dir` stays byte-identical through any failure (under `dvc repro` too, where the stage's
    output is `persist: true`, so DVC no longer removes it first)."""
    kept = Path(out_dir).is_dir()  # an earlier download, which a failure leaves byte-identical
    if not mirrors:
        raise DownloadError(f"no mirrors for dataset {dataset.name}: set ${MIRROR_ENV} to a directory or URL holding its files")
    mirrors = [normalize_mirror(m) for m in mirrors]
    with atomic_dir(out_dir) as tmp:
        for name in FILES:
            failures = []
            for mirror in mirrors:
                dest = tmp / name
                try:
                    fetch_one(mirror + name, dest, dataset.content_md5[name], dataset.gz_md5.get(name), timeout_s)
                    break
                except (OSError, ValueError, urllib.error.URLError) as exc:  # URLError/HTTPError/timeouts are OSErrors
                    dest.unlink(missing_ok=True)  # a file that failed verification is never kept
                    failures.append(redact(f"  {mirror}{name}: {describe(exc)}"))
            else:
                raise DownloadError(
                    f"could not get a verified {name} of {dataset.name} from any of {len(mirrors)} mirror(s):\n"
                    + "\n".join(failures)
                    + f"\nSet ${MIRROR_ENV} to a directory or URL holding the original {dataset.name} files."
                    + (f" {out_dir} is as it was." if kept else "")
                )


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed fetch."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"
