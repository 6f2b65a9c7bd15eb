"""edgequant: train a CNN on MNIST, quantize it to INT8 and measure what that costs and buys."""

__version__ = "0.1.0"
