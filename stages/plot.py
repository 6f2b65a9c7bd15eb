"""Stage `plot`: render the training curve and the trade-off, accuracy, speed-up, per-layer and per-operator charts as PNGs."""

import argparse
import sys
from pathlib import Path

import pandas as pd

from edgequant import params, stage
from edgequant.report.charts import plot_accuracy, plot_layers, plot_npu, plot_ops, plot_speedups, plot_tradeoffs, plot_training
from edgequant.report.reference import is_reference


def read_live_history(live_dir: Path) -> pd.DataFrame:
    """dvclive keeps one TSV per metric; join them on step into one frame per epoch."""
    frames = []
    for name in ("train_loss", "test_accuracy_pct"):
        df = pd.read_csv(live_dir / "plots" / "metrics" / f"{name}.tsv", sep="\t")
        frames.append(df[["step", name]].set_index("step"))
    history = pd.concat(frames, axis=1).reset_index()
    history["epoch"] = history["step"] + 1
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--live", required=True, help="dvclive directory from the train stage")
    parser.add_argument("--bench", required=True, help="combined benchmark CSV")
    parser.add_argument("--layers", required=True, help="per-layer MACs/SQNR CSV")
    parser.add_argument("--ops", required=True, help="per-operator time CSV")
    parser.add_argument("--npu", required=True, help="Vela's per-layer estimates CSV")
    parser.add_argument("--out", required=True, help="directory for the PNGs")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        dataset = params.load(params.DownloadParams, "download", args.params).dataset
        reference = is_reference(dataset, params.load(params.TrainParams, "train", args.params).model)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        bench = pd.read_csv(args.bench)
        plot_training(read_live_history(Path(args.live)), out / "training.png", reference)
        plot_tradeoffs(bench, out / "tradeoffs.png", reference)
        plot_accuracy(bench, out / "accuracy.png")
        plot_speedups(bench, out / "speedups.png")
        plot_layers(pd.read_csv(args.layers), out / "layers.png")
        plot_ops(pd.read_csv(args.ops), out / "ops.png")
        plot_npu(pd.read_csv(args.npu), out / "npu.png")
        return f"7 charts -> {out}"

    return stage.run("plot", body)


if __name__ == "__main__":
    sys.exit(main())
