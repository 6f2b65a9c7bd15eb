"""MNIST IDX parsing and the prepared uint8 tensors: train, test, and seeded calibration and validation subsets."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

# name -> (IDX magic number, expected dims after the count). 0x0803: unsigned byte, 3 dims; 0x0801: 1 dim.
FILES = {
    "train-images-idx3-ubyte.gz": (0x0803, (28, 28)),
    "train-labels-idx1-ubyte.gz": (0x0801, ()),
    "t10k-images-idx3-ubyte.gz": (0x0803, (28, 28)),
    "t10k-labels-idx1-ubyte.gz": (0x0801, ()),
}


class IdxError(ValueError):
    """An IDX file is truncated, has the wrong magic number, or the wrong shape."""


def parse_idx(raw: bytes, name: str, magic: int, dims: tuple[int, ...]) -> np.ndarray:
    """Parse one uncompressed IDX buffer, checking magic, item shape and exact length."""
    header = 4 + 4 * (1 + len(dims))
    if len(raw) < header:
        raise IdxError(f"{name}: truncated header ({len(raw)} bytes); delete it and re-run `dvc repro download`")
    (got_magic,) = struct.unpack(">I", raw[:4])
    if got_magic != magic:
        raise IdxError(f"{name}: magic number 0x{got_magic:08x}, expected 0x{magic:08x} (not an MNIST IDX file of this kind)")
    count, *shape = struct.unpack(f">{1 + len(dims)}I", raw[4:header])
    if tuple(shape) != dims:
        raise IdxError(f"{name}: item shape {tuple(shape)}, expected {dims}")
    expected = header + count * int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "has trailing bytes"
        raise IdxError(f"{name}: {what}: {len(raw)} bytes for {count} items, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(count, *dims)


def read_idx_gz(path: Path) -> np.ndarray:
    """Read one of the four MNIST `.gz` files by its canonical name."""
    magic, dims = FILES[path.name]
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise IdxError(f"{path.name}: not a valid gzip file ({exc}); delete it and re-run `dvc repro download`") from exc
    return parse_idx(raw, path.name, magic, dims)


def load_split(raw_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of `split` ('train' or 't10k'), checked to agree."""
    images = read_idx_gz(raw_dir / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx_gz(raw_dir / f"{split}-labels-idx1-ubyte.gz")
    if len(images) != len(labels):
        raise IdxError(f"{split}: {len(images)} images but {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise IdxError(f"{split}: label {labels.max()} out of range 0..9")
    return images, labels


def draw_subsets(n_train: int, calib_size: int, val_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the calibration and validation subsets: the first `calib_size` and the next `val_size`
    of a seeded permutation of the TRAINING set (never the test set), so the two never share an image."""
    if calib_size + val_size > n_train:
        drawn = calib_size + val_size
        raise ValueError(
            f"prepare.calib_size + prepare.val_size = {drawn} exceeds the {n_train} training images; lower them in params.yaml"
        )
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))
    return perm[:calib_size].sort().values, perm[calib_size : calib_size + val_size].sort().values


def to_input(images: torch.Tensor) -> torch.Tensor:
    """Prepared images -> the float32 (N, C, H, W) input every artifact takes: uint8 pixels scaled to [0, 1]
    ((N, H, W), as IDX datasets are prepared, gains its one channel); float images as they are."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def input_shape(images: torch.Tensor) -> tuple[int, int, int]:
    """(C, H, W) of one image of a prepared split."""
    return tuple(images.shape[1:]) if images.dim() == 4 else (1, *images.shape[1:])


def class_count(*labels: torch.Tensor) -> int:
    """Classes the labels index: one more than the largest label (labels count from 0)."""
    return int(max(int(y.max()) for y in labels if len(y))) + 1


IMPORTED = ("train.pt", "test.pt")  # what the download stage writes for a folder or .npz dataset, in the prepared format


def load_raw(raw_dir: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training and test images and labels of data/raw: an imported folder or .npz (train.pt, test.pt), else the IDX files."""
    if all((raw_dir / name).is_file() for name in IMPORTED):
        train, test = (load_prepared(raw_dir / name, "re-run `dvc repro download`") for name in IMPORTED)
        return train["images"], train["labels"], test["images"], test["labels"]
    train_x, train_y = load_split(raw_dir, "train")
    test_x, test_y = load_split(raw_dir, "t10k")
    return tuple(torch.from_numpy(a.copy()) for a in (train_x, train_y, test_x, test_y))


def load_prepared(path: str | Path, remedy: str = "re-run `dvc repro prepare` (or `dvc checkout prepare`)") -> dict[str, torch.Tensor]:
    """Load a prepared split saved by the prepare stage (tensors only: weights_only): images uint8 (N, H, W) from IDX
    files, or (N, C, H, W) uint8 or float32 from an imported folder or .npz, and one label per image."""
    from edgequant.artifacts.read import check_torch_save

    data = check_torch_save(Path(path), remedy)
    try:
        split = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ValueError(f"{path}: not a readable prepared split ({type(exc).__name__}: {str(exc).splitlines()[0]}); {remedy}") from exc
    if not isinstance(split, dict) or set(split) != {"images", "labels"}:
        raise ValueError(f"{path}: not a prepared split (expected images and labels); {remedy}")
    images, labels = split["images"], split["labels"]
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{path}: not a prepared split (expected images and labels); {remedy}")
    shaped = (images.dtype == torch.uint8 and images.dim() == 3) or (images.dtype in (torch.uint8, torch.float32) and images.dim() == 4)
    if not shaped or len(images) != len(labels) or labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"{path}: images {tuple(images.shape)} {images.dtype} and {len(labels)} labels do not form a split; {remedy}")
    return split


def batches(x: torch.Tensor, size: int = 256):
    """`x` in consecutive batches of `size`: how calibration images go through observers and calibrators."""
    for i in range(0, len(x), size):
        yield x[i : i + size]


def predict(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits for every row of `x`, `batch_size` rows per call; the last partial batch is zero-padded for
    static-shape artifacts (the benchmark's accuracy, the accuracy-aware searches' validation)."""
    out = []
    for chunk in batches(x, batch_size):
        n = len(chunk)
        if n < batch_size:
            chunk = torch.cat([chunk, chunk.new_zeros(batch_size - n, *chunk.shape[1:])])
        out.append(torch.as_tensor(run(chunk))[:n].float())
    return torch.cat(out)
