"""The real download code against mirrors served on 127.0.0.1: good, wrong bytes, dead, failing and hanging."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edgequant.download import MD5, DownloadError, checksums_from_env, download_mnist, mirrors_from_env, normalize_mirror

from .conftest import ROOT, write_mirror


@pytest.fixture
def server(tmp_path):
    """Serve /good/ (the tiny dataset), /other/ (a different dataset, same names), /short/ and /cut/ (half of
    each file, served whole or cut off mid-transfer), /hang/, /error/ and /slow/."""
    good, other = tmp_path / "good", tmp_path / "other"
    sums = write_mirror(good)
    write_mirror(other, n_train=300)  # right names, different bytes: checksum must catch it
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            requests.append(self.path)
            kind, _, name = self.path.strip("/").partition("/")
            if kind == "hang":
                time.sleep(3)
                return
            if kind == "error":
                self.send_error(503, "Service Unavailable")
                return
            root = {"good": good, "other": other, "slow": good, "short": good, "cut": good}.get(kind)
            if root is None or not (root / name).is_file():
                self.send_error(404, "Not Found")
                return
            data = (root / name).read_bytes()
            length = len(data)
            if kind in ("short", "cut"):  # short: a truncated file on the mirror; cut: the connection drops midway
                data = data[: len(data) // 2]
                length = len(data) if kind == "short" else length
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if kind == "slow":  # trickles: every read succeeds, the whole never arrives in time
                for i in range(0, len(data), 64):
                    self.wfile.write(data[i : i + 64])
                    self.wfile.flush()
                    time.sleep(0.05)
            else:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", sums, requests
    httpd.shutdown()
    httpd.server_close()


def dead_url() -> str:
    """A loopback port with nothing listening: connection refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_good_mirror_downloads_and_verifies(server, tmp_path):
    url, sums, _ = server
    download_mnist(tmp_path / "raw", [f"{url}/good/"], timeout_s=5, checksums=sums)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(MD5)


def test_wrong_bytes_fall_through_to_next_mirror(server, tmp_path):
    url, sums, requests = server
    download_mnist(tmp_path / "raw", [f"{url}/other/", dead_url(), f"{url}/good/"], timeout_s=5, checksums=sums)
    assert any(r.startswith("/other/") for r in requests) and any(r.startswith("/good/") for r in requests)
    assert not list((tmp_path / "raw").glob("*.tmp"))


def test_all_mirrors_failing_names_file_mirrors_and_reasons(server, tmp_path):
    url, sums, _ = server
    mirrors = [f"{url}/other/", f"{url}/error/", f"{url}/missing/", dead_url(), f"{url}/hang/"]
    with pytest.raises(DownloadError) as info:
        download_mnist(tmp_path / "raw", mirrors, timeout_s=1, checksums=sums)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert "md5" in message and "HTTP 503" in message and "HTTP 404" in message and "unreachable" in message
    assert "timed out" in message.lower()
    # Nothing half-written: no output directory, no stray temporaries.
    assert not (tmp_path / "raw").exists() and not list(tmp_path.glob(".raw*"))


@pytest.mark.parametrize("kind", ["short", "cut"])
def test_truncated_file_is_refused_and_next_mirror_used(server, tmp_path, kind):
    url, sums, requests = server
    with pytest.raises(DownloadError, match="train-images-idx3-ubyte.gz") as info:
        download_mnist(tmp_path / "raw", [f"{url}/{kind}/"], timeout_s=5, checksums=sums)
    assert ("md5" if kind == "short" else "truncated transfer") in str(info.value)
    assert not (tmp_path / "raw").exists()
    download_mnist(tmp_path / "raw", [f"{url}/{kind}/", f"{url}/good/"], timeout_s=5, checksums=sums)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(sums)


def test_trickling_mirror_hits_the_deadline(server, tmp_path):
    url, sums, _ = server
    start = time.monotonic()
    with pytest.raises(DownloadError, match="took longer than 1 s"):
        download_mnist(tmp_path / "raw", [f"{url}/slow/"], timeout_s=1, checksums=sums)
    assert time.monotonic() - start < 10


def test_failed_download_keeps_earlier_good_output(server, tmp_path):
    url, sums, _ = server
    download_mnist(tmp_path / "raw", [f"{url}/good/"], timeout_s=5, checksums=sums)
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with pytest.raises(DownloadError):
        download_mnist(tmp_path / "raw", [f"{url}/error/"], timeout_s=5, checksums=sums)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_local_directory_and_file_url_mirrors(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    sums = json.loads(checksums.read_text())
    download_mnist(tmp_path / "a", [normalize_mirror(str(mirror))], checksums=sums)
    download_mnist(tmp_path / "b", [mirror.as_uri()], checksums=sums)
    assert len(list((tmp_path / "b").iterdir())) == 4


def test_local_mirror_missing_a_file(tmp_path, tiny_mirror):
    mirror, checksums = tiny_mirror
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match=r"(?s)t10k-labels-idx1-ubyte.gz from any of 1 mirror.*(No such file|Errno 2)"):
        download_mnist(tmp_path / "raw", [normalize_mirror(str(mirror))], checksums=json.loads(checksums.read_text()))


def test_env_mirror_goes_first_and_missing_dir_is_clear(tmp_path):
    assert mirrors_from_env({"MNIST_MIRROR": str(tmp_path)})[0] == tmp_path.as_uri() + "/"
    assert mirrors_from_env({})[0].startswith("https://")
    with pytest.raises(DownloadError, match="no such directory"):
        mirrors_from_env({"MNIST_MIRROR": str(tmp_path / "absent")})


def test_checksum_file_must_name_the_four_files(tmp_path):
    bad = tmp_path / "sums.json"
    bad.write_text(json.dumps({"train-images-idx3-ubyte.gz": "0" * 32}))
    with pytest.raises(DownloadError, match="exactly these files"):
        checksums_from_env({"MNIST_CHECKSUMS": str(bad)})


def test_real_mnist_checksums_when_shared_copy_is_present(tmp_path):
    shared = ROOT.parent / "shared" / "mnist"
    if not shared.is_dir():
        pytest.skip("../shared/mnist not beside the checkout")
    download_mnist(tmp_path / "raw", [normalize_mirror(str(shared))])


def test_stage_cli_reports_one_clear_error(tmp_path, subprocess_env):
    env = dict(subprocess_env, MNIST_MIRROR=str(tmp_path / "absent"))
    proc = subprocess.run(
        [sys.executable, "-m", "stages.download", "--out", str(tmp_path / "raw")], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("download: $MNIST_MIRROR=") and "Traceback" not in proc.stderr
    assert not Path(tmp_path / "raw").exists()
