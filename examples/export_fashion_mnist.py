"""Fashion-MNIST as an image folder, the layout edgequant imports with `download.dataset: folder`.

    python -m examples.export_fashion_mnist --out examples/data/fashion_mnist_32 [--train-per-class N] [--test-per-class N]

The four IDX files are fetched and verified exactly as the download stage verifies them (edgequant.data.download:
Debian's /usr/share/datasets/fashion-mnist first, where `make fashion-mnist` installed it, then the public mirror;
each file accepted only when the md5 of its content matches upstream's). Each 28×28 image is padded with 2 black
pixels on every side to MLPerf Tiny's 32×32 and written as an 8-bit grey PNG:

    <out>/train/0_tshirt_top/00000.png ... <out>/train/9_ankle_boot/...
    <out>/test/0_tshirt_top/...

Class folders sort in Fashion-MNIST's label order (their index prefix), so label k is Fashion-MNIST's class k.
CIFAR-10, MLPerf Tiny's own dataset for ResNet-8 (32×32 RGB), takes the same layout (`train/airplane/*.png`, ...,
`test/truck/*.png`); it is not fetched here. `--train-per-class` and `--test-per-class` keep the first N images of
each class (in the IDX files' order), so a run fits a time budget; the folder is replaced whole, only once complete.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgequant.data.datasets import DATASETS
from edgequant.data.download import download, mirrors_for
from edgequant.data.splits import load_split
from edgequant.files import atomic_dir
from edgequant.stage import StageError

CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
PAD = 2  # 28 + 2 + 2 = 32, MLPerf Tiny's image size


def subset(labels: np.ndarray, per_class: int | None) -> np.ndarray:
    """Indices of the first `per_class` images of each class (all of them for None), in the file's order."""
    if per_class is None:
        return np.arange(len(labels))
    return np.sort(np.concatenate([np.flatnonzero(labels == k)[:per_class] for k in range(len(CLASSES))]))


def write_split(images: np.ndarray, labels: np.ndarray, folder: Path) -> int:
    from PIL import Image

    for k, name in enumerate(CLASSES):
        (folder / f"{k}_{name}").mkdir(parents=True)
    padded = np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))
    for i, (image, label) in enumerate(zip(padded, labels, strict=True)):
        Image.fromarray(image, mode="L").save(folder / f"{label}_{CLASSES[label]}" / f"{i:05d}.png")
    return len(images)


def check_replaceable(out: Path) -> None:
    """`out` is absent, or a folder holding train/ and test/ at most: replacing it whole must lose nothing else."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ValueError(f"{out}: a file or a link, not a folder; --out names the image folder to write (replaced whole)")
    if out.is_dir() and (other := sorted(p.name for p in out.iterdir() if p.name not in ("train", "test") or not p.is_dir())):
        raise ValueError(
            f"{out}: holds {', '.join(other)}, which replacing the folder would delete; give a new folder or one of train/, test/"
        )


def export(out: Path, train_per_class: int | None, test_per_class: int | None) -> dict[str, int]:
    check_replaceable(out)
    dataset = DATASETS["fashion_mnist"]
    written = {}
    with tempfile.TemporaryDirectory() as raw, atomic_dir(out) as tmp:
        download(Path(raw) / "idx", dataset, mirrors_for(dataset))
        for split, idx_name, per_class in (("train", "train", train_per_class), ("test", "t10k", test_per_class)):
            images, labels = load_split(Path(raw) / "idx", idx_name)
            keep = subset(labels, per_class)
            written[split] = write_split(images[keep], labels[keep], tmp / split)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the image folder to write (replaced whole)")
    parser.add_argument("--train-per-class", type=int, help="keep the first N training images of each class (default: all 6,000)")
    parser.add_argument("--test-per-class", type=int, help="keep the first N test images of each class (default: all 1,000)")
    args = parser.parse_args(argv)
    for value in (args.train_per_class, args.test_per_class):
        if value is not None and value < 1:
            parser.error("a per-class count must be at least 1")
    try:
        written = export(args.out, args.train_per_class, args.test_per_class)
    except (ValueError, OSError, StageError) as exc:  # StageError: no mirror gave a verified file
        print(f"export_fashion_mnist: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"export_fashion_mnist: {written['train']} training and {written['test']} test images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
