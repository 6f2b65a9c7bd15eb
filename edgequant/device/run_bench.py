"""The device side of the bench bundle: time the shipped artifacts with only their runtimes installed, write the metrics JSON.

Copied into the bundle as `run_bench.py`, beside `machine.py`, `zipcheck.py` and `flatcheck.py`; it imports numpy,
onnxruntime for `.onnx` and ExecuTorch's runtime for `.pte`, and nothing of the training stack. Usage on the device:

    python run_bench.py --threads 1 2 --out benchmark.json

Then, on a machine with edgequant: `python -m edgequant.fleet.table benchmark.json --machine machine.json --out machines`
(the runner writes `machine.json` beside its output) makes the device one more row of the fleet report.

A bundle comes from another machine, so the runner trusts nothing in it: it reads only regular files inside its
own folder, named by a manifest it validates, checks every model and the inputs before a runtime or numpy parses
them, and checks that it can write its output before it spends minutes measuring. Each refusal is one line.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath

import numpy as np

try:  # in the bundle these sit beside this file; in the package they are edgequant's
    from flatcheck import check_pte, planned_limit
    from machine import probe
    from zipcheck import MAX_ARTIFACT_BYTES, read_regular, read_zip
except ImportError:
    from edgequant.artifacts.flatcheck import check_pte, planned_limit
    from edgequant.artifacts.zipcheck import MAX_ARTIFACT_BYTES, read_regular, read_zip
    from edgequant.measure.machine import probe

HERE = Path(__file__).resolve().parent
REBUILD = "rebuild the bundle (`dvc repro bundle`) and copy it again"
MAX_MANIFEST_BYTES = 2**20  # a manifest lists a few files per method: a few KB
# The bundle ships 1000 test images as float32 (3.1 MB); 64 MiB allows twenty times that, not millions of images.
MAX_INPUT_BYTES = 64 * 2**20
MAX_GEMM_N = 4096  # the bundle's roofline GEMMs are 512x512; each operand is n*n values
MAX_BATCH = 100_000  # above any test set the benchmark could batch
METHOD = re.compile(r"[a-z0-9_]+")
NPZ_ARRAYS = ("images", "labels", "fp32_predictions")


class BundleError(ValueError):
    """The bundle cannot be measured as it is: one line naming the file and what to do."""


def bundle_file(bundle: Path, name: str, limit: int) -> bytes:
    """The bytes of `name`, a regular file inside the bundle reached through no symbolic link."""
    try:
        return read_regular(bundle / name, bundle, limit)
    except ValueError as exc:
        raise BundleError(f"{bundle / name}: {exc}; {REBUILD}") from exc


def _bad(bundle: Path, name: str, problem: str) -> BundleError:
    return BundleError(f"{bundle / name}: {problem}; {REBUILD}")


def read_manifest(bundle: Path) -> dict:
    """manifest.json, every field checked: the model files it names are plain paths inside the bundle."""
    try:
        manifest = json.loads(bundle_file(bundle, "manifest.json", MAX_MANIFEST_BYTES))
        macs, methods = manifest["macs_per_image"], manifest["methods"]
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _bad(bundle, "manifest.json", f"not a bundle manifest ({type(exc).__name__}: {exc})") from exc
    if not (isinstance(macs, int | float) and 0 < macs < math.inf) or not isinstance(methods, dict) or not methods:
        raise _bad(bundle, "manifest.json", "no positive macs_per_image or no methods")
    for name, m in methods.items():
        if not METHOD.fullmatch(name) or not isinstance(m, dict):
            raise _bad(bundle, "manifest.json", f"a method named {name!r}")
        files = m.get("files")
        if not all(isinstance(m.get(key), str) for key in ("runtime", "precision", "baseline")) or m["precision"] not in ("fp32", "int8"):
            raise _bad(bundle, "manifest.json", f"method {name} without a runtime, a precision (fp32 or int8) and a baseline")
        if not isinstance(files, dict) or not files:
            raise _bad(bundle, "manifest.json", f"method {name} names no files")
        for batch, path in files.items():
            parts = PurePosixPath(path).parts if isinstance(path, str) else ()
            if not (isinstance(batch, str) and batch.isdigit() and 0 < int(batch) <= MAX_BATCH):
                raise _bad(bundle, "manifest.json", f"method {name} has a batch size {batch!r}")
            if len(parts) != 2 or parts[0] != name or "\\" in path or parts[1] in (".", "..") or Path(path).suffix not in RUNNERS:
                raise _bad(bundle, "manifest.json", f"method {name} names {path!r}, not a .onnx or .pte file in its folder {name}/")
    return manifest


def ort_runner(model: bytes, threads: int, where: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    try:
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own classes, not RuntimeError; re-raised as one line
        raise BundleError(f"{where}: ONNX Runtime refuses it ({str(exc).strip().splitlines()[0][:200]}); {REBUILD}") from exc
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def pte_runner(model: bytes, threads: int, where: Path):
    import torch  # ExecuTorch's runtime takes torch tensors
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    try:
        method = Runtime.get().load_program(model).load_method("forward")
    except RuntimeError as exc:
        raise BundleError(f"{where}: ExecuTorch refuses it ({str(exc).strip().splitlines()[0]}); {REBUILD}") from exc

    def run(x: np.ndarray) -> np.ndarray:
        return method.execute([torch.from_numpy(x)])[0].numpy()

    run.keep_alive = model  # ExecuTorch reads the program from these bytes without owning them
    return run


RUNNERS = {".onnx": ort_runner, ".pte": pte_runner}


def load_models(bundle: Path, manifest: dict) -> dict[str, bytes]:
    """Every model file the manifest names, read and checked before anything is timed, so a damaged one is
    refused at once rather than after minutes of measuring (and a random .pte never reaches ExecuTorch)."""
    models = {}
    for m in manifest["methods"].values():
        for batch, name in sorted((int(bs), f) for bs, f in m["files"].items()):
            models[name] = bundle_file(bundle, name, MAX_ARTIFACT_BYTES)
            if name.endswith(".pte"):
                try:
                    check_pte(models[name], planned_limit(batch))
                except ValueError as exc:
                    raise _bad(bundle, name, f"not an ExecuTorch program this runner can load ({exc})") from exc
    return models


def runner(bundle: Path, models: dict[str, bytes], name: str, threads: int):
    """A callable running the checked model file `name` with `threads` threads."""
    return RUNNERS[Path(name).suffix](models[name], threads, bundle / name)


def load_inputs(bundle: Path) -> dict[str, np.ndarray]:
    """inputs.npz's images, labels and FP32 predictions: each array's header (shape, dtype) is checked against the
    bytes present, and the arrays are views of those bytes, so a header declaring millions of images allocates nothing."""
    data = bundle_file(bundle, "inputs.npz", MAX_INPUT_BYTES)
    try:
        records = read_zip(data, folder=False, deflated=re.compile(r".*"), limit=MAX_INPUT_BYTES)
        if sorted(records) != sorted(f"{a}.npy" for a in NPZ_ARRAYS):
            raise ValueError(f"arrays {sorted(records)}, not {list(NPZ_ARRAYS)}")
        arrays = {name[:-4]: _npy(bytes(record)) for name, record in records.items()}
    except ValueError as exc:
        raise _bad(bundle, "inputs.npz", str(exc)) from exc
    images, labels, expected = (arrays[a] for a in NPZ_ARRAYS)
    if images.dtype != np.float32 or images.ndim != 4 or not len(images) == len(labels) == len(expected) > 0:
        raise _bad(bundle, "inputs.npz", f"images {images.shape} {images.dtype}, {len(labels)} labels and {len(expected)} predictions")
    if labels.ndim != 1 or expected.ndim != 1 or labels.dtype.kind not in "iu" or expected.dtype.kind not in "iu":
        raise _bad(bundle, "inputs.npz", "labels or predictions that are not one integer per image")
    return arrays


def _npy(record: bytes) -> np.ndarray:
    f = io.BytesIO(record)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    version = np.lib.format.read_magic(f)
    if version not in readers:
        raise ValueError(f"an array in .npy format {version}, not what numpy.savez writes")
    shape, fortran, dtype = readers[version](f)
    if dtype.hasobject or math.prod(shape) * dtype.itemsize != len(record) - f.tell():
        raise ValueError(f"an array of shape {shape} and {dtype} in {len(record) - f.tell()} bytes")
    return np.frombuffer(bytearray(record), dtype, offset=f.tell()).reshape(
        shape, order="F" if fortran else "C"
    )  # writable, as torch wants


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
    try:
        spec = json.loads(bundle_file(bundle, "gemm.json", MAX_MANIFEST_BYTES))
        n = spec["n"]
        engines = {p: str(spec[p]) for p in ("fp32", "int8")}
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise _bad(bundle, "gemm.json", f"not a GEMM spec ({type(exc).__name__}: {exc})") from exc
    if type(n) is not int or not 0 < n <= MAX_GEMM_N:
        raise _bad(bundle, "gemm.json", f"n = {n!r}, not a size from 1 to {MAX_GEMM_N}")
    result = {}
    for precision in ("fp32", "int8"):
        x = np.random.default_rng(0).random((n, n), dtype=np.float32) if precision == "fp32" else np.full((n, n), 7, np.uint8)
        name = f"gemm_{precision}.onnx"
        median, _ = timed(ort_runner(bundle_file(bundle, name, MAX_ARTIFACT_BYTES), threads, bundle / name), x, seconds)
        result[f"{precision}_gmacs"], result[f"{precision}_engine"] = n**3 / median / 1e9, f"onnxruntime {engines[precision]}"
    return result


def measure(bundle: Path, threads: list[int], seconds: float) -> dict:
    manifest = read_manifest(bundle)
    models = load_models(bundle, manifest)
    data = load_inputs(bundle)
    x, labels, expected = data["images"], data["labels"], data["fp32_predictions"]
    metrics: dict = {"macs_per_image": manifest["macs_per_image"], "peak": {}, "methods": {}, "machine": probe()}
    for t in threads:
        metrics["peak"][f"threads_{t}"] = gemm_peak(bundle, t, seconds)
    for name, m in manifest["methods"].items():
        files = {int(bs): f for bs, f in m["files"].items()}
        batch, small = max(files), min(files)
        entry = {
            "runtime": m["runtime"],
            "precision": m["precision"],
            "baseline": m["baseline"],
            "size_bytes": len(models[files[small]]),
        }
        run = runner(bundle, models, files[batch], threads[-1])
        predictions = np.concatenate(
            [run(pad(x[i : i + batch], batch))[: len(x[i : i + batch])].argmax(1) for i in range(0, len(x), batch)]
        )
        entry["accuracy_pct"] = 100.0 * float((predictions == labels).mean())
        entry["agreement_with_fp32_pct"] = 100.0 * float((predictions == expected).mean())
        for t in threads:
            lat, _ = timed(runner(bundle, models, files[small], t), pad(x[:small], small), seconds)
            per_batch, _ = timed(runner(bundle, models, files[batch], t), pad(x[:batch], batch), seconds)
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


def check_writable(out: Path) -> None:
    """Refuse an output the runner could not write, before it measures for minutes (a read-only bundle folder)."""
    try:
        if out.is_dir():
            raise IsADirectoryError(21, "a directory")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=".run_bench.", suffix=".tmp"):
            pass
    except OSError as exc:
        raise BundleError(f"cannot write {out} ({exc.strerror or exc}); pass --out a path in a writable folder") from exc


def save(metrics: dict, out: Path) -> Path:
    """Write the metrics to `out` and the machine record beside it, each whole or not at all; where that fails
    (the disk filled up, the folder went away), write both to the temporary directory and return where."""
    texts = {out: json.dumps(metrics, indent=2) + "\n", out.parent / "machine.json": json.dumps(metrics["machine"], indent=2) + "\n"}
    try:
        for path, text in texts.items():
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        return out
    except OSError:
        fallback = Path(tempfile.mkdtemp(prefix="run_bench-"))
        for path, text in texts.items():
            (fallback / path.name).write_text(text)
        return fallback / out.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark the bundle's artifacts on this device.")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--seconds", type=float, default=1.0, help="each timing runs at least this long")
    parser.add_argument("--out", type=Path, default=Path("benchmark.json"))
    args = parser.parse_args(argv)
    if min(args.threads) < 1 or not 0 < args.seconds < math.inf:
        parser.error("--threads must be positive and --seconds a positive number")
    try:
        check_writable(args.out)
        metrics = measure(HERE, sorted(set(args.threads)), args.seconds)
    except BundleError as exc:
        print(f"run_bench: {exc}", file=sys.stderr)
        return 1
    written = save(metrics, args.out)
    if written != args.out:
        print(f"run_bench: could not write {args.out}; the results are in {written} (and machine.json beside it)", file=sys.stderr)
        return 1
    print(f"{len(metrics['methods'])} methods on {metrics['machine']['name']} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
