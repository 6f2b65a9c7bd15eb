"""Stage `benchmark`: measure every method's size, accuracy, latency and throughput on this machine."""

import argparse
import csv
import json
import sys
from pathlib import Path

from edgequant import stage
from edgequant.data.splits import load_prepared
from edgequant.files import atomic_path, require_free_space, write_json
from edgequant.measure.ops import OP_COLUMNS, op_rows
from edgequant.measure.processes import clamp_threads, measure_all
from edgequant.measure.summary import accuracy, layer_rows, summarize
from edgequant.measure.timing import machine_info
from edgequant.model.layers import conv_macs
from edgequant.model.zoo import common_model
from edgequant.quantize.catalog import get_method
from edgequant.quantize.refusal import refusals, with_precision_refusals
from edgequant.quantize.search import search_metrics
from edgequant.validate import load_all


def write_csv(path: str, rows: list[dict], columns: tuple[str, ...] | None = None) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns or rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_meta(artifacts: Path, method: str) -> dict:
    """A method's meta.json, with the size of the file it ships measured now, not taken from the record."""
    from edgequant.artifacts.read import read_record

    meta, shipped = read_record(artifacts, method)
    return {**meta, "size_bytes": shipped.stat().st_size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifacts", required=True, help="directory with one sub-directory per method")
    parser.add_argument("--test", required=True, help="prepared test split")
    parser.add_argument("--machine", required=True, help="the probe stage's machine record, JSON")
    parser.add_argument("--metrics", required=True, help="output: combined metrics JSON")
    parser.add_argument("--sqnr", required=True, help="output: per-layer SQNR metrics JSON")
    parser.add_argument("--csv", required=True, help="output: one row per (method, threads)")
    parser.add_argument("--layers-csv", required=True, help="output: MACs and SQNR per layer")
    parser.add_argument("--ops-csv", required=True, help="output: time per operator, per method (smallest thread count)")
    parser.add_argument("--settings", required=True, help="output: each method's export settings (layers kept in FP32), JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        require_free_space(args.metrics, args.sqnr, args.settings, args.csv, args.layers_csv, args.ops_csv)
        everything = load_all(args.params)
        p, listed = everything.benchmark, everything.quantize.methods
        artifacts = Path(args.artifacts)
        # A method its runtime refused (or whose FP32 baseline it refused), or whose precision this CPU lacks, is listed,
        # not measured; the gate judges it.
        refused = refusals(artifacts, listed, {m: get_method(m).baseline for m in listed})
        if "fp32" in refused:
            raise ValueError(
                f"{refused['fp32']}: eager PyTorch is the baseline every method is measured against; re-run `dvc repro quantize@fp32`"
            )
        meta = {m: read_meta(artifacts, m) for m in listed if m not in refused}  # the artifacts are checked first
        machine = json.loads(Path(args.machine).read_text())
        refused = with_precision_refusals(refused, listed, machine)
        methods = [m for m in listed if m not in refused]
        model = common_model(artifacts, methods)
        labels = load_prepared(args.test)["labels"]
        p.check_batches(len(labels), args.test)
        threads = clamp_threads(p.threads)
        peaks, runs, predictions, logits, ops = measure_all(p, methods, threads, artifacts, args.test)
        sizes = {m: meta[m]["size_bytes"] for m in methods}
        metrics, rows = summarize(methods, sizes, runs, peaks, accuracy(methods, predictions, logits, labels), model)
        for m in methods:  # an accuracy-aware search's budget, met or not: the gate judges it from here
            metrics["methods"][m].update(search_metrics(meta[m].get("settings")))
        metrics["machine"] = machine_info(machine)
        metrics["refused"] = refused
        sqnr = {m: meta[m]["sqnr_db"] for m in methods if meta[m].get("sqnr_db")}
        conv = conv_macs(model)  # per image, one figure for every method's rows
        op_table = [
            row
            for m in methods
            for row in op_rows(m, get_method(m).runtime, get_method(m).precision, threads[0], p.throughput_batch, conv, ops.get(m, {}))
        ]
        write_json(args.metrics, metrics)
        write_json(args.sqnr, sqnr)
        write_json(args.settings, {m: meta[m].get("settings") for m in methods})
        write_csv(args.csv, rows)
        write_csv(args.layers_csv, layer_rows(sqnr, model))
        write_csv(args.ops_csv, op_table, OP_COLUMNS)  # header only when benchmark.profile_runs is 0
        skipped = f" ({len(refused)} refused: {'; '.join(refused.values())})" if refused else ""
        unused = f"; fewer threads than given: {'; '.join(metrics['threads_unused'])}" if metrics["threads_unused"] else ""
        return f"{len(methods)} methods x {len(threads)} thread count(s) -> {args.metrics}{skipped}{unused}"

    return stage.run("benchmark", body)


if __name__ == "__main__":
    sys.exit(main())
