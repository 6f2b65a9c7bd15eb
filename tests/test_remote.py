"""A damaged object in a directory remote: the committed default remote refuses it at `dvc pull`, and a
remote added with `dvc remote add`'s defaults is named, its damaged copy refused where edgequant loads it."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from edgequant.artifacts.recorded import check_loaded, read_checked
from edgequant.files import save_torch
from edgequant.model.zoo import Net, load_fp32
from edgequant.team.remote import remotes, unverified

from .conftest import ROOT, make_env, sh

OUTPUTS = ("models/fp32.pt", "models/quantized/fp32/model.pt")
PIPELINE = {
    "stages": {
        "train": {"cmd": "mkdir -p models && cp weights.pt models/fp32.pt", "deps": ["weights.pt"], "outs": ["models/fp32.pt"]},
        "quantize": {
            "cmd": "mkdir -p models/quantized/fp32 && cp models/fp32.pt models/quantized/fp32/model.pt && echo {} > models/m.json"
            " && mv models/m.json models/quantized/fp32/meta.json",
            "deps": ["models/fp32.pt"],
            "outs": ["models/quantized/fp32"],
        },
    }
}


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[int, str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def origin(tmp_path) -> tuple[Path, dict[str, str]]:
    """A repo with the committed `.dvc/config`, whose two stages' outputs (a file, a directory) are pushed to
    the default remote it names: the directory `../edgequant-dvc-remote` beside the checkout."""
    env = make_env(tmp_path)
    work = tmp_path / "edgequant"
    work.mkdir()
    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh(["dvc", "init", "-q"], work, env)
    shutil.copy(ROOT / ".dvc" / "config", work / ".dvc" / "config")
    torch.manual_seed(0)
    save_torch(Net().state_dict(), work / "weights.pt")
    (work / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    sh(["dvc", "repro", "-q"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "weights"], work, env)
    sh(["dvc", "push", "-q"], work, env)
    return work, env


def remote_object(work: Path, output: str) -> Path:
    """The remote's stored object of `output` (a file of a directory output included)."""
    import json

    lock = yaml.safe_load((work / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o["md5"] for stage in lock.values() for o in stage["outs"]}
    store = work.parent / "edgequant-dvc-remote" / "files" / "md5"
    md5 = outs.get(output)
    if md5 is None:  # inside a directory output: its listing names the file's md5
        folder = str(Path(output).parent)
        listing = json.loads((store / outs[folder][:2] / outs[folder][2:]).read_text())
        md5 = next(e["md5"] for e in listing if e["relpath"] == Path(output).name)
    return store / md5[:2] / md5[2:]


def flip_one_byte(path: Path) -> None:
    """Flip a byte in the middle of the file (inside the weights), keeping its read-only mode."""
    mode = path.stat().st_mode
    path.chmod(mode | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    path.chmod(mode)


def clone(origin: Path, env: dict, name: str) -> Path:
    work = origin.parent / name  # beside the origin, so the committed relative remote URL names the same folder
    sh(["git", "clone", "-q", str(origin), str(work)], origin.parent, env)
    return work


def test_the_committed_config_verifies_every_remote():
    found = remotes(ROOT, ("repo",))
    assert found and unverified(found) == [], unverified(found)


@pytest.mark.slow
def test_a_remote_as_dvc_remote_add_leaves_it_is_named_with_its_fix(tmp_path):
    env = make_env(tmp_path)
    sh(["git", "init", "-q"], tmp_path, env)
    sh(["dvc", "init", "-q"], tmp_path, env)
    sh(["dvc", "remote", "add", "-d", "team", "https://ci:t0ken-4a1b@dvc.example.invalid/store"], tmp_path, env)
    code, out = run([sys.executable, "-m", "edgequant.team.remote"], tmp_path, env)
    assert code == 1 and "`dvc remote modify team verify true`" in out and "(the default)" in out, out
    assert "t0ken-4a1b" not in out and "https://***@dvc.example.invalid/store" in out, out
    sh(["dvc", "remote", "modify", "team", "verify", "true"], tmp_path, env)
    code, out = run([sys.executable, "-m", "edgequant.team.remote"], tmp_path, env)
    assert code == 0, out


@pytest.mark.slow
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_damaged_object_in_the_committed_default_remote_fails_the_pull(origin, output):
    work, env = origin
    flip_one_byte(remote_object(work, output))
    bob = clone(work, env, "bob")
    code, out = run(["dvc", "pull"], bob, env)
    assert code != 0 and "Checkout failed" in out, out  # dvc 3.67.1 with verify: the damaged object is dropped, the pull fails
    assert not (bob / output).exists()
    assert not [p for p in (bob / ".dvc/cache").rglob("*") if p.is_file() and p.name == remote_object(work, output).name]


@pytest.mark.slow
@pytest.mark.parametrize("output", OUTPUTS)
def test_a_damaged_pull_through_an_unverified_remote_is_refused_where_it_is_loaded(origin, output):
    work, env = origin
    damaged = remote_object(work, output)
    flip_one_byte(damaged)
    bob = clone(work, env, "bob")
    sh(["dvc", "remote", "add", "-d", "team", str(damaged.parents[3])], bob, env)  # the same store, as `dvc remote add` leaves it

    # What DVC does: the damaged copy lands and `dvc status` is clean; edgequant's loader refuses it.
    sh(["dvc", "pull"], bob, env)
    assert "Data and pipelines are up to date" in sh(["dvc", "status"], bob, env)
    with pytest.raises(ValueError, match="DVC's cached copy"):
        load_fp32(str(bob / output), "cnn")

    # What edgequant does: names the remote and the command, refuses the copy where it is loaded and in a check of them all.
    code, out = run([sys.executable, "-m", "edgequant.team.remote"], bob, env)
    assert code == 1 and "DVC remote 'team' (the default)" in out and "`dvc remote modify team verify true`" in out, out
    with pytest.raises(ValueError, match=rf"{output}: dvc.lock records md5 [0-9a-f]{{32}}, and DVC's cached copy .* hashes to"):
        read_checked(bob / output)
    code, out = run([sys.executable, "-m", "edgequant.artifacts.recorded"], bob, env)
    assert code == 1 and f"recorded: {output}: dvc.lock records md5" in out, out

    # The fix it names: both copies go, the remote verifies, and the pull then refuses the damaged object.
    cached = next(p for p in (bob / ".dvc/cache/files").rglob("*") if p.is_file() and p.name == damaged.name)
    assert f"Delete that cache file and {bob / output}, then `dvc pull` with `verify = true`" in out, out
    cached.unlink()
    (bob / output).unlink()
    sh(["dvc", "remote", "modify", "team", "verify", "true"], bob, env)
    code, out = run(["dvc", "pull"], bob, env)
    assert code != 0 and "Checkout failed" in out, out

    # Repairing the remote: `dvc push` skips an object the remote already holds, and takes a directory's listing there as
    # proof that every file it names is there too; so the damaged object goes, with each listing naming it, then a push.
    assert "Everything is up to date" in sh(["dvc", "push"], work, env)
    store = damaged.parents[1]
    listings = [p for p in store.rglob("*.dir") if damaged.parent.name + damaged.name in p.read_text()]
    assert listings  # fp32's folder holds the same bytes as models/fp32.pt, as in the real pipeline
    for stale in (damaged, *listings):
        stale.unlink()
    sh(["dvc", "push"], work, env)
    sh(["dvc", "pull"], bob, env)
    assert run([sys.executable, "-m", "edgequant.artifacts.recorded"], bob, env)[0] == 0
    assert (bob / output).read_bytes() == (work / output).read_bytes()


@pytest.mark.slow
def test_a_file_changed_since_its_record_is_not_called_damaged(origin):
    work, env = origin
    torch.manual_seed(1)
    save_torch(Net().state_dict(), work / "models/fp32.pt")  # a stage run by hand: the cache still holds the recorded copy
    read_checked(work / "models/fp32.pt")
    check_loaded(work / "models/quantized/fp32/model.pt")
    assert run([sys.executable, "-m", "edgequant.artifacts.recorded"], work, env)[0] == 0


def fake_repo(root: Path, files: dict[str, bytes]) -> dict[str, str]:
    """A repo as DVC leaves it after a pull, written by hand: dvc.lock naming `files` (one a file output, the rest
    inside the directory output `models/quantized/m`), each object and the directory's listing in .dvc/cache."""
    import hashlib
    import json

    def store(data: bytes, suffix: str = "") -> str:
        md5 = hashlib.md5(data).hexdigest() + suffix
        obj = root / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
        obj.parent.mkdir(parents=True, exist_ok=True)
        obj.write_bytes(data)
        return md5

    sums = {}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        sums[rel] = store(data)
    inside = sorted(rel for rel in files if rel.startswith("models/quantized/m/"))
    listing = json.dumps([{"md5": sums[r], "relpath": r.removeprefix("models/quantized/m/")} for r in inside]).encode()
    outs = [{"path": "models/fp32.pt", "md5": sums["models/fp32.pt"]}, {"path": "models/quantized/m", "md5": store(listing, ".dir")}]
    (root / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": {"outs": outs}}}))
    return sums


@pytest.mark.parametrize("target", ["models/fp32.pt", "models/quantized/m/model.onnx", "listing"])
def test_a_damaged_cached_copy_is_refused_and_a_changed_file_is_not(tmp_path, target):
    sums = fake_repo(tmp_path, {"models/fp32.pt": b"weights" * 1000, "models/quantized/m/model.onnx": b"onnx" * 1000})
    files = ["models/fp32.pt", "models/quantized/m/model.onnx"]
    for rel in files:  # as checked out: every copy intact
        check_loaded(tmp_path / rel, (tmp_path / rel).read_bytes())
    changed = target if target != "listing" else files[1]
    (tmp_path / changed).write_bytes(b"edited by hand")  # the cache still holds the recorded copy: not damage
    check_loaded(tmp_path / changed)

    if target == "listing":
        listing = next((tmp_path / ".dvc/cache").rglob("*.dir"))
        flip_one_byte(listing)
        with pytest.raises(ValueError, match=r"the listing of models/quantized/m in DVC's cache .* is damaged"):
            check_loaded(tmp_path / files[1])
        return
    cached = tmp_path / ".dvc/cache/files/md5" / sums[target][:2] / sums[target][2:]
    flip_one_byte(cached)
    (tmp_path / target).write_bytes(cached.read_bytes())  # what a checkout of the damaged object leaves
    with pytest.raises(ValueError, match=rf"^{tmp_path / target}: dvc.lock records md5 {sums[target]}, and DVC's cached copy"):
        read_checked(tmp_path / target)
