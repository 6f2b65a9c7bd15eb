"""A user's model, checkpoint and data at their edges: links out of the repository, forged array headers, ambiguous
layouts and checkpoints, each refused in one line naming the file and the fix (or taken as meant)."""

from __future__ import annotations

import io
import os
import sys
import threading
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edgequant.data.local import DataError, import_dataset, import_folder, import_npz
from edgequant.model.imported import Normalized, construct
from edgequant.params import ParamsError, check_repo_path

from .conftest import make_digits, tiny_train_params
from .test_your_model import CLASSES, SIDE, one_line, rgb_images, train_on, write_folder, write_model

READ_LIMIT_MIB = 8  # what refusing a forged header may allocate: far below the 32 MiB its member would inflate to


# --- the data: files and paths


def test_an_image_linked_from_outside_the_folder_is_refused_naming_it(tmp_path):
    root = write_folder(tmp_path / "images")
    outside = sorted((root / "train" / "class_0").glob("*.png"))[0].read_bytes()
    (tmp_path / "outside.png").write_bytes(outside)
    link = root / "train" / "class_1" / "linked.png"
    link.symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError) as exc:
        import_folder(root)
    assert one_line(exc).startswith(f"{link}: a symbolic link")


def test_an_image_that_is_a_fifo_is_refused_unopened(tmp_path):
    root = write_folder(tmp_path / "images")
    fifo = root / "test" / "class_2" / "pipe.png"
    os.mkfifo(fifo)
    png = sorted((root / "test" / "class_2").glob("0*.png"))[0].read_bytes()

    def feed() -> None:  # what a reader that opens the FIFO would get: a valid image
        try:
            with open(fifo, "wb") as f:
                f.write(png)
        except OSError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        with pytest.raises(DataError) as exc:
            import_folder(root)
    finally:
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # releases the writer when nothing opened it
        writer.join(5)
    assert one_line(exc).startswith(f"{fifo}: not a regular file")


def test_a_class_folder_linked_out_of_the_repository_is_refused(tmp_path, monkeypatch):
    repo, elsewhere = tmp_path / "repo", write_folder(tmp_path / "elsewhere")
    root = write_folder(repo / "images")
    (root / "test" / "class_0").rename(tmp_path / "moved")
    (root / "test" / "class_0").symlink_to(elsewhere / "test" / "class_0")
    monkeypatch.chdir(repo)
    with pytest.raises(DataError) as exc:
        import_dataset("folder", Path("images"))
    assert "images/test/class_0: resolves to" in one_line(exc) and "outside the repository" in str(exc.value)


def test_a_download_path_linked_out_of_the_repository_is_refused(tmp_path, monkeypatch):
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "images").symlink_to(write_folder(tmp_path / "elsewhere"))
    images, labels = rgb_images(6, 0)
    np.savez(tmp_path / "data.npz", x_train=images, y_train=labels, x_test=images, y_test=labels)
    (tmp_path / "repo" / "data.npz").symlink_to(tmp_path / "data.npz")
    monkeypatch.chdir(tmp_path / "repo")
    for kind, path in (("folder", "images"), ("npz", "data.npz")):
        with pytest.raises(DataError) as exc:
            import_dataset(kind, Path(path))
        assert one_line(exc).startswith(f"{path}: resolves to") and "outside the repository" in str(exc.value)


# --- the data: .npz arrays


def npz_member(shape: tuple[int, ...], payload: bytes) -> bytes:
    """A .npy member whose header declares `shape` of uint8, followed by `payload`."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def write_npz(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def valid_members(suffix: str = ".npy") -> dict[str, bytes]:
    images, labels = rgb_images(6, 0)
    return {f"{key}{suffix}": npy(images if key.startswith("x") else labels) for key in ("x_train", "y_train", "x_test", "y_test")}


def test_an_npz_header_with_a_negative_dimension_is_refused_before_its_bytes_are_read(tmp_path):
    forged = npz_member((-2, 4), bytes(32 << 20))  # read(-n) would read all 32 MiB: no cap on a negative size
    path = write_npz(tmp_path / "data.npz", {**valid_members(), "x_train.npy": forged})
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as exc:
            import_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "x_train.npy declares shape (-2, 4), a negative dimension" in one_line(exc)
    assert peak < READ_LIMIT_MIB << 20, f"{peak >> 20} MiB allocated"


def test_an_npz_header_whose_size_wraps_int64_is_refused_by_its_true_size(tmp_path):
    forged = npz_member((2**62 + 1, 4), bytes(4))  # 2**64 + 4 bytes: 4 in int64 arithmetic
    path = write_npz(tmp_path / "data.npz", {**valid_members(), "x_train.npy": forged})
    with pytest.raises(DataError) as exc:
        import_npz(path)
    assert f"{path}: x_train.npy declares {(2**64 + 4) >> 20} MiB" in one_line(exc)


def test_npz_members_saved_without_the_npy_suffix_are_read(tmp_path):
    imported = import_npz(write_npz(tmp_path / "data.npz", valid_members(suffix="")))
    assert imported["train"]["images"].shape == (6, 3, SIDE, SIDE)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        (np.array([0, 1, 2, 2**64 - 1, 0, 1], dtype=np.uint64), "y_train: label 18446744073709551615; class indices are 0..65535"),
        (np.array([0, 1, 2, 70000, 0, 1]), "y_train: label 70000; class indices are 0..65535"),
    ],
)
def test_an_npz_label_past_the_class_limit_is_refused(tmp_path, labels, expected):
    images = rgb_images(6, 0)[0]
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images, y_test=np.arange(6) % 3)
    with pytest.raises(DataError) as exc:
        import_npz(path)
    assert expected in one_line(exc)


def test_test_classes_missing_from_training_are_named(tmp_path):
    images = rgb_images(6, 0)[0]
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images, y_train=np.arange(6) % 2, x_test=images, y_test=np.array([0, 1, 4, 5, 1, 0]))
    with pytest.raises(DataError) as exc:
        import_npz(path)
    assert "y_test holds classes [4, 5] that y_train lacks" in one_line(exc)


def test_images_that_read_as_both_nchw_and_nhwc_are_refused_as_ambiguous(tmp_path):
    images = np.zeros((6, 3, SIDE, 3), dtype=np.uint8)  # 3 channels of 8×3, or 3×8 images of 3 channels?
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images, y_train=np.arange(6) % 3, x_test=images, y_test=np.arange(6) % 3)
    with pytest.raises(DataError) as exc:
        import_npz(path)
    assert "read both as N×C×H×W and as N×H×W×C" in one_line(exc)


# --- the model and its checkpoint

NET_SUBMODULE_MODEL = """
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.net(x))
"""
MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


def test_a_network_checkpoint_with_a_submodule_named_net_loads_into_the_network(tmp_path, monkeypatch):
    from edgequant.model.train import train

    monkeypatch.chdir(tmp_path)
    model = write_model(tmp_path, NET_SUBMODULE_MODEL, "usermodels/netnet.py")
    net = construct(model, {})
    torch.save(net.state_dict(), tmp_path / "start.pt")  # keys net.0.weight, ..., fc.weight: the network's own
    images, labels = rgb_images(12, seed=0)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    trained, _ = train(tiny_train_params(model=model, checkpoint="start.pt", epochs=0, mean=MEAN, std=STD), x, y, x, y)
    assert torch.equal(trained.net.fc.weight, net.fc.weight) and trained.mean.flatten().tolist() == pytest.approx(MEAN)


def test_a_network_checkpoint_with_no_epochs_needs_train_mean_and_std(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(construct(write_model(tmp_path), {}).state_dict(), tmp_path / "start.pt")
    with pytest.raises(ValueError) as exc:
        train_on(tmp_path, monkeypatch, {}, checkpoint="start.pt", epochs=0)
    assert one_line(exc).startswith("start.pt: a state dict of the network alone") and "give train.mean and train.std" in str(exc.value)


def test_a_built_in_models_class_count_refusal_does_not_point_at_model_args():
    from edgequant.model.train import train

    images, labels = make_digits(32, 0)
    y = torch.from_numpy(labels % 10) + 2  # labels 2..11: 12 classes
    with pytest.raises(ValueError) as exc:
        train(tiny_train_params(), torch.from_numpy(images), y, torch.from_numpy(images[:8]), y[:8])
    assert "a built-in model scores 10 classes" in one_line(exc) and "model_args" not in str(exc.value)


def test_weights_that_do_not_fit_name_the_key(tmp_path):
    from edgequant.model.zoo import Net, load_state

    state = Net().state_dict() | {"conv1.weight": torch.zeros(3, 1, 3, 3)}
    with pytest.raises(ValueError) as exc:
        load_state("start.pt", Net(), "re-run", state)
    assert "size mismatch for conv1.weight" in one_line(exc)


def test_a_model_file_named_like_a_standard_module_leaves_that_module_alone(tmp_path, monkeypatch):
    import copy

    monkeypatch.setitem(sys.modules, "copy", copy)  # restored after the test, whatever the import did
    model = write_model(tmp_path, file="copy.py")
    net = construct(model, {"num_classes": CLASSES}, root=tmp_path)
    assert sys.modules["copy"] is copy and type(net).__module__ != "copy"


SKIP_MODEL = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)  # unpadded and ungrouped: the fold's candidate
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc((torch.relu(self.conv(x)) + x).mean(dim=(2, 3)))  # the normalized input feeds the sum too
"""


def test_litert_does_not_fold_a_normalized_input_that_also_feeds_a_skip_connection(tmp_path):
    from edgequant.model.zoo import Net
    from edgequant.quantize.methods.litert import pixel_model

    net = construct(write_model(tmp_path, SKIP_MODEL, "usermodels/skip.py"), {}, root=tmp_path)
    model = Normalized(net, (3, SIDE, SIDE), "skip", MEAN, STD).eval()
    pixels, how = pixel_model(model)
    x = torch.rand(2, 3, SIDE, SIDE)
    assert how.startswith("explicit 1x1 depthwise conv at the input (input_norm): folding into net.conv changes the logits"), how
    assert torch.allclose(pixels(x), model(x), atol=1e-5)
    assert pixel_model(Net(mean=0.13, std=0.31).eval())[1] == "folded into conv1"  # the built-in's fold stands


# --- paths and files the params name


def test_a_module_in_a_declared_non_utf8_encoding_is_tracked(tmp_path):
    from edgequant.tracked import module_files

    (tmp_path / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\nNAME = '\xe9'\n")
    assert module_files("latin.py", tmp_path) == ["latin.py"]


def test_a_path_with_a_space_is_refused_naming_the_characters_allowed():
    with pytest.raises(ParamsError) as exc:
        check_repo_path("my models/net.py", "train.model")
    assert "letters, digits, '_', '.', '-' and '/' only (no spaces)" in one_line(exc)


def test_the_example_export_refuses_an_out_folder_holding_other_files(tmp_path, monkeypatch, capsys):
    import examples.export_fashion_mnist as example
    from edgequant.stage import StageError

    def offline(*args, **kwargs):
        raise StageError("no mirror in this test")

    monkeypatch.setattr(example, "download", offline)
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    assert example.main(["--out", str(out)]) == 1
    assert f"{out}: holds notes.txt, which replacing the folder would delete" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
