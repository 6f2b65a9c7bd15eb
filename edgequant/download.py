"""Fetch the four MNIST files from a list of mirrors, keeping only bytes whose md5 matches."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from tqdm import tqdm

from edgequant.io import atomic_dir

# The mirrors and checksums torchvision uses, in its order.
PUBLIC_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MIRROR_ENV = "MNIST_MIRROR"
CHECKSUMS_ENV = "MNIST_CHECKSUMS"  # JSON {file name: md5}: opt in to another dataset in MNIST's format
CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """No mirror produced a file with the expected checksum."""


def mirrors_from_env(env: dict[str, str] | None = None) -> list[str]:
    """The local mirror from $MNIST_MIRROR (a directory or URL) first, then the public ones."""
    env = os.environ if env is None else env
    local = env.get(MIRROR_ENV, "").strip()
    return ([normalize_mirror(local)] if local else []) + list(PUBLIC_MIRRORS)


def checksums_from_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """MNIST's md5s, or those of a drop-in dataset (e.g. Fashion-MNIST, or test data) from $MNIST_CHECKSUMS."""
    env = os.environ if env is None else env
    path = env.get(CHECKSUMS_ENV, "").strip()
    if not path:
        return dict(MD5)
    try:
        sums = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DownloadError(f"${CHECKSUMS_ENV}={path!r}: cannot read it as JSON ({exc})") from exc
    if not isinstance(sums, dict) or set(sums) != set(MD5):
        raise DownloadError(f"${CHECKSUMS_ENV}={path!r}: expected an md5 for exactly these files: {', '.join(MD5)}")
    return sums


def normalize_mirror(mirror: str) -> str:
    """Turn a directory path into a file:// URL; leave URLs alone. Always ends with '/'."""
    if "://" not in mirror:
        path = Path(mirror).expanduser().resolve()
        if not path.is_dir():
            raise DownloadError(f"${MIRROR_ENV}={mirror!r}: no such directory (give a directory or a URL holding the four MNIST .gz files)")
        mirror = path.as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


def fetch_one(url: str, dest: Path, md5: str, timeout_s: float) -> None:
    """Stream `url` to `dest`, hashing as it goes; raise OSError/ValueError with the reason on any failure.

    `timeout_s` bounds each socket wait and, through a deadline, the whole file, so a mirror
    that hangs or trickles bytes forever cannot stall the pipeline.
    """
    deadline = time.monotonic() + timeout_s
    digest, received = hashlib.md5(), 0
    with urllib.request.urlopen(url, timeout=timeout_s) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        name = Path(urlparse(url).path).name
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
            # read1 returns what has arrived (≤ CHUNK); read() would block until CHUNK bytes came,
            # letting a trickling mirror slip past the deadline check for minutes.
            while chunk := response.read1(CHUNK):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"took longer than {timeout_s:g} s")
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise ConnectionError(f"connection closed after {received} of {total} bytes (truncated transfer)")
    if digest.hexdigest() != md5:
        raise ValueError(f"md5 {digest.hexdigest()} != expected {md5} (different or corrupt file)")


def download_mnist(out_dir: str | Path, mirrors: list[str], timeout_s: float = 60.0, checksums: dict[str, str] | None = None) -> None:
    """Fill `out_dir` with the four verified files, or raise DownloadError and leave it untouched."""
    if not mirrors:
        raise DownloadError("no mirrors given")
    mirrors = [normalize_mirror(m) for m in mirrors]
    with atomic_dir(out_dir) as tmp:
        for name, md5 in (checksums or MD5).items():
            failures = []
            for mirror in mirrors:
                dest = tmp / name
                try:
                    fetch_one(mirror + name, dest, md5, timeout_s)
                    break
                except (OSError, ValueError, urllib.error.URLError) as exc:  # URLError/HTTPError/timeouts are OSErrors
                    dest.unlink(missing_ok=True)  # a file that failed verification is never kept
                    failures.append(f"  {mirror}{name}: {describe(exc)}")
            else:
                raise DownloadError(
                    f"could not get a verified {name} from any of {len(mirrors)} mirror(s):\n"
                    + "\n".join(failures)
                    + f"\nSet ${MIRROR_ENV} to a directory or URL holding the original MNIST files."
                )


def describe(exc: BaseException) -> str:
    """A one-line reason for a failed fetch."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({exc.reason})"
    return f"{type(exc).__name__}: {exc}"
