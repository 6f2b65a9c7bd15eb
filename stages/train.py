"""Stage `train`: train the CNN deterministically, log per-epoch metrics with dvclive, save the FP32 state dict."""

import argparse
import sys
import time
from pathlib import Path

from edgequant import params, stage
from edgequant.data.splits import load_prepared
from edgequant.files import atomic_dir, require_free_space, save_torch, write_json
from edgequant.measure.memory import keep_freed_memory, peak_rss_mib
from edgequant.model.train import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", required=True, help="prepared training split")
    parser.add_argument("--test", required=True, help="prepared test split")
    parser.add_argument("--model", required=True, help="output: FP32 state dict")
    parser.add_argument("--metrics", required=True, help="output: summary metrics JSON")
    parser.add_argument("--live", required=True, help="output: dvclive directory with per-epoch curves")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        p = params.load(params.TrainParams, "train", args.params)
        from dvclive import Live

        require_free_space(args.model, args.metrics, args.live)
        keep_freed_memory()
        train_set = load_prepared(args.train)
        test_set = load_prepared(args.test)
        start = time.perf_counter()
        # dvclive writes as it goes; logging into a temporary directory that replaces the output only
        # at the end keeps an interrupted run from leaving half a history behind.
        with atomic_dir(args.live) as live_dir:
            with Live(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None) as live:

                def log_epoch(epoch: int, record: dict[str, float]) -> None:
                    live.step = epoch
                    for key in ("train_loss", "train_accuracy_pct", "test_loss", "test_accuracy_pct"):
                        live.log_metric(key, record[key])
                    live.next_step()

                images, labels = train_set["images"], train_set["labels"]
                model, history = train(p, images, labels, test_set["images"], test_set["labels"], log_epoch)
            save_torch(model.state_dict(), args.model)
            write_json(
                args.metrics,
                {
                    "test_accuracy_pct": history[-1]["test_accuracy_pct"],
                    "train_loss": history[-1]["train_loss"],
                    "train_loss_per_epoch": [round(h["train_loss"], 6) for h in history],
                    "train_time_s": time.perf_counter() - start,
                    "fp32_state_dict_bytes": Path(args.model).stat().st_size,
                    "peak_rss_mib": round(peak_rss_mib(), 1),
                },
            )
        return f"test accuracy {history[-1]['test_accuracy_pct']:.2f} % -> {args.model}"

    return stage.run("train", body)


if __name__ == "__main__":
    sys.exit(main())
