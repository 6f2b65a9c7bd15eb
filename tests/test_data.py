"""IDX parsing (good and corrupt files) and the calibration subset rule."""

import gzip

import numpy as np
import pytest
import torch

from edgequant.data.splits import IdxError, draw_subsets, load_split, parse_idx, read_idx_gz, to_input

from .conftest import idx_bytes, make_digits, write_mirror


def test_parse_round_trip():
    images, labels = make_digits(7, 0)
    assert np.array_equal(parse_idx(idx_bytes(images), "x", 0x0803, (28, 28)), images)
    assert np.array_equal(parse_idx(idx_bytes(labels), "y", 0x0801, ()), labels)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:6], "truncated header"),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], "magic number"),
        (lambda b: b[:-5], "truncated"),
        (lambda b: b + b"\x00" * 3, "trailing bytes"),
    ],
)
def test_corrupt_images_rejected(mutate, message):
    raw = idx_bytes(make_digits(5, 0)[0])
    with pytest.raises(IdxError, match=message):
        parse_idx(mutate(raw), "train-images", 0x0803, (28, 28))


def test_wrong_image_size_rejected():
    raw = idx_bytes(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(IdxError, match=r"item shape \(32, 32\), expected \(28, 28\)"):
        parse_idx(raw, "train-images", 0x0803, (28, 28))


def test_not_gzip_rejected(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(b"plain bytes")
    with pytest.raises(IdxError, match="not a valid gzip"):
        read_idx_gz(path)


def test_counts_must_agree(tmp_path):
    write_mirror(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(IdxError, match="128 images but 3 labels"):
        load_split(tmp_path, "t10k")


def test_calibration_is_seeded_subset_of_train():
    (a, va), (b, vb), (c, _) = draw_subsets(1000, 64, 100, 0), draw_subsets(1000, 64, 100, 0), draw_subsets(1000, 64, 100, 1)
    assert torch.equal(a, b) and torch.equal(va, vb) and not torch.equal(a, c)
    assert len(a.unique()) == 64 and a.max() < 1000 and len(va.unique()) == 100
    assert not set(a.tolist()) & set(va.tolist())  # validation never sees a calibration image
    assert torch.equal(draw_subsets(1000, 64, 10, 0)[0], a)  # the validation size leaves the calibration subset as it was


def test_calibration_larger_than_train_rejected():
    with pytest.raises(ValueError, match="calib_size \\+ prepare.val_size = 2100 exceeds the 1000 training images"):
        draw_subsets(1000, 2000, 100, 0)


def test_to_input_scales_to_unit_range():
    images = torch.zeros(1, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 255
    x = to_input(images)
    assert x.shape == (1, 1, 28, 28) and x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
