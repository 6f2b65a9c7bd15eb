"""Stage `quantize@<method>`: export the FP32 model with one registered method into its own directory."""

import argparse
import sys
import time
from pathlib import Path

from edgequant import params, stage
from edgequant.data.splits import load_prepared, to_input
from edgequant.files import atomic_dir, require_free_space, write_json
from edgequant.measure.memory import peak_rss_mib
from edgequant.model.zoo import fp32_model
from edgequant.quantize.catalog import Labelled, get_method, record
from edgequant.quantize.refusal import Unsupported, runtime_refusals
from edgequant.quantize.refusal import record as refusal_record
from edgequant.tracked import module_files

SQNR_IMAGES = 512  # test images used to measure per-layer SQNR (a diagnostic; never used to calibrate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", required=True, help="FP32 state dict from the train stage")
    parser.add_argument("--calib", required=True, help="prepared calibration images (calib.pt)")
    parser.add_argument("--val", required=True, help="prepared validation images (val.pt): accuracy-aware methods' budget is met there")
    parser.add_argument("--test", required=True, help="prepared test images (test.pt); a few measure per-layer SQNR")
    parser.add_argument("--out", required=True, help="output directory for this method's artifacts")
    parser.add_argument("--metrics", required=True, help="output: export time and peak memory, JSON")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        params.load(params.QuantizeParams, "quantize", args.params)  # its method names become paths: refused before any write
        train = params.load(params.TrainParams, "train", args.params)
        bench = params.load(params.BenchmarkParams, "benchmark", args.params)
        method = get_method(args.method)
        calib_set = load_prepared(args.calib)
        model, spec = fp32_model(args.model, train, calib_set["images"])
        calib = to_input(calib_set["images"])
        sample = to_input(load_prepared(args.test)["images"][:SQNR_IMAGES])
        batch_sizes = tuple(dict.fromkeys((bench.latency_batch, bench.throughput_batch)))
        extra = {}
        if method.labelled:
            budget = params.load(params.GateParams, "gate", args.params).max_accuracy_drop_pp
            epochs = params.load(params.QuantizeParams, "quantize", args.params).qat_epochs
            val = load_prepared(args.val)
            extra["labelled"] = Labelled(calib_set["labels"].long(), to_input(val["images"]), val["labels"].long(), budget, epochs)
        model_files = module_files(spec.model.rpartition(":")[0]) if spec.imported else []
        require_free_space(args.out, args.metrics)
        start = time.perf_counter()
        try:
            with atomic_dir(args.out) as tmp:
                with runtime_refusals(method.runtime, model_files):  # the export alone: what edgequant does after it is its own
                    exported = method.export(model, calib, sample, tmp, batch_sizes, **extra)
                meta = {**record(method, str(spec), exported, batch_sizes), "model_spec": spec.record()}
                write_json(tmp / "meta.json", meta)
        except Unsupported as exc:  # recorded, not raised: the benchmark lists it and the gate judges it
            refused = refusal_record(method.name, spec.record(), str(exc))
            with atomic_dir(args.out) as tmp:
                write_json(tmp / "meta.json", refused)
            write_json(args.metrics, {"export_time_s": round(time.perf_counter() - start, 3), "refused": refused["refused"]})
            return f"refused, recorded in {args.out}/meta.json: {refused['refused']}"
        write_json(args.metrics, {"export_time_s": round(time.perf_counter() - start, 3), "peak_rss_mib": round(peak_rss_mib(), 1)})
        shipped = Path(args.out) / meta["shipped"]
        return f"{method.name} -> {shipped} ({shipped.stat().st_size} bytes)"

    return stage.run("quantize", body)


if __name__ == "__main__":
    sys.exit(main())
