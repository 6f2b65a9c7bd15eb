"""Models by name, their training, and what is counted per layer (MACs, SQNR)."""
