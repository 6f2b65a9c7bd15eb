"""The reference result edgequant reproduces: the classic MNIST CNN, 3 epochs, FP32 and dynamic INT8, on CPU."""

REFERENCE = {
    "dataset": "mnist",
    "model": "cnn",
    "train_loss_per_epoch": [0.1716, 0.0566, 0.0397],
    "fp32_accuracy_pct": 98.97,
    "dynamic_int8_accuracy_pct": 98.98,
    "fp32_size_bytes": 4690.61 * 1024,
    "dynamic_int8_size_bytes": 1232.20 * 1024,
    # Whole test set on CPU, seconds: dynamic quantization left the convolutions in FP32.
    "fp32_eval_s": 5.04,
    "dynamic_int8_eval_s": 5.00,
}


def is_reference(dataset: str, model: str) -> bool:
    """Whether a run is of the reference workload, so its figures may be drawn beside the reference's."""
    return (dataset, model) == (REFERENCE["dataset"], REFERENCE["model"])
