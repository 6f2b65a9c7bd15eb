"""Stage `bundle`: the bench bundle a device runs with only the runtimes installed (`python run_bench.py`)."""

import argparse
import sys
from pathlib import Path

from edgequant import params, stage
from edgequant.device.bundle import make_bundle

IMAGES = 1000  # test images the device checks accuracy on: enough to see a flip rate, small enough to copy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="directory with one sub-directory per method")
    parser.add_argument("--test", required=True, help="prepared test split")
    parser.add_argument("--out", required=True, help="output: the bundle folder")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        methods = params.load(params.QuantizeParams, "quantize", args.params).methods
        bench = params.load(params.BenchmarkParams, "benchmark", args.params)
        batches = sorted({bench.latency_batch, bench.throughput_batch})
        kept = make_bundle(Path(args.artifacts), Path(args.test), methods, batches, IMAGES, Path(args.out))
        return f"{', '.join(kept)} -> {args.out} (on the device: python run_bench.py --threads 1 2)"

    return stage.run("bundle", body)


if __name__ == "__main__":
    sys.exit(main())
