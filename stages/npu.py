"""Stage `npu`: Vela's Ethos-U estimates (cycles, latency, SRAM and flash, NPU vs CPU operators) for litert_int8's .tflite."""

import argparse
import csv
import sys
from pathlib import Path

from edgequant import params, stage
from edgequant.device.npu import KIND, LAYER_COLUMNS, METHOD, estimate_all
from edgequant.files import atomic_path, write_json
from edgequant.quantize.methods.litert import file_name
from edgequant.quantize.refusal import refusal


def write_rows(path: str, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(LAYER_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="litert_int8's directory under models/quantized")
    parser.add_argument("--metrics", required=True, help="output: the estimates per accelerator, JSON")
    parser.add_argument("--csv", required=True, help="output: Vela's per-layer estimate, one row per accelerator and layer")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        # An NPU runs one image at a time: the latency batch's file is the one compiled.
        batch = params.load(params.BenchmarkParams, "benchmark", args.params).latency_batch
        tflite = Path(args.artifacts) / file_name(batch)
        if refused := refusal(Path(args.artifacts)):  # nothing for Vela to compile: recorded, as the benchmark records it
            write_json(args.metrics, {"kind": KIND, "model": tflite.name, "refused": refused, "accelerators": {}})
            write_rows(args.csv, [])
            return f"no estimate: {refused}"
        if not tflite.is_file():
            raise ValueError(f"no {tflite}: re-run `dvc repro quantize@{METHOD}` (quantize.methods must list {METHOD})")
        metrics, rows = estimate_all(tflite)
        write_json(args.metrics, metrics)
        write_rows(args.csv, rows)
        latency = ", ".join(f"{name} {m['est_latency_ms']:.2f} ms" for name, m in metrics["accelerators"].items())
        return f"estimated latency per inference (Vela, not measured): {latency} -> {args.metrics}"

    return stage.run("npu", body)


if __name__ == "__main__":
    sys.exit(main())
