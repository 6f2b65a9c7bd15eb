"""Shared fixtures: tiny generated MNIST-format data, and an isolated environment for subprocesses."""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgequant.deps import PROBE, PROBE_STAGE
from edgequant.model.zoo import Net
from edgequant.params import TrainParams

ROOT = Path(__file__).resolve().parents[1]
GROUP_EXIT_S = 30  # how long a SIGKILLed process group may take to empty

# The tests interrupt the commands they start with SIGINT. A suite started in the background of a script (`cmd &`)
# inherits SIGINT ignored, and so would every command it starts: Python installs its KeyboardInterrupt handler only
# where SIGINT is not ignored. The default handler here is reset to the default action in each child at exec.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each where a test or a stage does not set its own count,
    # so one worker's OpenMP threads do not spin waiting for a core the other worker holds.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (magic 0x08 0x(ndim), big-endian dims)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable synthetic digits: class k lights a bar at rows 2k..2k+3, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 2 : 2 * k + 6, 4:24] = 220
    return images, labels


def write_artifacts(model, root: Path, methods: list[str]) -> Path:
    """Each method's artifacts of `model` as the quantize stage lays them out (root/quantized/<name>/ with its
    meta.json, batch sizes 1 and 16), and a prepared test split of 64 digits (root/test.pt)."""
    from edgequant.quantize.catalog import get_method, record  # the registry imports every runtime: only here

    images, labels = make_digits(64, 3)
    x = torch.from_numpy(images).unsqueeze(1).float() / 255
    for name in methods:
        out = root / "quantized" / name
        out.mkdir(parents=True)
        exported = get_method(name).export(model, x, x, out, (1, 16))
        (out / "meta.json").write_text(json.dumps(record(get_method(name), model.NAME, exported, (1, 16))))
    torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, root / "test.pt")
    return root


def write_mirror(directory: Path, n_train: int = 256, n_test: int = 128) -> dict[str, str]:
    """Write the four gzipped IDX files of a tiny dataset; return the md5 of each decompressed file
    (what `download.md5` of a custom dataset names)."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte.gz"
            raw = idx_bytes(arr)
            (directory / name).write_bytes(gzip.compress(raw, mtime=0))
            sums[name] = hashlib.md5(raw).hexdigest()
    return sums


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A directory mirror of tiny data and the content md5s that verify it."""
    mirror = tmp_path / "mirror"
    return mirror, write_mirror(mirror)


def tiny_train_params(**overrides) -> TrainParams:
    """The classic recipe at test scale: one thread, small batches, one epoch unless overridden."""
    return TrainParams(**{**TINY["train"], **overrides})  # the same recipe the tiny pipeline runs


def train_tiny(model: str):
    """A briefly trained `model`: quantization tests need real activations, not random weights."""
    from edgequant.model.train import train

    images, labels = make_digits(512, 0)
    p = tiny_train_params(model=model)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    trained, _ = train(p, x, y, x[:64], y[:64])
    return trained


# The files in the order of their measured durations, longest first (docs/testing.md): `make test` runs the suite on
# two workers, a file at a time each (pytest-xdist's loadfile), so the long files start first and the two finish close
# together. test_fleet leads: its first test builds the tiny pipeline most end-to-end files share, and the two long
# files that do without it come next, so no worker waits for it.
LONGEST_FIRST = (
    "test_fleet.py",
    "test_your_model.py",
    "test_registry.py",
    "test_fleet_queue.py",
    "test_s3.py",
    "test_team.py",
    "test_repro_faults.py",
    "test_workloads.py",
    "test_machine.py",
    "test_pipeline.py",
    "test_mixed.py",
    "test_isa_numerics.py",
    "test_reliability.py",
    "test_arm.py",
    "test_vendor.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep pytest's order


@pytest.fixture(scope="session")
def tiny_model() -> Net:
    return train_tiny("cnn")


@pytest.fixture(scope="session")
def tiny_stress_model():
    return train_tiny("dwsep_cnn")


def make_env(tmp: Path) -> dict[str, str]:
    """Environment for CLI/DVC subprocesses: this interpreter's bin first, caches under `tmp`."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "inductor-cache")
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "edgequant test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@edgequant.invalid"
    return env


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


# --- A tiny copy of the real pipeline in a temp git repo, shared by the end-to-end and team-workflow tests.

TINY = {
    "download": {"dataset": "custom", "md5": {}},  # the md5s of the generated files are filled in where they are written
    "prepare": {"calib_size": 32, "calib_seed": 0, "val_size": 64},
    "train": {
        "model": "cnn",
        "seed": 0,
        "epochs": 1,
        "batch_size": 32,
        "test_batch_size": 64,
        "optimizer": "adadelta",
        "lr": 1.0,
        "gamma": 0.7,
        "dropout_conv": 0.25,
        "dropout_fc": 0.5,
        "threads": 1,
    },
    "quantize": {
        "methods": ["fp32", "dynamic_int8", "onnx_fp32", "onnx_qdq_int8", "onnx_qdq_int8_per_tensor_aware", "litert_fp32", "litert_int8"],
        "qat_epochs": 1,
    },
    "benchmark": {
        "threads": [1],
        "latency_batch": 1,
        "throughput_batch": 16,
        "warmup_runs": 1,
        "latency_runs": 5,
        "min_run_time_s": 0.02,
        "peak_gemm_size": 64,
        "keep_freed_memory": False,
        "profile_runs": 2,
    },
    # Loose limits: tiny data says nothing about speed; test_team.py tightens them to see the gate fail.
    "gate": {"methods": ["onnx_qdq_int8"], "max_accuracy_drop_pp": 100.0, "min_speedup": 0.01, "max_size_ratio": 0.3, "enforce": True},
    # One tool pair-set and one cold start each: the stage runs end to end; tests/test_vendor.py measures it properly.
    "vendor": {"pairs": 2, "methods": ["litert_int8"], "cold_start_repeats": 1},
    "loadgen": {"min_duration_ms": 100, "min_query_count": 64, "official": False},  # 64: the early-stopping p90 still exists
}


@dataclasses.dataclass(frozen=True)
class Origin:
    """The tiny repo after one full run on main and one on branch `calib-16`, both pushed to `remote`."""

    work: Path
    env: dict[str, str]
    remote: Path
    mirror: Path
    first_run: str  # output of the first `dvc repro` on main
    branch_run: str  # output of `dvc repro` after changing prepare.calib_size on calib-16


def sh(cmd: list[str], cwd: Path, env: dict, ok: bool = True) -> str:
    """Run a command; unless ok=False, a failure raises with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


ALWAYS_RUN = PROBE_STAGE  # reads the machine on every `dvc repro`; the same machine changes nothing downstream


def copy_code(work: Path, items: tuple[str, ...]) -> None:
    """Files and folders of this checkout into a temp repo, at the same relative paths, less Python's bytecode caches."""
    for item in items:
        src, dst = ROOT / item, work / item
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__")) if src.is_dir() else shutil.copy(src, dst)


def stages_run(output: str) -> set[str]:
    """The stages a `dvc repro` ran, less the machine probe that runs every time."""
    return set(re.findall(r"Running stage '([^']+)'", output)) - {ALWAYS_RUN}


def is_up_to_date(work: Path, env: dict) -> bool:
    """`dvc status` lists nothing but the probe, which DVC always reports as changed."""
    status = json.loads(sh(["dvc", "status", "--json"], work, env).strip() or "{}")
    return status == {ALWAYS_RUN: ["always changed"]}


def fingerprint(work: Path) -> dict[str, str]:
    """md5 of every output a failed run must leave as it was: data, prepared splits, models, metrics, plots
    (all but the validate stage's fixed one-line verdict). A killed write's scratch, `.<name>.*.tmp`, is left
    out: dvc and git ignore it and the stage's next run removes it (which the kill tests check)."""
    files = [p for top in ("data", "models", "metrics", "plots") for p in (work / top).rglob("*") if p.is_file()]
    scratch = lambda p: any(part.startswith(".") and part.endswith(".tmp") for part in p.relative_to(work).parts)  # noqa: E731
    files = [p for p in files if p.name != "params.valid" and not scratch(p)]
    return {p.relative_to(work).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in files}


def set_params(work: Path, section: str, **values) -> None:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params[section].update(values)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="session")
def tiny_origin(tmp_path_factory) -> Origin:
    """Built once per run: under pytest-xdist the first worker to ask builds it in the folder the workers share and
    the others wait for it, so its minutes are paid once."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return build_origin(tmp_path_factory.mktemp("team"))
    shared = tmp_path_factory.getbasetemp().parent
    with open(shared / "tiny_origin.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the build fails
        record = shared / "tiny_origin.json"
        if not record.exists():  # a worker whose build failed left no record: the next one builds in its own folder
            origin = build_origin(shared / f"team-{os.environ['PYTEST_XDIST_WORKER']}")
            record.write_text(json.dumps(dataclasses.asdict(origin), default=str))
        fields = json.loads(record.read_text())
    return Origin(**{**fields, **{k: Path(fields[k]) for k in ("work", "remote", "mirror")}})


def build_origin(base: Path) -> Origin:
    base.mkdir(parents=True, exist_ok=True)
    mirror = base / "mirror"
    params = {**TINY, "download": {"dataset": "custom", "md5": write_mirror(mirror)}}
    env = dict(make_env(base), MNIST_MIRROR=str(mirror))
    env.pop("PYTHONPATH")  # the copy in the temp repo is what the stages must import
    work, remote = base / "origin", base / "remote"
    work.mkdir()
    copy_code(work, ("dvc.yaml", PROBE, "stages", "edgequant", "machines"))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh(["dvc", "init", "-q"], work, env)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")  # the custom plot templates
    for item in (".dvcignore", ".gitignore"):  # both leave out the atomic writers' temporaries
        shutil.copy(ROOT / item, work / item)
    for cmd in (
        ["dvc", "config", "core.analytics", "false"],
        ["dvc", "remote", "add", "-d", "storage", str(remote)],  # in the first commit, before any data
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tiny pipeline"],
    ):
        sh(cmd, work, env)
    first = sh(["dvc", "repro"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "run"], work, env)
    sh(["dvc", "push"], work, env)
    sh(["git", "checkout", "-qb", "calib-16"], work, env)
    set_params(work, "prepare", calib_size=16)
    branch = sh(["dvc", "repro"], work, env)
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "calibrate on 16 images"], work, env)
    sh(["dvc", "push"], work, env)
    sh(["git", "checkout", "-q", "main"], work, env)
    sh(["dvc", "checkout"], work, env)
    return Origin(work, env, remote, mirror, first, branch)


def copy_repo(src: Path, dst: Path) -> None:
    """Copy a repo with its DVC cache, less DVC's scratch folder (.dvc/tmp: locks, indexes), which a DVC command
    another worker runs in `src` may be writing and deleting while it is copied."""
    shutil.copytree(src, dst, symlinks=True, ignore=lambda folder, names: ["tmp"] if Path(folder) == src / ".dvc" else [])


@pytest.fixture
def clone(tiny_origin: Origin, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A teammate's fresh clone of the tiny repo with its data pulled from the shared remote."""
    work = tmp_path / "clone"
    sh(["git", "clone", "-q", str(tiny_origin.work), str(work)], tmp_path, tiny_origin.env)
    sh(["dvc", "pull"], work, tiny_origin.env)
    return work, tiny_origin.env


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...), or None once it is gone.
    An exited orphan stays a zombie (state Z) until whoever adopted it reaps it, and a CI runner that adopts
    orphans may never do so: a test waiting for a process to stop must not count zombies."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def live_members(group: int) -> list[str]:
    """The processes of a process group that still run (zombies do not count)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        fields = stat_fields(entry.parent.name)
        if fields and int(fields[2]) == group and fields[0] not in ("Z", "X"):
            found.append(f"{entry.parent.name} ({fields[0]})")
    return found


def members_left(group: int, timeout_s: float = GROUP_EXIT_S) -> list[str]:
    """The members of a process group still running after `timeout_s`, or none as soon as it is empty. Even a SIGKILLed
    group takes a while: the kernel queues SIGKILL on each member at once, but each one exits only once it is next
    scheduled and has torn down its memory; on two busy cores a stage with torch loaded still shows state R for a
    while after its group leader was reaped."""
    deadline = time.monotonic() + timeout_s
    while (running := live_members(group)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running
