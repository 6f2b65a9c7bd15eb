"""A model and data of the user's own: every bad input is refused in one line naming the file and the fix, and an RGB
image folder with a model from a module outside the package runs end to end under `dvc repro`."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgequant.data.local import import_folder, import_npz
from edgequant.deps import PROBE
from edgequant.model.imported import construct
from edgequant.model.train import train
from edgequant.params import ParamsError
from edgequant.quantize.catalog import get_method, known_methods
from edgequant.validate import load_all

from .conftest import ROOT, TINY, copy_code, make_env, sh, stages_run, tiny_train_params

# A network no built-in code knows: one convolution, global average pooling, a linear classifier.
TINY_MODEL = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes=3, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc((y + torch.relu(y)).mean(dim=(2, 3)))
"""
SIDE = 8  # pixels: the synthetic images are SIDE×SIDE
CLASSES = 3


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def write_model(root: Path, text: str = TINY_MODEL, file: str = "usermodels/tinynet.py") -> str:
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    (root / file).write_text(text)
    return f"{file}:TinyNet"


def rgb_images(n: int, seed: int, side: int = SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Learnable RGB images N×H×W×3: class k lights channel k, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    images = rng.integers(0, 60, (n, side, side, 3)).astype(np.uint8)
    for i, k in enumerate(labels):
        images[i, :, :, k] = 200
    return images, labels


def write_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    """An image folder (train/ and test/, one subfolder per class) of RGB PNGs."""
    from PIL import Image

    per_class = per_class or {"train": 8, "test": 4}
    for split, n in per_class.items():
        images, labels = rgb_images(n * CLASSES, seed=len(split))
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="RGB").save(folder / f"{i:03d}.png")
    return root


def train_on(tmp_path: Path, monkeypatch, model_args: dict, n_classes: int = CLASSES, **overrides):
    monkeypatch.chdir(tmp_path)  # the import path is relative to the repository root, where every stage runs
    model = write_model(tmp_path)
    images, labels = rgb_images(12, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels % n_classes)
    p = tiny_train_params(model=model, model_args=model_args, **overrides)
    return train(p, x, y, x[:6], y[:6])


# --- the model


def test_an_import_path_to_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(ValueError) as exc:
        construct("usermodels/absent.py:TinyNet", {}, root=tmp_path)
    assert "no such file usermodels/absent.py" in one_line(exc)


def test_a_module_that_raises_on_import_is_one_line_naming_its_line(tmp_path):
    model = write_model(tmp_path, "import torch\n\nraise RuntimeError('no GPU here')\n", "usermodels/raising.py")
    with pytest.raises(ValueError) as exc:
        construct(model, {}, root=tmp_path)
    assert "importing usermodels/raising.py raised RuntimeError: no GPU here (line 3)" in one_line(exc)


def test_validate_refuses_a_missing_model_module_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = {**TINY, "download": {"dataset": "mnist", "md5": {}}, "train": {**TINY["train"], "model": "usermodels/absent.py:TinyNet"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as exc:
        load_all(tmp_path / "params.yaml")
    assert "no such file usermodels/absent.py" in one_line(exc)


def test_a_class_count_that_disagrees_with_the_labels_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as exc:
        train_on(tmp_path, monkeypatch, {"num_classes": 2, "in_channels": 3})
    assert f"the labels have {CLASSES} classes" in one_line(exc) and "train.model_args" in str(exc.value)


def test_a_forward_that_fails_on_the_datas_shape_is_one_line(tmp_path, monkeypatch):
    with pytest.raises(ValueError) as exc:
        train_on(tmp_path, monkeypatch, {"num_classes": CLASSES, "in_channels": 1})
    assert f"does not run on the data's 3×{SIDE}×{SIDE} (C×H×W) images (RuntimeError" in one_line(exc)


class Payload:
    """Pickled code: unpickling it calls Path.touch on the marker."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_carrying_pickled_code_is_refused_before_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    torch.save({"net.conv.weight": Payload(marker)}, tmp_path / "start.pt")
    with pytest.raises(ValueError) as exc:
        train_on(tmp_path, monkeypatch, {"num_classes": CLASSES, "in_channels": 3}, checkpoint="start.pt", epochs=0)
    assert one_line(exc).startswith("start.pt") and "state dict" in str(exc.value)
    assert not marker.exists(), "the checkpoint's pickled code ran"


def test_a_state_dict_checkpoint_with_no_epochs_is_evaluated_as_it_is(tmp_path, monkeypatch):
    write_model(tmp_path)
    monkeypatch.chdir(tmp_path)
    torch.save(construct("usermodels/tinynet.py:TinyNet", {}).state_dict(), tmp_path / "start.pt")
    # The network's state dict alone: the normalization it was trained with is given (train.mean and train.std).
    model, history = train_on(tmp_path, monkeypatch, {}, checkpoint="start.pt", epochs=0, mean=[0.5] * 3, std=[0.25] * 3)
    assert [h["epoch"] for h in history] == [0] and model.INPUT_SHAPE == (3, SIDE, SIDE)


def test_litert_takes_a_padded_first_conv_as_an_explicit_input_layer_in_eval_mode(tmp_path):
    from edgequant.model.imported import Normalized
    from edgequant.quantize.methods.litert import pixel_model

    net = construct(write_model(tmp_path), {}, root=tmp_path)  # its first conv pads: a fold would change the border
    model = Normalized(net, (3, SIDE, SIDE), "tinynet", [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]).eval()
    pixels, how = pixel_model(model)
    assert how.startswith("explicit 1x1 depthwise conv") and not pixels.training  # a converter exports the mode it is given
    x = torch.rand(2, 3, SIDE, SIDE)
    assert torch.allclose(pixels(x), model(x), atol=1e-5)


# --- the data


def test_an_image_folder_imports_as_nchw_rgb_ordered_by_content(tmp_path):
    imported = import_folder(write_folder(tmp_path / "images"))
    assert imported["train"]["images"].shape == (8 * CLASSES, 3, SIDE, SIDE) and imported["classes"] == ["class_0", "class_1", "class_2"]
    assert sorted(np.bincount(imported["test"]["labels"])) == [4] * CLASSES


def test_images_of_mixed_sizes_are_one_line(tmp_path):
    from PIL import Image

    root = write_folder(tmp_path / "images")
    Image.fromarray(rgb_images(1, 0, side=SIDE * 2)[0][0], mode="RGB").save(root / "train" / "class_1" / "big.png")
    with pytest.raises(ValueError) as exc:
        import_folder(root)
    assert "big.png" in one_line(exc) and "images of mixed sizes" in str(exc.value)


def test_a_corrupt_png_is_one_line_naming_it(tmp_path):
    root = write_folder(tmp_path / "images")
    good = sorted((root / "test" / "class_2").glob("*.png"))[0]
    broken = root / "test" / "class_2" / "broken.png"
    broken.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(ValueError) as exc:
        import_folder(root)
    assert f"{broken}: not a readable image" in one_line(exc)


def test_an_empty_class_folder_is_one_line_naming_it(tmp_path):
    root = write_folder(tmp_path / "images")
    (root / "train" / "class_3").mkdir()
    (root / "test" / "class_3").mkdir()
    with pytest.raises(ValueError) as exc:
        import_folder(root)
    assert f"{root / 'train' / 'class_3'}: an empty class folder" in one_line(exc)


def test_an_npz_missing_keys_is_one_line_naming_them(tmp_path):
    images, labels = rgb_images(6, 0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images, y_train=labels)
    with pytest.raises(ValueError) as exc:
        import_npz(path)
    assert f"{path}: no x_test, y_test" in one_line(exc)
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == ["x_train.npy", "y_train.npy"]  # the file is read, never rewritten


def test_an_npz_of_nhwc_rgb_imports_as_nchw(tmp_path):
    images, labels = rgb_images(6, 0)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=images, y_train=labels, x_test=images[:3], y_test=labels[:3])
    imported = import_npz(path)
    assert imported["train"]["images"].shape == (6, 3, SIDE, SIDE) and imported["classes"] == ["0", "1", "2"]


# --- the example workload's data


def test_the_example_data_stages_code_deps_are_its_import_closure():
    from edgequant.deps import code_deps

    stages = yaml.safe_load((ROOT / "examples/dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        code = [d for d in stage["deps"] if d.endswith(".py")]
        assert code == code_deps(stage["cmd"], ROOT), f"examples/dvc.yaml: stage {name}'s code deps are stale"


# --- end to end: an RGB image folder and a model from outside the package, through `dvc repro`


def any_model_methods() -> list[str]:
    """Every registered method that takes any model (the rest restate one built-in architecture: `models=`)."""
    return [name for name in known_methods() if get_method(name).models is None]


def tree_digest(root: Path) -> str:
    """One SHA-256 over every file under `root` (path and bytes), caches left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.mark.slow
def test_an_rgb_image_folder_and_an_outside_model_run_end_to_end_under_dvc_repro(tmp_path):
    """Through every method that takes any model, with nothing under edgequant/ or stages/ written."""
    methods = any_model_methods()
    work = tmp_path / "repo"
    work.mkdir()
    env = make_env(tmp_path)
    env.pop("PYTHONPATH")  # the copy in the temp repo is what the stages must import
    copy_code(work, ("dvc.yaml", PROBE, "params.yaml", "stages", "edgequant", "machines"))
    # The three files a user writes: the model module, the data, the workload's params.
    model = write_model(work)
    write_folder(work / "userdata" / "rgb")
    folder = "workloads/rgb"
    params = {
        **TINY,
        "download": {"dataset": "folder", "md5": {}, "path": "userdata/rgb"},
        "prepare": {"calib_size": 6, "calib_seed": 0, "val_size": 6},
        "train": {
            **{k: v for k, v in TINY["train"].items() if not k.startswith("dropout")},
            "model": model,
            "model_args": {"num_classes": CLASSES, "in_channels": 3},
            "optimizer": "adam",
            "lr": 0.01,
            "test_batch_size": 12,
        },
        "quantize": {"methods": methods, "qat_epochs": 1},
        "benchmark": {**TINY["benchmark"], "throughput_batch": 4, "profile_runs": 0},
        # A 4-filter network weighs less than its quantization parameters (INT8/FP32 ONNX size measured 1.47): the gate
        # records its verdict on tiny data and enforces none.
        "gate": {**TINY["gate"], "enforce": False},
    }
    (work / folder).mkdir(parents=True)
    (work / folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q", "-b", "main"], work, env)
    sh(["dvc", "init", "-q"], work, env)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")
    for item in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / item, work / item)
    sh(["python", "-m", "edgequant.workloads", folder], work, env)
    derived = yaml.safe_load((work / folder / "dvc.yaml").read_text())["stages"]
    assert "usermodels/tinynet.py" in derived["train"]["deps"] and "userdata/rgb" in derived["download"]["deps"]
    sh(["git", "add", "-A"], work, env)
    sh(["git", "commit", "-qm", "an RGB workload"], work, env)
    package = {name: tree_digest(work / name) for name in ("edgequant", "stages")}

    ran = stages_run(sh(["dvc", "repro", f"{folder}/dvc.yaml"], work, env))
    assert {f"{folder}/dvc.yaml:{s}" for s in ("validate", "download", "prepare", "train", "benchmark", "gate", "npu", "plot")} <= ran
    out = work / folder
    metrics = json.loads((out / "metrics/benchmark.json").read_text())
    assert set(metrics["methods"]) | set(metrics.get("refused", {})) == set(methods)
    assert {"executorch_xnnpack_int8", "openvino_int8", "pt2e_x86", "onnx_qdq_int8_per_tensor_aware"} <= set(metrics["methods"])
    assert "onnx_qdq_int8" in metrics["methods"] and 0 <= metrics["methods"]["onnx_qdq_int8"]["accuracy_pct"] <= 100
    meta = json.loads((out / "models/quantized/onnx_qdq_int8/meta.json").read_text())
    assert meta["model_spec"]["input_shape"] == [3, SIDE, SIDE] and meta["model_spec"]["classes"] == CLASSES
    gate = json.loads((out / "metrics/gate.json").read_text())
    assert {c["method"] for c in gate["checks"]} == {"onnx_qdq_int8"} and isinstance(gate["passed"], bool)
    assert {name: tree_digest(work / name) for name in package} == package  # the package was not edited

    # A renamed image changes no content: nothing after the download stage re-runs.
    first = sorted((work / "userdata/rgb/train/class_0").glob("*.png"))[0]
    first.rename(first.with_name("renamed.png"))
    again = stages_run(sh(["dvc", "repro", f"{folder}/dvc.yaml"], work, env))
    assert again <= {f"{folder}/dvc.yaml:download"}, again
