"""Stage `prepare`: the downloaded or imported data as tensors for train, test, and seeded calibration and validation subsets."""

import argparse
import sys
from pathlib import Path

from edgequant import params, stage
from edgequant.data.splits import draw_subsets, load_raw
from edgequant.files import save_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="directory with the four .gz files, or an imported train.pt and test.pt")
    parser.add_argument("--train", required=True, help="output: training images and labels")
    parser.add_argument("--test", required=True, help="output: test images and labels")
    parser.add_argument("--calib", required=True, help="output: the seeded calibration subset of the training set")
    parser.add_argument("--val", required=True, help="output: a seeded validation subset of the training set, disjoint from calib")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        p = params.load(params.PrepareParams, "prepare", args.params)
        train_x, train_y, test_x, test_y = load_raw(Path(args.raw))
        calib_idx, val_idx = draw_subsets(len(train_x), p.calib_size, p.val_size, p.calib_seed)
        splits = {
            "train": (train_x, train_y),
            "test": (test_x, test_y),
            "calib": (train_x[calib_idx].clone(), train_y[calib_idx].clone()),
            "val": (train_x[val_idx].clone(), train_y[val_idx].clone()),
        }
        # Separate outputs, not one directory: a new calibration size then re-runs quantize, not train.
        for name, (images, labels) in splits.items():
            save_torch({"images": images, "labels": labels}, getattr(args, name))
        return f"train {len(train_x)}, test {len(test_x)}, calib {len(calib_idx)}, val {len(val_idx)} images"

    return stage.run("prepare", body)


if __name__ == "__main__":
    sys.exit(main())
