"""A runtime's refusal of a model is recorded and the pipeline goes on; a defect of edgequant's own is never recorded
as one: it fails the stage and leaves the good artifact in place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from edgequant.model.imported import Normalized, construct
from edgequant.model.zoo import Net
from edgequant.quantize.refusal import Unsupported, runtime_refusals

from .conftest import TINY, make_digits

# A network whose one operator (the Hurwitz zeta function) the ONNX exporter has no translation for.
ZETA_MODEL = """
import torch
from torch import nn


class ZetaNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.special.zeta(x.mean(dim=(2, 3)) + 2.0, torch.ones(1)).repeat(1, 4))
"""


def test_an_exporters_unsupported_operator_is_a_refusal_naming_the_runtime(tmp_path):
    from edgequant.quantize.catalog import get_method

    (tmp_path / "zeta.py").write_text(ZETA_MODEL)
    model = Normalized(construct("zeta.py:ZetaNet", {}, root=tmp_path), (1, 6, 6), "zeta.py:ZetaNet").eval()
    x = torch.rand(4, 1, 6, 6)
    with pytest.raises(Unsupported) as exc, runtime_refusals("onnxruntime"):
        get_method("onnx_fp32").export(model, x, x, tmp_path, (1,))
    assert str(exc.value).startswith("onnxruntime: ") and "operator prims.zeta" in str(exc.value)


BRANCHING_MODEL = """
from torch import nn


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 3)

    def forward(self, x):
        if x.sum() > 0:  # a branch on the data: no exporter can trace it into one graph
            x = x * 2
        return self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1))
"""


def test_a_user_forward_an_exporter_cannot_trace_is_a_refusal(tmp_path):
    """The exporter runs edgequant's Normalized, which runs the user's forward, which the exporter cannot take."""
    (tmp_path / "branching.py").write_text(BRANCHING_MODEL)
    model = Normalized(construct("branching.py:Branching", {}, root=tmp_path), (1, 6, 6), "branching.py:Branching").eval()
    with pytest.raises(Unsupported) as exc, runtime_refusals("executorch-xnnpack", [tmp_path / "branching.py"]):
        torch.export.export(model, (model.example_input(2),))
    assert str(exc.value).startswith("executorch-xnnpack: the model is unsupported")


def test_an_edgequant_defect_beneath_an_exporter_is_not_a_refusal():
    """The exporter runs edgequant's own forward, which fails: edgequant's code, so the stage fails."""
    model = Net().eval()
    model.mean = torch.zeros(5)  # a broken buffer: the forward's normalization cannot broadcast it
    with pytest.raises(RuntimeError) as exc, runtime_refusals("executorch-xnnpack"):
        torch.export.export(model, (model.example_input(2),))
    assert not isinstance(exc.value, Unsupported)


def write_quantize_inputs(root: Path) -> None:
    """What the quantize stage reads: params.yaml, the FP32 model and three prepared splits of 28×28 digits."""
    params = {**TINY, "download": {"dataset": "mnist", "md5": {}}, "quantize": {"methods": ["fp32"], "qat_epochs": 1}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    torch.save(Net().state_dict(), root / "fp32.pt")
    images, labels = make_digits(16, 0)
    for split in ("calib", "val", "test"):
        torch.save({"images": torch.from_numpy(images), "labels": torch.from_numpy(labels)}, root / f"{split}.pt")


def run_quantize(root: Path) -> int:
    from stages.quantize import main

    args = [f"--{s}={root / f'{s}.pt'}" for s in ("calib", "val", "test")]
    return main(["--method=fp32", f"--model={root / 'fp32.pt'}", *args, f"--out={root / 'out'}", f"--metrics={root / 'm.json'}"])


def test_a_json_error_writing_the_record_fails_the_stage_and_keeps_the_artifact(tmp_path, monkeypatch):
    import stages.quantize

    write_quantize_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert run_quantize(tmp_path) == 0
    good = (tmp_path / "out" / "meta.json").read_text()
    real = stages.quantize.record
    monkeypatch.setattr(stages.quantize, "record", lambda *a: {**real(*a), "defect": {1, 2}})  # a set: json cannot encode it
    with pytest.raises(TypeError, match="not JSON serializable"):
        run_quantize(tmp_path)
    assert (tmp_path / "out" / "meta.json").read_text() == good and "refused" not in json.loads(good)


# Zeta of a learned value: training needs its derivative in the first argument, which autograd does not have.
ZETA_HEAD_MODEL = """
import torch
from torch import nn


class ZetaHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 3)

    def forward(self, x):
        return torch.special.zeta(self.fc(x.mean(dim=(1, 2, 3)).unsqueeze(1)).abs() + 2.0, torch.ones(1))
"""


def test_qat_on_an_operator_autograd_cannot_differentiate_is_a_refusal_naming_the_runtime(tmp_path):
    from edgequant.quantize.catalog import Labelled, get_method

    (tmp_path / "zetahead.py").write_text(ZETA_HEAD_MODEL)
    model = Normalized(construct("zetahead.py:ZetaHead", {}, root=tmp_path), (1, 6, 6), "zetahead.py:ZetaHead").eval()
    x = torch.rand(8, 1, 6, 6)
    labelled = Labelled(torch.arange(8) % 3, x, torch.arange(8) % 3, 100.0, 1)
    with pytest.raises(Unsupported) as exc, runtime_refusals("executorch-xnnpack"):
        get_method("executorch_xnnpack_qat").export(model, x, x, tmp_path, (1,), labelled=labelled)
    assert str(exc.value).startswith("executorch-xnnpack: QAT cannot train the model (") and "zeta" in str(exc.value)
