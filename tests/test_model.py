"""Model shapes, MACs, and safe loading of model files."""

import pickle

import pytest
import torch

from edgequant.model.layers import conv_layers, conv_macs, count_macs, net_macs
from edgequant.model.zoo import Net, build_model, get_model, known_models, load_fp32


def test_output_shape_and_state_dict_size(tmp_path):
    model = Net().eval()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    assert 4690 < (tmp_path / "m.pt").stat().st_size / 1024 < 4700  # ≈ 4690 KB, the reference FP32 state dict


def test_macs_come_from_the_module_and_conv2_dominates():
    # Worked by hand for the classic CNN: output elements × the inputs each one sums over.
    assert net_macs("cnn") == {"conv1": 26 * 26 * 32 * 9, "conv2": 24 * 24 * 64 * 32 * 9, "fc1": 9216 * 128, "fc2": 128 * 10}
    assert net_macs("cnn")["conv2"] / sum(net_macs("cnn").values()) == pytest.approx(0.885, abs=0.001)
    assert conv_layers(Net()) == ["conv1", "conv2"] and conv_macs("cnn") == net_macs("cnn")["conv1"] + net_macs("cnn")["conv2"]


@pytest.mark.parametrize("name", known_models())
def test_every_model_takes_its_example_input_and_saves_loads(name, tmp_path):
    model = build_model(name, mean=0.2, std=0.3).eval()
    assert name == get_model(name).NAME and model(model.example_input(3)).shape == (3, 10)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_fp32(str(tmp_path / "m.pt"), name)
    assert torch.equal(loaded(model.example_input(2) + 0.5), model(model.example_input(2) + 0.5))


def test_the_stress_model_is_depthwise_separable(tmp_path):
    # 4 blocks of depthwise 3x3 (9 MACs per output) + pointwise 1x1 (in-channels MACs per output), worked by hand.
    macs = net_macs("dwsep_cnn")
    depthwise = 26 * 26 * 32 * 9 + 13 * 13 * 64 * 9 + 13 * 13 * 128 * 9 + 7 * 7 * 128 * 9
    pointwise = 26 * 26 * 64 * 32 + 13 * 13 * 128 * 64 + 13 * 13 * 128 * 128 + 7 * 7 * 256 * 128
    assert sum(macs.values()) == 26 * 26 * 32 * 9 + depthwise + pointwise + 256 * 10
    assert sum(macs.values()) < 0.7 * sum(net_macs("cnn").values())  # a mobile model: under 70 % of the classic CNN's compute
    with pytest.raises(ValueError, match="do not fit model 'cnn'"):  # the two architectures never load each other's weights
        torch.save(build_model("dwsep_cnn").state_dict(), tmp_path / "m.pt")
        load_fp32(str(tmp_path / "m.pt"), "cnn")


def test_macs_follow_the_module_not_its_names():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 5, groups=1), torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Flatten())
    assert count_macs(model, torch.zeros(1, 1, 12, 12)) == {"0": 8 * 8 * 8 * 25, "1": 6 * 6 * 8 * 9}  # depthwise: 9 per output
    assert conv_layers(model) == ["0", "1"]


def test_load_round_trip(tmp_path):
    model = Net(mean=0.13, std=0.31)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_fp32(str(tmp_path / "m.pt"), "cnn")
    assert torch.equal(loaded.conv1.weight, model.conv1.weight) and loaded.mean.item() == pytest.approx(0.13)


def test_truncated_file_refused(tmp_path):
    torch.save(Net().state_dict(), tmp_path / "m.pt")
    (tmp_path / "m.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable edgequant model"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")


def test_other_architecture_refused(tmp_path):
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "m.pt")
    with pytest.raises(ValueError, match="do not fit model 'cnn'"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_refused(tmp_path, capsys):
    (tmp_path / "m.pt").write_bytes(pickle.dumps({"conv1.weight": Exploit()}))
    with pytest.raises(ValueError, match="not a readable edgequant model"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")
    assert "pwned" not in capsys.readouterr().out


def test_archive_with_records_edgequant_never_writes_refused(tmp_path):
    import zipfile

    torch.save(Net().state_dict(), tmp_path / "m.pt")  # torch names the archive's folder after the file: m/
    with zipfile.ZipFile(tmp_path / "m.pt", "a") as archive:
        archive.writestr("m/extra/payload.py", "print('hi')")
    with pytest.raises(ValueError, match="holds records edgequant never writes: m/extra/payload.py"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")
    torch.save(Net().state_dict(), tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt", "a") as archive:
        archive.writestr("archive/extra/payload.py", "print('hi')")
    with pytest.raises(ValueError, match=r"records in more than one top-level folder \(archive/extra/payload.py\)"):
        load_fp32(str(tmp_path / "m.pt"), "cnn")
