"""The device side of the bench bundle: time the shipped artifacts with only their runtimes installed, write the metrics JSON.

Copied into the bundle as `run_bench.py`, beside `machine.py`; it imports numpy, onnxruntime for `.onnx`
and ExecuTorch's runtime for `.pte`, and nothing of the training stack. Usage on the device:

    python run_bench.py --threads 1 2 --out benchmark.json

Then, on a machine with edgequant: `python -m edgequant.fleet benchmark.json --machine machine.json --out machines`
(the runner writes `machine.json` beside its output) makes the device one more row of the fleet report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:  # in the bundle, machine.py sits beside this file; in the package it is edgequant.machine
    from machine import probe
except ImportError:
    from edgequant.machine import probe

HERE = Path(__file__).resolve().parent


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def pte_runner(path: Path, threads: int):
    import torch  # ExecuTorch's runtime takes torch tensors
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([torch.from_numpy(x)])[0].numpy()


RUNNERS = {".onnx": ort_runner, ".pte": pte_runner}


def timed(run, x: np.ndarray, seconds: float) -> tuple[float, int]:
    """Median seconds per call over repeated blocks lasting at least `seconds`, and the calls timed."""
    run(x)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), len(times)


def gemm_peak(bundle: Path, threads: int, seconds: float) -> dict:
    """GMAC/s of the bundle's n×n GEMMs in ONNX Runtime (the device's roofline; other engines are not installed)."""
    result = {}
    for precision in ("fp32", "int8"):
        path = bundle / f"gemm_{precision}.onnx"
        spec = json.loads((bundle / "gemm.json").read_text())
        n = spec["n"]
        x = np.random.default_rng(0).random((n, n), dtype=np.float32) if precision == "fp32" else np.full((n, n), 7, np.uint8)
        median, _ = timed(ort_runner(path, threads), x, seconds)
        result[f"{precision}_gmacs"], result[f"{precision}_engine"] = n**3 / median / 1e9, f"onnxruntime {spec[precision]}"
    return result


def measure(bundle: Path, threads: list[int], seconds: float) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    data = np.load(bundle / "inputs.npz")
    x, labels, expected = data["images"], data["labels"], data["fp32_predictions"]
    metrics: dict = {"macs_per_image": manifest["macs_per_image"], "peak": {}, "methods": {}, "machine": probe()}
    for t in threads:
        metrics["peak"][f"threads_{t}"] = gemm_peak(bundle, t, seconds)
    for name, m in manifest["methods"].items():
        files = {int(bs): bundle / f for bs, f in m["files"].items()}
        batch = max(files)
        entry = {
            "runtime": m["runtime"],
            "precision": m["precision"],
            "baseline": m["baseline"],
            "size_bytes": files[min(files)].stat().st_size,
        }
        run = RUNNERS[files[batch].suffix](files[batch], threads[-1])
        predictions = np.concatenate(
            [run(pad(x[i : i + batch], batch))[: len(x[i : i + batch])].argmax(1) for i in range(0, len(x), batch)]
        )
        entry["accuracy_pct"] = 100.0 * float((predictions == labels).mean())
        entry["agreement_with_fp32_pct"] = 100.0 * float((predictions == expected).mean())
        for t in threads:
            lat, _ = timed(RUNNERS[files[min(files)].suffix](files[min(files)], t), x[: min(files)], seconds)
            per_batch, _ = timed(RUNNERS[files[batch].suffix](files[batch], t), pad(x[:batch], batch), seconds)
            ips = batch / per_batch
            peak = metrics["peak"][f"threads_{t}"][f"{m['precision']}_gmacs"]
            entry[f"threads_{t}"] = {
                "latency_ms_p50": lat * 1e3,
                "throughput_ips": ips,
                "gmacs": manifest["macs_per_image"] * ips / 1e9,
                "peak_fraction": manifest["macs_per_image"] * ips / 1e9 / peak,
                "throughput_speedup_vs_fp32_eager": None,  # no PyTorch on the device
            }
        metrics["methods"][name] = entry
    for entry in metrics["methods"].values():  # INT8 against its own runtime's FP32, measured here
        base = metrics["methods"].get(entry["baseline"])
        entry["size_ratio_vs_runtime_fp32"] = entry["size_bytes"] / base["size_bytes"] if base else None
        entry["accuracy_drop_pp"] = base["accuracy_pct"] - entry["accuracy_pct"] if base else None
        for t in threads:
            own = base[f"threads_{t}"]["throughput_ips"] if base else None
            entry[f"threads_{t}"]["throughput_speedup_vs_runtime_fp32"] = entry[f"threads_{t}"]["throughput_ips"] / own if own else None
    return metrics


def pad(x: np.ndarray, batch: int) -> np.ndarray:
    """Static-shape artifacts take exactly `batch` images: the last partial batch is zero-padded."""
    return x if len(x) == batch else np.concatenate([x, np.zeros((batch - len(x), *x.shape[1:]), x.dtype)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the bundle's artifacts on this device.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="each timing runs at least this long")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"))
    args = parser.parse_args(argv)
    metrics = measure(HERE, sorted(args.threads), args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(metrics, indent=2) + "\n")
    (args.out.parent / "machine.json").write_text(json.dumps(metrics["machine"], indent=2) + "\n")
    print(f"{len(metrics['methods'])} methods on {metrics['machine']['name']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
