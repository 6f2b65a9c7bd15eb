"""DVC's `.dvc/tmp/rwlock` cut short by a full disk under `dvc repro` (a real tmpfs), found and repaired."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap

import pytest

from edgequant.team import dvclock

from .conftest import make_env

TMPFS_SIZE = "1m"
DEPS = 40  # b's read locks: 40 paths of ~120 bytes need a second 4096-byte page of rwlock, which a full disk refuses

SCENARIO = r"""
set -u
step() {  # step NAME CMD...: run CMD in the repo, keep its exit code and output outside the tmpfs
    name=$1; shift
    "$@" > "$RESULTS/$name.out" 2>&1; echo $? > "$RESULTS/$name.rc"
}
mount -t tmpfs -o size=$TMPFS_SIZE tmpfs "$MNT" || exit 97
mkdir "$MNT/repo" && cd "$MNT/repo"
git init -q && dvc init -q && git commit -qm init
cat > fill.py <<'EOF'
import os
open("a.txt", "w").write("a\n")
if os.environ.get("FILL") == "1":  # another job fills the disk while the stage runs; its file stays
    fd = os.open("ballast", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
EOF
python - <<'EOF'
import os, yaml
deps = [f"inputs/an_input_of_the_second_stage_with_a_long_name_{i:03d}.txt" for i in range(int(os.environ["DEPS"]))]
os.makedirs("inputs")
for dep in deps:
    open(dep, "w").write("x")
stages = {
    "a": {"cmd": "python fill.py", "deps": ["fill.py"], "outs": [{"a.txt": {"cache": False}}]},
    "b": {"cmd": "cat a.txt > b.txt", "deps": ["a.txt", *deps], "outs": [{"b.txt": {"cache": False}}]},
}
yaml.safe_dump({"stages": stages}, open("dvc.yaml", "w"))
EOF
step first dvc repro
echo "# edited" >> fill.py
FILL=1 step full dvc repro
cp .dvc/tmp/rwlock "$RESULTS/rwlock"
rm ballast
step status dvc status
step check python -m edgequant.team.dvclock
step repair python -m edgequant.team.dvclock --repair
step status_after dvc status
step repro_after dvc repro
"""


def namespace_command() -> list[str] | None:
    """A private mount namespace, so the tmpfs is seen by the scenario alone and goes with it: as root, or as
    an unprivileged user through a user namespace. None where neither is available."""
    if shutil.which("unshare") is None:
        return None
    flags = ["--mount", "--propagation", "private"]
    return ["unshare", *flags] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", *flags]


@pytest.mark.slow
def test_a_full_disk_under_dvc_repro_cuts_the_rwlock_and_the_repair_restores_dvc(tmp_path):
    command = namespace_command()
    if command is None:
        pytest.skip("no `unshare` to mount a private tmpfs")
    probe = subprocess.run([*command, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(tmp_path)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a full disk needs one): {probe.stderr.strip()}")
    results, mnt = tmp_path / "results", tmp_path / "mnt"
    results.mkdir()
    mnt.mkdir()
    env = dict(make_env(tmp_path), RESULTS=str(results), MNT=str(mnt), TMPFS_SIZE=TMPFS_SIZE, DEPS=str(DEPS))
    proc = subprocess.run([*command, "bash", "-c", textwrap.dedent(SCENARIO)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def step(name: str) -> tuple[int, str]:
        return int((results / f"{name}.rc").read_text()), (results / f"{name}.out").read_text()

    assert step("first")[0] == 0, step("first")[1]
    code, out = step("full")
    assert code != 0 and "No space left on device" in out, out
    cut = (results / "rwlock").read_bytes()
    with pytest.raises(ValueError):
        json.loads(cut)
    print(f"\nrwlock left at {len(cut)} bytes by `dvc repro` on a full {TMPFS_SIZE} tmpfs")

    code, out = step("status")  # space is free again, and DVC still cannot run: the fault
    assert code != 0 and dvclock.DVC_MESSAGE in out, out
    code, out = step("check")
    assert code == 1 and len(out.strip().splitlines()) == 1, out
    assert f".dvc/tmp/rwlock is cut short or damaged at {len(cut)} bytes" in out, out
    assert "`python -m edgequant.team.dvclock --repair`" in out, out
    code, out = step("repair")
    assert code == 0 and "removed .dvc/tmp/rwlock" in out, out
    assert step("status_after")[0] == 0, step("status_after")[1]
    assert step("repro_after")[0] == 0, step("repro_after")[1]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b'{"read": {"/r/a.txt": [{"pid": 1, "cm', "is cut short or damaged at 37 bytes"),
        (b"[]", "is not in DVC's format"),
    ],
    ids=["empty", "cut", "not-dvc"],
)
def test_a_damaged_rwlock_is_named_in_one_line_and_removed(tmp_path, monkeypatch, content, problem):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / dvclock.RWLOCK).write_bytes(content)
    line = dvclock.advice(tmp_path)
    assert line is not None and f".dvc/tmp/rwlock {problem}" in line and "\n" not in line
    dvc_output = (
        "ERROR: Unable to read RWLock-file '.dvc/tmp/rwlock'. JSON structure is corrupted: Expecting value: line 1 column 1 (char 0)"
    )
    assert dvclock.explain(dvc_output, tmp_path) == line
    assert dvclock.explain("ERROR: some other failure", tmp_path) == ""

    monkeypatch.setattr(dvclock, "running_dvc", lambda root: [4242])  # a dvc command still at work: leave its file alone
    with pytest.raises(ValueError, match="dvc runs in this repository \\(pid 4242\\)"):
        dvclock.repair(tmp_path)
    assert (tmp_path / dvclock.RWLOCK).exists()
    monkeypatch.setattr(dvclock, "running_dvc", lambda root: [])
    assert dvclock.repair(tmp_path).startswith("removed .dvc/tmp/rwlock")
    assert not (tmp_path / dvclock.RWLOCK).exists() and dvclock.advice(tmp_path) is None


def test_a_sound_rwlock_is_left_alone(tmp_path):
    (tmp_path / ".dvc" / "tmp").mkdir(parents=True)
    (tmp_path / dvclock.RWLOCK).write_text(json.dumps({"read": {}, "write": {"/r/b.txt": {"pid": 1, "cmd": "dvc repro"}}}))
    assert dvclock.advice(tmp_path) is None and dvclock.repair(tmp_path).endswith("is fine")
    assert (tmp_path / dvclock.RWLOCK).exists()


def test_a_running_dvc_command_in_the_repository_is_found(tmp_path):
    import sys

    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (repo / ".dvc").mkdir(parents=True)
    elsewhere.mkdir()
    fake = tmp_path / "bin" / "dvc"  # run as dvc's console script is: `<python> <bin>/dvc <command>`
    fake.parent.mkdir()
    fake.write_text("import time\ntime.sleep(30)\n")
    procs = [subprocess.Popen([sys.executable, str(fake), "repro"], cwd=cwd) for cwd in (repo, elsewhere)]
    try:
        found = dvclock.running_dvc(repo)
        assert procs[0].pid in found and procs[1].pid not in found
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
