"""The real download code against mirrors served on 127.0.0.1: good, wrong bytes, dead, failing and hanging."""

from __future__ import annotations

import base64
import gzip
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from edgequant.data.datasets import DATASETS, FILES, custom_dataset
from edgequant.data.download import DownloadError, download, mirrors_for, normalize_mirror

from .conftest import ROOT, make_env, sh, write_mirror

PRIVATE_USER, PRIVATE_PASSWORD = "alice", "pw-s3cr3t-9f2e"
PRIVATE_AUTH = "Basic " + base64.b64encode(f"{PRIVATE_USER}:{PRIVATE_PASSWORD}".encode()).decode()


@pytest.fixture
def server(tmp_path):
    """Serve /good/ (the tiny dataset), /other/ (a different dataset, same names), /short/ and /cut/ (half of
    each file, served whole or cut off mid-transfer), /hang/, /error/, /slow/, and /private/ (the tiny dataset
    behind HTTP Basic auth as PRIVATE_USER:PRIVATE_PASSWORD)."""
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
            if kind == "private" and self.headers.get("Authorization") != PRIVATE_AUTH:
                self.send_response(401, "Unauthorized")
                self.send_header("WWW-Authenticate", 'Basic realm="mirror"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            root = {"private": good, "good": good, "other": other, "slow": good, "short": good, "cut": good}.get(kind)
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
    download(tmp_path / "raw", custom_dataset(sums), [f"{url}/good/"], timeout_s=5)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(FILES)


def test_wrong_bytes_fall_through_to_next_mirror(server, tmp_path):
    url, sums, requests = server
    download(tmp_path / "raw", custom_dataset(sums), [f"{url}/other/", dead_url(), f"{url}/good/"], timeout_s=5)
    assert any(r.startswith("/other/") for r in requests) and any(r.startswith("/good/") for r in requests)
    assert not list((tmp_path / "raw").glob("*.tmp"))


def test_all_mirrors_failing_names_file_mirrors_and_reasons(server, tmp_path):
    url, sums, _ = server
    mirrors = [f"{url}/other/", f"{url}/error/", f"{url}/missing/", dead_url(), f"{url}/hang/"]
    with pytest.raises(DownloadError) as info:
        download(tmp_path / "raw", custom_dataset(sums), mirrors, timeout_s=1)
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
        download(tmp_path / "raw", custom_dataset(sums), [f"{url}/{kind}/"], timeout_s=5)
    assert ("truncated gzip file" if kind == "short" else "truncated transfer") in str(info.value)
    assert not (tmp_path / "raw").exists()
    download(tmp_path / "raw", custom_dataset(sums), [f"{url}/{kind}/", f"{url}/good/"], timeout_s=5)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(sums)


def test_trickling_mirror_hits_the_deadline(server, tmp_path):
    url, sums, _ = server
    start = time.monotonic()
    with pytest.raises(DownloadError, match="took longer than 1 s"):
        download(tmp_path / "raw", custom_dataset(sums), [f"{url}/slow/"], timeout_s=1)
    assert time.monotonic() - start < 10


def test_failed_download_keeps_earlier_good_output(server, tmp_path):
    url, sums, _ = server
    download(tmp_path / "raw", custom_dataset(sums), [f"{url}/good/"], timeout_s=5)
    before = {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()}
    with pytest.raises(DownloadError):
        download(tmp_path / "raw", custom_dataset(sums), [f"{url}/error/"], timeout_s=5)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").iterdir()} == before


def test_local_directory_and_file_url_mirrors(tmp_path, tiny_mirror):
    mirror, sums = tiny_mirror
    download(tmp_path / "a", custom_dataset(sums), [normalize_mirror(str(mirror))])
    download(tmp_path / "b", custom_dataset(sums), [mirror.as_uri()])
    assert len(list((tmp_path / "b").iterdir())) == 4


def test_local_mirror_missing_a_file(tmp_path, tiny_mirror):
    mirror, sums = tiny_mirror
    (mirror / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DownloadError, match=r"(?s)t10k-labels-idx1-ubyte.gz of custom from any of 1 mirror.*(No such file|Errno 2)"):
        download(tmp_path / "raw", custom_dataset(sums), [normalize_mirror(str(mirror))])


def test_env_mirror_goes_first_and_missing_dir_is_clear(tmp_path):
    assert mirrors_for(DATASETS["mnist"], {"MNIST_MIRROR": str(tmp_path)})[0] == tmp_path.as_uri() + "/"
    assert mirrors_for(DATASETS["mnist"], {})[0].startswith("https://")
    with pytest.raises(DownloadError, match="no such directory"):
        mirrors_for(DATASETS["mnist"], {"MNIST_MIRROR": str(tmp_path / "absent")})


def test_faithful_recompression_passes_and_another_dataset_does_not(tmp_path, tiny_mirror):
    mirror, sums = tiny_mirror
    recompressed = tmp_path / "recompressed"
    recompressed.mkdir()
    for name in FILES:  # what Debian did to Fashion-MNIST: same bytes inside, another .gz around them
        data = gzip.compress(gzip.decompress((mirror / name).read_bytes()), compresslevel=1, mtime=12345)
        assert data != (mirror / name).read_bytes()
        (recompressed / name).write_bytes(data)
    download(tmp_path / "raw", custom_dataset(sums), [normalize_mirror(str(recompressed))])
    other = tmp_path / "other"
    write_mirror(other, n_train=300)
    with pytest.raises(DownloadError, match=r"(?s)train-images-idx3-ubyte.gz of custom.*content md5 [0-9a-f]{32} != expected [0-9a-f]{32}"):
        download(tmp_path / "raw2", custom_dataset(sums), [normalize_mirror(str(other))])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_real_datasets_verify_from_local_copies(tmp_path, name):
    local = {"mnist": ROOT.parent / "shared" / "mnist", "fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}[name]
    if not local.is_dir():
        pytest.skip(f"no local copy of {name} at {local}")
    download(tmp_path / "raw", DATASETS[name], [normalize_mirror(str(local))])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(FILES)


def test_stage_cli_reports_one_clear_error(tmp_path, subprocess_env):
    env = dict(subprocess_env, MNIST_MIRROR=str(tmp_path / "absent"))
    proc = subprocess.run(
        [sys.executable, "-m", "stages.download", "--out", str(tmp_path / "raw")], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("download: $MNIST_MIRROR=") and "Traceback" not in proc.stderr
    assert not Path(tmp_path / "raw").exists()


def with_credentials(url: str, password: str = PRIVATE_PASSWORD) -> str:
    return url.replace("http://", f"http://{PRIVATE_USER}:{password}@", 1)


def test_a_mirror_url_with_credentials_authenticates_and_never_prints_the_password(server, tmp_path):
    url, sums, _ = server
    download(tmp_path / "raw", custom_dataset(sums), [with_credentials(f"{url}/private/")], timeout_s=5)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(FILES)

    wrong = "pw-wr0ng-77c1"
    mirrors = [with_credentials(f"{url}/private/", wrong), with_credentials(dead_url(), wrong), f"{url}/error/"]
    with pytest.raises(DownloadError) as info:
        download(tmp_path / "raw2", custom_dataset(sums), mirrors, timeout_s=5)
    message = str(info.value)
    assert wrong not in message and PRIVATE_USER not in message, message
    assert f"http://***@{url.removeprefix('http://')}/private/train-images-idx3-ubyte.gz: HTTP 401" in message, message
    assert "unreachable" in message and "HTTP 503" in message


@pytest.mark.parametrize("mirror", ["{url}/private/", "{dead}", "alice:{password}@mirror.invalid/mnist/"], ids=["401", "dead", "no-scheme"])
def test_the_stage_never_prints_a_password_from_mnist_mirror(server, tmp_path, subprocess_env, mirror):
    url, sums, _ = server
    password = "pw-st4ge-31ab"
    value = mirror.format(url=with_credentials(url, password), dead=with_credentials(dead_url(), password), password=password)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"download": {"dataset": "custom", "md5": sums}}))
    env = dict(subprocess_env, MNIST_MIRROR=value)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.download",
            "--out",
            str(tmp_path / "raw"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--timeout-s",
            "5",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1 and password not in output and "***@" in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://u:p@host/x", "http://***@host/x"),
        ("https://TOKEN@host:8443/x?y=1", "https://***@host:8443/x?y=1"),
        ("http://u:p@ss@host/x", "http://***@host/x"),  # a raw "@" in the password
        ("s3://AKIA:secret@bucket/p and ftp://a:b@h/", "s3://***@bucket/p and ftp://***@h/"),
        ("u:p@host/mnist", "***@host/mnist"),  # the scheme left out
        ("http://host/a@b.gz", "http://host/a@b.gz"),  # an "@" in the path is no userinfo
        ("/data/mirror@2024", "/data/mirror@2024"),
    ],
)
def test_redact_hides_every_urls_credentials(text, shown):
    from edgequant.data.urls import redact

    assert redact(text) == shown


@pytest.fixture
def download_repo(tmp_path, tiny_mirror) -> tuple[Path, dict[str, str]]:
    """A git+DVC repo running the real download stage (its definition from dvc.yaml, the validate stage's verdict
    left out of its deps, its output `persist: true`) once from the tiny mirror."""
    mirror, sums = tiny_mirror
    work = tmp_path / "repo"
    work.mkdir()
    for item in ("edgequant", "stages"):
        shutil.copytree(ROOT / item, work / item, ignore=shutil.ignore_patterns("__pycache__"))
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["download"]
    stage["deps"] = [d for d in stage["deps"] if d != "data/params.valid"]
    stage["outs"] = [{"data/raw": {"persist": True}}]  # DVC leaves it in place for the stage to replace
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"download": stage}}, sort_keys=False))
    (work / "params.yaml").write_text(yaml.safe_dump({"download": {"dataset": "custom", "md5": sums}}))
    env = dict(make_env(tmp_path), MNIST_MIRROR=str(mirror))
    env.pop("PYTHONPATH")  # the stage imports the repo's copy
    for cmd in (
        ["git", "init", "-q"],
        ["dvc", "init", "-q"],
        ["dvc", "repro", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "raw"],
    ):
        sh(cmd, work, env)
    return work, env


@pytest.mark.slow
@pytest.mark.parametrize("args", [["-f", "download"], ["-s", "-f", "download"]], ids=["repro", "repro-s"])
def test_a_failed_mirror_under_dvc_repro_keeps_data_raw_byte_identical(download_repo, tmp_path, args):
    work, env = download_repo
    before = {p.name: p.read_bytes() for p in (work / "data/raw").iterdir()}
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    proc = subprocess.run(
        ["dvc", "repro", *args], cwd=work, env=dict(env, MNIST_MIRROR=str(empty)), capture_output=True, text=True, timeout=300
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "could not get a verified train-images-idx3-ubyte.gz" in out, out
    assert {p.name: p.read_bytes() for p in (work / "data/raw").iterdir()} == before
    assert "data/raw is as it was" in out and "removed" not in out, out  # nothing to restore, and it says so
    assert not list((work / "data").glob(".raw*"))  # no temporary left beside it
    assert "download" not in sh(["dvc", "status", "download"], work, env)  # and DVC still records it as it was
