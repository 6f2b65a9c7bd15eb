"""Stage `prepare`: parse the IDX files into uint8 tensors for train, test, and seeded calibration and validation subsets."""

import argparse
import sys
from pathlib import Path

import torch

from edgequant import params, stage
from edgequant.data.splits import draw_subsets, load_split
from edgequant.files import save_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, help="directory with the four .gz files")
    parser.add_argument("--train", required=True, help="output: training images and labels")
    parser.add_argument("--test", required=True, help="output: test images and labels")
    parser.add_argument("--calib", required=True, help="output: the seeded calibration subset of the training set")
    parser.add_argument("--val", required=True, help="output: a seeded validation subset of the training set, disjoint from calib")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        p = params.load(params.PrepareParams, "prepare", args.params)
        train_x, train_y = load_split(Path(args.raw), "train")
        test_x, test_y = load_split(Path(args.raw), "t10k")
        calib_idx, val_idx = draw_subsets(len(train_x), p.calib_size, p.val_size, p.calib_seed)
        train_x, train_y = torch.from_numpy(train_x.copy()), torch.from_numpy(train_y.copy())
        splits = {
            "train": (train_x, train_y),
            "test": (torch.from_numpy(test_x.copy()), torch.from_numpy(test_y.copy())),
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
