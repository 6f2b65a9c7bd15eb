"""What the benchmark measures and how: the machine, timings in processes of their own, the GEMM roofline,
per-operator profiles, memory, and the combined metrics."""
