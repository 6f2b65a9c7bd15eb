"""Stage `vendor`: the harness beside OpenVINO's benchmark_app and LiteRT's litert-benchmark, each method's cold start and memory,
and the harness's dispatch overhead over the runtime's own clock (ONNX Runtime, ExecuTorch) at batch 1."""

import argparse
import json
import sys
import time
from pathlib import Path

from edgequant import stage
from edgequant.data.splits import load_prepared
from edgequant.files import require_free_space, write_json, write_text
from edgequant.measure.processes import clamp_threads
from edgequant.measure.vendorplan import measure_vendor, refused_at_export
from edgequant.quantize.refusal import with_precision_refusals
from edgequant.report.vendortable import vendor_markdown
from edgequant.validate import load_all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="directory with one sub-directory per method")
    parser.add_argument("--test", required=True, help="prepared test split (the harness's input batch)")
    parser.add_argument("--machine", required=True, help="the probe stage's machine record, JSON")
    parser.add_argument("--out", required=True, help="output: metrics JSON")
    parser.add_argument("--md", required=True, help="output: the three tables, Markdown")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        start = time.perf_counter()
        require_free_space(args.out, args.md)
        everything = load_all(args.params)
        p, listed = everything.benchmark, everything.quantize.methods
        artifacts = Path(args.artifacts)
        # {method: why}: refused at export, or its precision lacking in this CPU (BF16 without BF16 instructions)
        refused = refused_at_export(artifacts, listed)
        machine = json.loads(Path(args.machine).read_text())
        refused = with_precision_refusals(refused, listed, machine)
        p.check_batches(len(load_prepared(args.test)["labels"]), args.test)
        metrics = measure_vendor(everything.vendor, p, listed, refused, artifacts, args.test, clamp_threads(p.threads))
        metrics["run_time_s"] = time.perf_counter() - start
        write_json(args.out, metrics)
        write_text(args.md, vendor_markdown(metrics))
        cells = sum(len(v) for v in metrics["ratios"].values())
        missed = sum(not r["agrees_within_5pct"] for v in metrics["ratios"].values() for r in v.values())
        skipped = f", skipped: {'; '.join(f'{m} ({why})' for m, why in metrics['skipped'].items())}" if metrics["skipped"] else ""
        return (
            f"{cells} harness/tool cell(s), {missed} outside 5 %; cold start of {len(metrics['cold_start']['methods'])} method(s);"
            f" {len(metrics['dispatch']['methods'])} on their runtime's own clock; in {metrics['run_time_s']:.0f} s -> {args.out}{skipped}"
        )

    return stage.run("vendor", body)


if __name__ == "__main__":
    sys.exit(main())
