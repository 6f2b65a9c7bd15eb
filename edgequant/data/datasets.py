"""The datasets edgequant knows, in MNIST's IDX format: where to get them and how to verify them."""

from __future__ import annotations

import dataclasses
import re

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MD5 = re.compile(r"[0-9a-f]{32}")
LOCAL_KINDS = ("folder", "npz")  # the user's own data, imported from download.path (edgequant/data/local.py)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset in MNIST's IDX format. A file is accepted when the md5 of its decompressed bytes matches
    (a faithful recompression, such as Debian's, passes; another dataset does not), or when the md5 of
    the `.gz` itself matches the upstream release."""

    name: str
    mirrors: tuple[str, ...]
    content_md5: dict[str, str]  # md5 of each decompressed IDX file
    gz_md5: dict[str, str]  # md5 of each upstream .gz
    train_images: int | None  # None: known only once prepared
    test_images: int | None
    local_dirs: tuple[str, ...] = ()  # where an OS package installs a copy, tried before the mirrors


def _per_file(*md5s: str) -> dict[str, str]:
    return dict(zip(FILES, md5s, strict=True))


DATASETS = {
    d.name: d
    for d in (
        Dataset(
            "mnist",
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),  # torchvision's, in its order
            content_md5=_per_file(
                "6bbc9ace898e44ae57da46a324031adb",
                "a25bea736e30d166cdddb491f175f624",
                "2646ac647ad5339dbf082846283269ea",
                "27ae3e4e09519cfbb04c329615203637",
            ),
            gz_md5=_per_file(
                "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "d53e105ee54ea40749a09fcbcd1e9432",
                "9fb629c4189551a2d022fa330f9573f3",
                "ec29112dd5afa0611ce80d1b7f02629c",
            ),
            train_images=60000,
            test_images=10000,
        ),
        Dataset(
            "fashion_mnist",
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            # The decompressed bytes of Debian's dataset-fashion-mnist, whose .gz files are recompressed.
            content_md5=_per_file(
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                "9018921c3c673c538a1fc5bad174d6f9",
                "8181f5470baa50b63fa0f6fddb340f0a",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
            gz_md5=_per_file(
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "25c81989df183df01b3e8a0aad5dffbe",
                "bef4ecab320f06d8554ea6380940ec79",
                "bb300cfdad3c16e7a12a480ee83cd310",
            ),
            train_images=60000,
            test_images=10000,
            local_dirs=("/usr/share/datasets/fashion-mnist",),
        ),
    )
}


def custom_dataset(md5: dict[str, str]) -> Dataset:
    """A drop-in dataset in MNIST's format (test data, a private set), served by $MNIST_MIRROR alone and
    verified by the md5 of each decompressed file, given in params.yaml."""
    return Dataset("custom", (), dict(md5), {}, None, None)


def dataset_for(name: str, md5: dict[str, str]) -> Dataset:
    return custom_dataset(md5) if name == "custom" else DATASETS[name]
