"""Deterministic training of the classic CNN on whole-tensor batches."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.nn import functional as F
from tqdm import tqdm

from edgequant.data.splits import to_input
from edgequant.model.zoo import Classifier, build_model
from edgequant.params import TrainParams

EpochLogger = Callable[[int, dict[str, float]], None]


def make_optimizer(params: TrainParams, model: Classifier) -> torch.optim.Optimizer:
    """The classic pytorch/examples recipe is Adadelta lr 1.0; Adam is kept as a knob to compare."""
    if params.optimizer == "adadelta":
        return torch.optim.Adadelta(model.parameters(), lr=params.lr)
    return torch.optim.Adam(model.parameters(), lr=params.lr)


@torch.inference_mode()
def evaluate(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) of `model` on inputs `x` and labels `y`."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i : i + batch_size])
        loss += F.cross_entropy(out, y[i : i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i : i + batch_size]).sum().item()
    return loss / len(x), 100.0 * correct / len(x)


def train(
    params: TrainParams,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    log_epoch: EpochLogger | None = None,
) -> tuple[Classifier, list[dict[str, float]]]:
    """Train from `params.seed`; returns the model (eval mode) and one record per epoch.

    Same params and machine → byte-identical weights: one seeded generator drives the shuffle,
    the global seed drives init and dropout, and deterministic algorithms are enforced.
    """
    torch.manual_seed(params.seed)
    torch.set_num_threads(params.threads)
    torch.use_deterministic_algorithms(True)
    x_train, y_train = to_input(train_images), train_labels.long()
    x_test, y_test = to_input(test_images), test_labels.long()
    # Normalization statistics come from the training data only, never the test set.
    model = build_model(
        params.model, dropout_conv=params.dropout_conv, dropout_fc=params.dropout_fc, mean=x_train.mean().item(), std=x_train.std().item()
    )
    optimizer = make_optimizer(params, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=params.gamma)
    shuffle = torch.Generator().manual_seed(params.seed)
    history = []
    for epoch in range(params.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(x_train), generator=shuffle)
        total_loss, correct = 0.0, 0
        batches = range(0, len(order), params.batch_size)
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{params.epochs}", unit="batch", disable=None)
        for step, i in enumerate(bar):
            idx = order[i : i + params.batch_size]
            optimizer.zero_grad()
            out = model(x_train[idx])
            loss = F.cross_entropy(out, y_train[idx])
            if not torch.isfinite(loss):  # diverged: every later step, and the saved model, would be NaN
                raise ValueError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch + 1}, batch {step + 1}; "
                    f"lower train.lr (now {params.lr:g}) in params.yaml"
                )
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (out.argmax(1) == y_train[idx]).sum().item()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        scheduler.step()
        test_loss, test_acc = evaluate(model, x_test, y_test, params.test_batch_size)
        record = {
            "epoch": epoch + 1,
            "train_loss": total_loss / len(x_train),
            "train_accuracy_pct": 100.0 * correct / len(x_train),
            "test_loss": test_loss,
            "test_accuracy_pct": test_acc,
            "epoch_time_s": time.perf_counter() - start,
        }
        history.append(record)
        tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}, test accuracy {test_acc:.2f} %")
        if log_epoch is not None:
            log_epoch(epoch, record)
    return model.eval(), history
