"""Model shapes, MACs, and safe loading of model files."""

import pickle

import pytest
import torch

from edgequant.model import LAYER_MACS, Net, count_macs, load_fp32


def test_output_shape_and_state_dict_size(tmp_path):
    model = Net().eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert 4690 < (tmp_path / "m.pt").stat().st_size / 1024 < 4700  # ≈ 4690 KB, the reference FP32 state dict


def test_macs_measured_match_table_and_conv2_dominates():
    assert count_macs(Net()) == LAYER_MACS
    assert LAYER_MACS["conv2"] / sum(LAYER_MACS.values()) == pytest.approx(0.885, abs=0.001)


def test_load_round_trip(tmp_path):
    model = Net(mean=0.13, std=0.31)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_fp32(str(tmp_path / "m.pt"))
    assert torch.equal(loaded.conv1.weight, model.conv1.weight) and loaded.mean.item() == pytest.approx(0.13)


def test_truncated_file_refused(tmp_path):
    torch.save(Net().state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable edgequant model"):
        load_fp32(str(tmp_path / "m.pt"))


def test_other_architecture_refused(tmp_path):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="different architecture"):
        load_fp32(str(tmp_path / "m.pt"))


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_refused(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(pickle.dumps({"conv1.weight": Exploit()}))
    with pytest.raises(ValueError, match="not a readable edgequant model"):
        load_fp32(str(tmp_path / "m.pt"))
    assert "pwned" not in capsys.readouterr().out
