"""Shared fixtures: tiny generated MNIST-format data, and an isolated environment for subprocesses."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgequant.model import Net
from edgequant.params import TrainParams

ROOT = Path(__file__).resolve().parents[1]


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


def write_mirror(directory: Path, n_train: int = 256, n_test: int = 128) -> dict[str, str]:
    """Write the four gzipped IDX files of a tiny dataset; return their md5s."""
    directory.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = make_digits(n, seed)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{split}-{kind}-ubyte.gz"
            data = gzip.compress(idx_bytes(arr), mtime=0)
            (directory / name).write_bytes(data)
            sums[name] = hashlib.md5(data).hexdigest()
    return sums


@pytest.fixture
def tiny_mirror(tmp_path: Path) -> tuple[Path, Path]:
    """A directory mirror of tiny data and a checksum file for it."""
    mirror = tmp_path / "mirror"
    sums = write_mirror(mirror)
    checksums = tmp_path / "md5.json"
    checksums.write_text(json.dumps(sums))
    return mirror, checksums


def tiny_train_params(**overrides) -> TrainParams:
    """The classic recipe at test scale: one thread, small batches, one epoch unless overridden."""
    values = {"seed": 0, "epochs": 1, "batch_size": 32, "test_batch_size": 64, "optimizer": "adadelta", "lr": 1.0, "gamma": 0.7}
    values.update(dropout_conv=0.25, dropout_fc=0.5, threads=1)
    return TrainParams(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_model() -> Net:
    """A briefly trained model: quantization tests need real activations, not random weights."""
    from edgequant.train import train

    images, labels = make_digits(512, 0)
    p = tiny_train_params()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model, _ = train(p, x, y, x[:64], y[:64])
    torch.use_deterministic_algorithms(False)
    return model


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for CLI/DVC subprocesses: this interpreter's bin first, caches in the temp dir."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    env["DVC_NO_ANALYTICS"] = "1"
    env["DVC_SITE_CACHE_DIR"] = str(tmp_path / "dvc-site-cache")
    env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / "inductor-cache")
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "edgequant test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@edgequant.invalid"
    return env
