"""Quantization methods by name (the catalog), one module per runtime under methods/, and the accuracy-aware search."""
