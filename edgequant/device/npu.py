"""Arm Ethos-U NPU estimates from the Vela compiler for an INT8 .tflite: cycles, latency, memory, operator placement."""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

from edgequant.artifacts.read import read_tflite
from edgequant.quantize.catalog import import_runtime

KIND = "compiler estimate (Vela), not a measurement"
METHOD = "litert_int8"  # the method whose .tflite Vela compiles: the npu stage in dvc.yaml depends on its artifacts
# The system configuration and memory mode Vela itself picks for each accelerator when none is named
# (its bundled vela.ini), named explicitly so the numbers say what they assume. The clock comes from
# them: 500 MHz for Ethos_U55_High_End_Embedded, 1 GHz for Ethos_U85_SYS_DRAM_Mid.
TARGETS = {
    "ethos-u55-128": ("Ethos_U55_High_End_Embedded", "Shared_Sram"),
    "ethos-u85-256": ("Ethos_U85_SYS_DRAM_Mid", "Dedicated_Sram_384KB"),
}
VELA_TIMEOUT_S = 300
LAYER_COLUMNS = ("accelerator", "operator", "npu_operator", "target", "est_cycles", "est_cycles_share_pct", "macs", "name")


def run_vela(tflite: Path, accelerator: str, out_dir: Path) -> None:
    """Compile `tflite` for `accelerator` into `out_dir`, where Vela writes its summary and per-layer CSVs.
    A failure is a one-line ValueError with Vela's last line."""
    import_runtime("ethosu.vela", "ethos-u-vela", "the npu stage")
    system, memory = TARGETS[accelerator]
    command = [sys.executable, "-c", "import sys; from ethosu.vela.vela import main; sys.exit(main())", str(tflite)]
    command += ["--accelerator-config", accelerator, "--system-config", system, "--memory-mode", memory]
    command += ["--output-dir", str(out_dir), "--verbose-performance"]  # the per-layer CSV
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=VELA_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise ValueError(f"{tflite}: Vela did not finish for {accelerator} within {VELA_TIMEOUT_S} s") from exc
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        raise ValueError(f"{tflite}: Vela failed for {accelerator} (exit {proc.returncode}: {lines[-1] if lines else 'no output'})")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise ValueError(f"Vela wrote no {path.name}; its output format may have changed (ethos-u-vela==5.2.0 is the one read here)")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def estimate(tflite: Path, accelerator: str) -> tuple[dict, list[dict]]:
    """Vela's summary for one accelerator (per inference, labelled est_*) and its per-layer rows (LAYER_COLUMNS)."""
    read_tflite(tflite, "re-run `dvc repro quantize@litert_int8`")
    system, _ = TARGETS[accelerator]
    with tempfile.TemporaryDirectory() as tmp:
        run_vela(tflite, accelerator, Path(tmp))
        (summary,) = _read_csv(Path(tmp) / f"{tflite.stem}_summary_{system}.csv")
        layers = _read_csv(Path(tmp) / f"{tflite.stem}_per-layer.csv")
    batch, clock_hz = int(float(summary["batch_size"])), float(summary["core_clock"])
    # Placement from the per-layer table, one row per operator as Vela runs it (a fused ReLU is a row of its own):
    # Vela's printed "NPU operators = N" counts differently with and without --show-cpu-operations.
    targets = [row["Target"] for row in layers]
    cycles = float(summary["cycles_total"]) / batch
    if "NPU" not in targets:
        raise ValueError(f"{tflite}: Vela placed no operator on the {accelerator} NPU (an FP32 or float-input model?): nothing to estimate")
    result = {
        "system_config": summary["system_config"],
        "memory_mode": summary["memory_mode"],
        "clock_mhz": clock_hz / 1e6,
        "batch": batch,
        "est_cycles_per_inference": cycles,
        "est_npu_cycles_per_inference": float(summary["cycles_npu"]) / batch,
        "est_latency_ms": cycles / clock_hz * 1e3,
        "est_inferences_per_s": clock_hz / cycles,
        "est_macs_per_inference": int(float(summary["nn_macs"])) // batch,
        "sram_used_kib": float(summary["sram_memory_used"]),
        "flash_used_kib": float(summary["off_chip_flash_memory_used"]) + float(summary["on_chip_flash_memory_used"]),
        "dram_used_kib": float(summary["dram_memory_used"]),
        "weights_storage": summary["weights_storage_area"],
        "npu_operators": targets.count("NPU"),
        "cpu_operators": len(targets) - targets.count("NPU"),
        # Vela's cycles cover the NPU's work only: a layer that falls back to the CPU is not in the latency.
        "cpu_fallback": sorted({row["Original Operator"] for row in layers if row["Target"] != "NPU"}),
    }
    rows = [
        {
            "accelerator": accelerator,
            "operator": row["Original Operator"],
            "npu_operator": row["NNG Operator"],
            "target": row["Target"],
            "est_cycles": int(float(row["Op Cycles"])),
            "est_cycles_share_pct": float(row["Network% (cycles)"]),
            "macs": int(float(row["MAC Count"])),
            "name": row["Name"],
        }
        for row in layers
    ]
    return result, rows


def estimate_all(tflite: Path, accelerators: tuple[str, ...] = tuple(TARGETS)) -> tuple[dict, list[dict]]:
    """The metrics JSON (every figure a Vela estimate, so said at the top) and the per-layer rows of every accelerator."""
    metrics: dict = {"kind": KIND, "model": tflite.name, "accelerators": {}}
    rows: list[dict] = []
    for accelerator in accelerators:
        metrics["accelerators"][accelerator], layer_rows = estimate(tflite, accelerator)
        rows += layer_rows
    return metrics, rows
