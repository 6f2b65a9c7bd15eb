"""Training is deterministic given the seed, and learns."""

import io

import pytest
import torch

from edgequant.model.train import train

from .conftest import make_digits, tiny_train_params


def run(seed: int) -> tuple[bytes, list[dict]]:
    images, labels = make_digits(256, 0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    p = tiny_train_params(seed=seed, epochs=2)
    model, history = train(p, x, y, x[:64], y[:64])
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue(), history


@pytest.mark.slow
def test_same_seed_byte_identical_and_different_seed_differs():
    a, hist_a = run(0)
    b, hist_b = run(0)
    c, _ = run(1)
    assert a == b
    assert [h["test_accuracy_pct"] for h in hist_a] == [h["test_accuracy_pct"] for h in hist_b]
    assert a != c


@pytest.mark.slow
def test_learns_and_reports_every_epoch():
    _, history = run(0)
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["test_accuracy_pct"] > 50  # 10 classes: chance is 10 %


@pytest.mark.parametrize("before", [False, True])
def test_training_hands_back_the_callers_determinism_switch(before):
    """The switch is process-wide: a process that trains and then runs a kernel with no deterministic version (the
    roofline's quantized linear) must not find it refused. Handed back after a diverged run too."""
    images, labels = make_digits(64, 0)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    torch.use_deterministic_algorithms(before)
    try:
        train(tiny_train_params(), x, y, x[:32], y[:32])
        assert torch.are_deterministic_algorithms_enabled() is before
        with pytest.raises(ValueError, match="training diverged"):
            train(tiny_train_params(lr=1e30, optimizer="adam", epochs=50), x, y, x[:32], y[:32])
        assert torch.are_deterministic_algorithms_enabled() is before
    finally:
        torch.use_deterministic_algorithms(False)
