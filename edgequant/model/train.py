"""Deterministic training of the classic CNN on whole-tensor batches."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F
from tqdm import tqdm

from edgequant.data.splits import class_count, input_shape, to_input
from edgequant.model.zoo import NUM_CLASSES, Classifier, ModelSpec, build_model, load_state, read_state, spec_from
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


@contextlib.contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """PyTorch's deterministic algorithms for the block, then the caller's setting back: the switch is process-wide,
    and a process that trains and goes on (a notebook, the test suite) must not find its quantized kernels refused
    later for lacking a deterministic version."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@deterministic_algorithms()
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
    x_train, y_train = to_input(train_images), train_labels.long()
    x_test, y_test = to_input(test_images), test_labels.long()
    spec = spec_from(params.model, params.model_args, input_shape(train_images), class_count(y_train, y_test))
    model = initial_model(params, spec, x_train)
    check_on_data(model, spec, x_train[:2])  # once, up front: the model takes the data's images and scores its classes
    if params.epochs == 0:
        record = evaluated(model, x_train, y_train, x_test, y_test, params.test_batch_size)
        if log_epoch is not None:
            log_epoch(0, record)
        return model.eval(), [record]
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


def normalization(params: TrainParams, spec: ModelSpec, x_train: torch.Tensor) -> dict:
    """The input normalization the model keeps: train.mean and train.std, or measured on the training images
    (never the test set): one value over all pixels for the built-in models, as the classic recipe, else per channel."""
    channels = spec.input_shape[0]
    if not spec.imported:
        if len(params.mean) > 1:
            raise ValueError(f"train.mean gives {len(params.mean)} values; the built-in model {spec} normalizes with one: give one value")
        if params.mean:
            return {"mean": params.mean[0], "std": params.std[0]}
        return {"mean": x_train.mean().item(), "std": x_train.std().item()}
    if params.mean and len(params.mean) != channels:
        raise ValueError(
            f"train.mean and train.std give {len(params.mean)} values; the images have {channels} channel(s): give one per channel"
        )
    if params.mean:
        return {"mean": list(params.mean), "std": list(params.std)}
    std = x_train.std(dim=(0, 2, 3))
    if (std == 0).any():
        raise ValueError(f"channel {int((std == 0).nonzero()[0])} of the training images is constant: give train.mean and train.std")
    return {"mean": x_train.mean(dim=(0, 2, 3)).tolist(), "std": std.tolist()}


CHECKPOINT_REMEDY = "train.checkpoint must be a state dict: torch.save(model.state_dict(), path)"
WRAPPER_KEYS = {"mean", "std"}  # the state dict keys of an imported model's own buffers (Normalized); its network's are net.*


def initial_model(params: TrainParams, spec: ModelSpec, x_train: torch.Tensor) -> Classifier:
    """The model training starts from: built for the data's shape, normalized, and loaded from train.checkpoint when
    one is given (read with weights_only after a scan that runs none of its code: pickled code is refused unread)."""
    hyper = normalization(params, spec, x_train)
    if not spec.imported:
        hyper |= {"dropout_conv": params.dropout_conv, "dropout_fc": params.dropout_fc}
    model = build_model(spec, **hyper)
    if params.checkpoint:
        state = read_state(params.checkpoint, CHECKPOINT_REMEDY)
        # The network's own state dict; the whole model's (an earlier models/fp32.pt, with its normalization) also loads:
        # told apart by the wrapper's keys, not by a prefix "net." that a network's own submodule may carry.
        whole = not spec.imported or (state.keys() >= WRAPPER_KEYS and all(k in WRAPPER_KEYS or str(k).startswith("net.") for k in state))
        if not whole and params.epochs == 0 and not params.mean:
            raise ValueError(
                f"{params.checkpoint}: a state dict of the network alone carries no input normalization, and train.epochs 0"
                " adapts none: give train.mean and train.std, the values the network was trained with"
            )
        load_state(params.checkpoint, model if whole else model.net, CHECKPOINT_REMEDY, state)
    return model


def check_on_data(model: Classifier, spec: ModelSpec, x: torch.Tensor) -> None:
    """One forward pass on a few training images, in eval mode (no dropout draw, no BatchNorm update): the model must
    take the data's images and give one logit per class the labels index. One line when it does not."""
    shape = "×".join(map(str, spec.input_shape))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward may raise anything; one line names it
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ValueError(
            f"train.model {spec} does not run on the data's {shape} (C×H×W) images ({type(exc).__name__}: {text});"
            " make its input layers take that shape, or give data of the shape it takes"
        ) from exc
    expected = (len(x), spec.classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        fix = (
            f"set its class count (train.model_args) to {spec.classes}"
            if spec.imported
            else f"a built-in model scores {NUM_CLASSES} classes: give labels 0..{NUM_CLASSES - 1}, or a model of your own (file.py:Class)"
        )
        raise ValueError(
            f"train.model {spec} gives {got} for {len(x)} images, but the labels have {spec.classes} classes (0..{spec.classes - 1}):"
            f" it must give {expected}; {fix}"
        )


def evaluated(model: Classifier, x_train, y_train, x_test, y_test, batch_size: int) -> dict[str, float]:
    """train.epochs 0: the checkpoint as it is, measured on both splits in eval mode, as one record of step 0."""
    start = time.perf_counter()
    train_loss, train_acc = evaluate(model, x_train, y_train, batch_size)
    test_loss, test_acc = evaluate(model, x_test, y_test, batch_size)
    tqdm.write(f"no training (train.epochs 0): test accuracy {test_acc:.2f} %")
    return {
        "epoch": 0,
        "train_loss": train_loss,
        "train_accuracy_pct": train_acc,
        "test_loss": test_loss,
        "test_accuracy_pct": test_acc,
        "epoch_time_s": time.perf_counter() - start,
    }
