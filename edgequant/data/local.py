"""Datasets a user already has, imported whole and checked: an image folder or an .npz of arrays.

An image folder holds `train/` and `test/`, each with one subfolder per class (the same class names in both)
holding PNG or JPEG files, read through Pillow. An .npz holds `x_train`, `y_train`, `x_test`, `y_test`: images
N×C×H×W or N×H×W×C (or N×H×W, one channel), uint8 or float, and integer labels. Either way every image has
the same size and 1 or 3 channels, and the import gives what the prepare stage reads: images N×C×H×W (uint8
as they were, floats as float32) and int64 labels. Every file read is a regular file, not a link, and every path
resolves inside the repository: a link to /dev/zero or out of the checkout would be data DVC neither tracks nor bounds.

Images of a folder are ordered by the SHA-256 of their file's bytes, not by name: renaming a file leaves the
import byte-identical, so nothing after the download stage re-runs, and the split mixes its classes in an order
no file name decides (the first images of the test set, which the SQNR and the bench bundle use, span the classes).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import warnings
import zipfile
from pathlib import Path

import numpy as np

from edgequant.artifacts.zipcheck import MAX_ARTIFACT_BYTES
from edgequant.data.datasets import LOCAL_KINDS as KINDS

SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHANNELS = (1, 3)
MAX_CLASSES = 1 << 16  # class indices of an .npz: far above any classifier here, and each class gets a name in memory
# Every prepared split is read back whole through edgequant.artifacts (at most MAX_ARTIFACT_BYTES per file);
# the import refuses what could not be read back, with room for the archive's own records.
MAX_SPLIT_BYTES = MAX_ARTIFACT_BYTES - (1 << 20)
MAX_IMAGE_FILE_BYTES = 16 << 20  # one PNG or JPEG file; a 4096×4096 RGB PNG is at most 48 MiB raw but compresses
MAX_SIDE = 4096  # pixels: far above any edge classifier's input, below Pillow's decompression-bomb guard
# Pillow modes read as they are, and those converted: palette and alpha images become RGB (alpha dropped), a
# grey image with alpha or a 1-bit image becomes grey. Anything else (16-bit, CMYK...) is refused by name.
MODES = {"L": "L", "RGB": "RGB", "P": "RGB", "RGBA": "RGB", "LA": "L", "1": "L", "YCbCr": "RGB"}


class DataError(ValueError):
    """The user's data cannot be imported as it is: one line naming the file and the fix."""


def import_dataset(kind: str, path: Path, repo: Path = Path(".")) -> dict[str, dict]:
    """{"train": {...}, "test": {...}, "classes": [...]} for the data at `path` in the repository `repo` (where stages
    run): each split's "images" (numpy N×C×H×W), "labels" (int64), and class names (folder names, or "0".."K-1")."""
    if kind == "folder":
        return import_folder(path, repo)
    if kind == "npz":
        return import_npz(path, repo)
    raise DataError(f"unknown local dataset kind {kind!r}; known: {', '.join(KINDS)}")


def check_inside(path: Path, repo: Path) -> None:
    """`path` resolves inside `repo`: a link out of the checkout is data no one else has."""
    if not path.resolve().is_relative_to(repo.resolve()):
        raise DataError(f"{path}: resolves to {path.resolve()}, outside the repository {repo.resolve()}; copy the data into it")


def open_regular(path: Path, what: str) -> io.BufferedReader:
    """`path` opened for reading: a regular file, not a link (opened with O_NOFOLLOW, so none is swapped in between)."""
    mode = path.lstat().st_mode
    if stat.S_ISLNK(mode):
        raise DataError(f"{path}: a symbolic link; {what} must be a regular file: copy the file in place of the link")
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a folder, FIFO, socket or device); {what} must be a regular file")
    f = open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")  # noqa: SIM115 - the caller closes it
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since lstat
        f.close()
        raise DataError(f"{path}: not a regular file; {what} must be a regular file")
    return f


# --- image folders


def class_folders(split_dir: Path, repo: Path) -> list[Path]:
    """The class subfolders of `split_dir`, sorted by name (a class's label is its index here), each inside `repo`."""
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: no such folder; an image folder holds train/ and test/, each with one subfolder per class")
    entries = [p for p in sorted(split_dir.iterdir()) if not p.name.startswith(".")]
    files = [p for p in entries if not p.is_dir()]
    if files:
        raise DataError(f"{files[0]}: a file beside the class folders of {split_dir}; put each image in its class's subfolder")
    if not entries:
        raise DataError(f"{split_dir}: no class folders; put each class's images in a subfolder named after the class")
    for folder in (split_dir, *entries):
        check_inside(folder, repo)
    return entries


def image_files(class_dir: Path) -> list[Path]:
    """The image files of one class folder; anything else (but hidden files) is refused by name."""
    files = []
    for p in sorted(class_dir.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{p}: not a PNG or JPEG file ({', '.join(IMAGE_SUFFIXES)}); a class folder holds its images only")
        files.append(p)
    if not files:
        raise DataError(f"{class_dir}: an empty class folder; add its images, or remove the folder (from train/ and test/)")
    return files


def decode(path: Path) -> tuple[np.ndarray, bytes]:
    """The pixels of one image file as uint8 H×W×C, and the file's bytes; a one-line DataError for anything unreadable."""
    from PIL import Image, UnidentifiedImageError

    with open_regular(path, "an image") as f:
        data = f.read(MAX_IMAGE_FILE_BYTES + 1)  # no more: a file past the limit is refused unread
    if len(data) > MAX_IMAGE_FILE_BYTES:
        raise DataError(f"{path}: more than the {MAX_IMAGE_FILE_BYTES} bytes an image file here may hold; use a smaller image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if max(image.size) > MAX_SIDE:
                raise DataError(f"{path}: {image.size[0]}×{image.size[1]} pixels, more than {MAX_SIDE} on a side")
            if image.mode not in MODES:
                raise DataError(f"{path}: Pillow mode {image.mode}, not 8-bit grey or RGB; convert it to 8-bit grey or RGB")
            image.load()  # decodes every byte: a truncated or corrupt file fails here, not later
            pixels = np.asarray(image.convert(MODES[image.mode]))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        if isinstance(exc, DataError):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable image ({reason}); replace or remove the file") from exc
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), data


def _describe(shape: tuple[int, ...]) -> str:
    h, w, c = shape
    return f"{w}×{h} {'RGB' if c == 3 else 'grey'}"


def read_split(split_dir: Path, classes: list[str], repo: Path) -> dict[str, np.ndarray]:
    """Every image of one split folder, ordered by content, with its class index; one size and channel count for all."""
    found = [p.name for p in class_folders(split_dir, repo)]
    if found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        what = f"has class folders {extra} that train/ lacks" if extra else f"lacks the class folders {missing} of train/"
        raise DataError(f"{split_dir}: {what}; train/ and test/ need the same class folders")
    items, first, pixel_bytes = [], None, 0
    for label, name in enumerate(classes):
        for path in image_files(split_dir / name):
            pixels, data = decode(path)
            if first is None:
                first = (path, pixels.shape)
            elif pixels.shape != first[1]:
                raise DataError(
                    f"{path}: {_describe(pixels.shape)}, but {first[0]} is {_describe(first[1])}: images of mixed sizes;"
                    " resize them to one size (and one of grey or RGB)"
                )
            pixel_bytes += pixels.nbytes
            if pixel_bytes > MAX_SPLIT_BYTES:
                raise DataError(f"{split_dir}: more than {MAX_SPLIT_BYTES >> 20} MiB of pixels; use fewer or smaller images")
            items.append((hashlib.sha256(data).digest(), label, pixels))
    items.sort(key=lambda item: (item[0], item[1]))  # content decides the order; a file's name never does
    images = np.stack([item[2] for item in items]).transpose(0, 3, 1, 2)
    return {"images": np.ascontiguousarray(images), "labels": np.array([item[1] for item in items], dtype=np.int64)}


def import_folder(root: Path, repo: Path | None = None) -> dict[str, dict]:
    """The image folder `root`; every path in it resolves inside `repo` (by default `root` itself)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (download.path names a folder holding train/ and test/)")
    repo = root if repo is None else repo
    check_inside(root, repo)
    classes = [p.name for p in class_folders(root / "train", repo)]
    train, test = read_split(root / "train", classes, repo), read_split(root / "test", classes, repo)
    check_same_shape(train["images"], test["images"], root)
    return {"train": train, "test": test, "classes": classes}


# --- .npz arrays


def read_npz(path: Path, repo: Path) -> dict[str, np.ndarray]:
    """The four arrays of an .npz, each header checked against the bytes present before numpy allocates it, and
    no pickled object arrays (np.load would need allow_pickle)."""
    if not (path.exists() or path.is_symlink()):
        raise DataError(f"{path}: no such file (download.path names an .npz holding {', '.join(NPZ_KEYS)})")
    check_inside(path, repo)
    file = open_regular(path, "an .npz")
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as exc:
        file.close()
        raise DataError(f"{path}: not an .npz archive ({exc}); save it with numpy.savez or numpy.savez_compressed") from exc
    with file, archive:
        members = {n.removesuffix(".npy"): n for n in archive.namelist()}  # numpy.savez adds .npy; a member may lack it
        members |= {n: n for n in archive.namelist() if n in NPZ_KEYS}  # as numpy.load: the exact name first
        names = list(members)
        missing = [k for k in NPZ_KEYS if k not in names]
        if missing:
            raise DataError(
                f"{path}: no {', '.join(missing)} (it holds {', '.join(names) or 'nothing'}); an .npz for edgequant holds"
                f" {', '.join(NPZ_KEYS)}: numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
            )
        return {key: _read_member(archive, members[key], path) for key in NPZ_KEYS}


def _read_member(archive: zipfile.ZipFile, name: str, path: Path) -> np.ndarray:
    with archive.open(name) as f:
        try:
            version = np.lib.format.read_magic(f)
            readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"format version {version}")
            shape, fortran, dtype = readers[version](f)
        except ValueError as exc:
            raise DataError(f"{path}: {name} is not a .npy array ({exc})") from exc
        if dtype.hasobject:
            raise DataError(f"{path}: {name} holds Python objects (pickled); store images and labels as numeric arrays")
        if any(d < 0 for d in shape):
            raise DataError(f"{path}: {name} declares shape {shape}, a negative dimension: a damaged or forged archive")
        size = math.prod(shape) * dtype.itemsize  # Python integers: a product past int64 cannot wrap under the cap
        if size > MAX_SPLIT_BYTES:
            raise DataError(f"{path}: {name} declares {size >> 20} MiB; edgequant reads at most {MAX_SPLIT_BYTES >> 20} MiB per split")
        data = f.read(size + 1)
    if len(data) != size:
        raise DataError(f"{path}: {name} declares {shape} {dtype} ({size} bytes) and holds {len(data)}: a damaged archive")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")


def to_nchw(x: np.ndarray, where: str) -> np.ndarray:
    """N×C×H×W from N×C×H×W, N×H×W×C or N×H×W, with C 1 or 3."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] in CHANNELS and x.shape[3] in CHANNELS:
        raise DataError(f"{where}: images of shape {x.shape} read both as N×C×H×W and as N×H×W×C; give N×C×H×W, W not 1 or 3")
    if x.ndim == 4 and x.shape[1] in CHANNELS:
        return x
    if x.ndim == 4 and x.shape[3] in CHANNELS:
        return x.transpose(0, 3, 1, 2)
    raise DataError(f"{where}: images of shape {x.shape}; expected N×C×H×W, N×H×W×C or N×H×W with C 1 or 3")


def check_images(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 images as they are; other numbers as float32 (finite)."""
    if len(x) == 0:
        raise DataError(f"{where}: no images")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)) or x.dtype == np.bool_:
        raise DataError(f"{where}: images of dtype {x.dtype}; expected uint8 pixels or floats")
    if np.issubdtype(x.dtype, np.integer):
        raise DataError(f"{where}: images of dtype {x.dtype}; give 8-bit pixels as uint8, or floats")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: images hold NaN or infinite values")
    return np.ascontiguousarray(x)


def check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where}: labels of shape {y.shape} {y.dtype}; expected one integer class index per image")
    if len(y) != n:
        raise DataError(f"{where}: {n} images but {len(y)} labels")
    if y.min() < 0:
        raise DataError(f"{where}: label {y.min()}; class indices start at 0")
    if y.max() >= MAX_CLASSES:  # compared before the cast: a uint64 past int64 would wrap to a negative index
        raise DataError(f"{where}: label {y.max()}; class indices are 0..{MAX_CLASSES - 1} at most, one per class")
    return y.astype(np.int64)


def check_same_shape(train: np.ndarray, test: np.ndarray, where: Path) -> None:
    if train.shape[1:] != test.shape[1:]:
        raise DataError(f"{where}: training images are {train.shape[1:]} (C×H×W) but test images {test.shape[1:]}: give both one shape")


def import_npz(path: Path, repo: Path | None = None) -> dict[str, dict]:
    """The .npz `path`, a regular file resolving inside `repo` (by default its own folder)."""
    arrays = read_npz(path, path.parent if repo is None else repo)
    splits = {}
    for split in SPLITS:
        where = f"{path}: x_{split}"
        images = check_images(to_nchw(arrays[f"x_{split}"], where), where)
        splits[split] = {"images": images, "labels": check_labels(arrays[f"y_{split}"], len(images), f"{path}: y_{split}")}
    check_same_shape(splits["train"]["images"], splits["test"]["images"], path)
    if unseen := sorted(set(splits["test"]["labels"].tolist()) - set(splits["train"]["labels"].tolist())):
        raise DataError(f"{path}: y_test holds classes {unseen} that y_train lacks; a model cannot learn them: add their training images")
    classes = int(max(splits["train"]["labels"].max(), splits["test"]["labels"].max())) + 1
    return {**splits, "classes": [str(k) for k in range(classes)]}


def content_sha256(imported: dict[str, dict]) -> str:
    """One hash of the imported data: both splits' images and labels, with their shapes and types."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for key in ("images", "labels"):
            a = imported[split][key]
            digest.update(f"{split}/{key}:{a.dtype.str}:{a.shape}".encode())
            digest.update(a.tobytes())
    return digest.hexdigest()
