"""Built-in quantization methods; importing this package registers them (heavy runtimes load lazily)."""

from edgequant.methods import eager, executorch, onnx, pt2e  # noqa: F401
