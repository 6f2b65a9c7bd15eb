"""Stage `loadgen`: every exported method through MLPerf LoadGen, SingleStream latency and Offline throughput."""

import argparse
import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

from edgequant import stage
from edgequant.artifacts.read import read_record
from edgequant.data.splits import load_prepared
from edgequant.files import atomic_dir, require_free_space, write_json
from edgequant.measure.loadgen import MLPERF_MODEL, measure_all, settings, skipped_methods
from edgequant.measure.processes import clamp_threads
from edgequant.quantize.catalog import import_runtime
from edgequant.validate import load_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="directory with one sub-directory per method")
    parser.add_argument("--test", required=True, help="prepared test split: LoadGen's query samples")
    parser.add_argument("--machine", required=True, help="the probe stage's machine record, JSON")
    parser.add_argument("--metrics", required=True, help="output: LoadGen's verdict and figures per method and scenario, JSON")
    parser.add_argument("--logs", required=True, help="output: LoadGen's own logs, <logs>/<method>/<scenario>/mlperf_log_*")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        start = time.perf_counter()
        require_free_space(args.metrics, args.logs)
        everything = load_all(args.params)
        p, bench, listed = everything.loadgen, everything.benchmark, everything.quantize.methods
        import_runtime("mlperf_loadgen", "mlcommons-loadgen", "the loadgen stage")  # one line naming the package when absent
        artifacts = Path(args.artifacts)
        skipped = skipped_methods(artifacts, listed, json.loads(Path(args.machine).read_text()))
        methods = [m for m in listed if m not in skipped]
        for m in methods:  # a missing or damaged record is refused here, in one line naming it, as the benchmark does
            read_record(artifacts, m)
        bench.check_batches(len(load_prepared(args.test)["labels"]), args.test)
        threads = clamp_threads(bench.threads)[0]  # the edge device's case, as the benchmark's per-operator profile
        with atomic_dir(args.logs) as logs:
            measured = measure_all(p, methods, threads, artifacts, args.test, logs, (bench.latency_batch, bench.throughput_batch))
        write_json(
            args.metrics,
            {
                "loadgen_version": version("mlcommons-loadgen"),
                "official": p.official,
                "mlperf_model": MLPERF_MODEL if p.official else None,
                "threads": threads,
                "minimums": {s: settings(p, s) for s in ("SingleStream", "Offline")},
                "methods": measured,
                "skipped": skipped,
                "run_time_s": time.perf_counter() - start,
            },
        )
        invalid = [f"{m} {s}" for m, r in measured.items() for s, v in r.items() if v["result"] != "VALID"]
        notes = (f"; INVALID: {', '.join(invalid)}" if invalid else "; all VALID") + (f"; skipped {', '.join(skipped)}" if skipped else "")
        return f"{len(methods)} methods x 2 scenarios -> {args.metrics}{notes}"

    return stage.run("loadgen", body)


if __name__ == "__main__":
    sys.exit(main())
