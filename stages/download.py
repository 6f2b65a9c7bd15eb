"""Stage `download`: fetch the dataset named in params.yaml, verified by md5, from $MNIST_MIRROR then public mirrors;
or import the user's image folder or .npz (download.path), checked whole, into the same prepared format."""

import argparse
import os
import sys
from pathlib import Path

from edgequant import params, stage
from edgequant.data.datasets import dataset_for
from edgequant.data.download import download, mirrors_for
from edgequant.data.local import KINDS, content_sha256, import_dataset
from edgequant.files import atomic_dir, save_torch, write_json


def import_local(kind: str, path: str, out: str) -> str:
    """Import the user's data into `out` (replaced whole, only once every file read back): train.pt, test.pt, classes.json."""
    import torch

    imported = import_dataset(kind, Path(path))
    with atomic_dir(out) as tmp:
        for split in ("train", "test"):
            arrays = imported[split]
            save_torch({"images": torch.from_numpy(arrays["images"]), "labels": torch.from_numpy(arrays["labels"])}, tmp / f"{split}.pt")
        write_json(tmp / "classes.json", {"classes": imported["classes"], "content_sha256": content_sha256(imported)})
    train, test = imported["train"]["images"], imported["test"]["images"]
    shape = "×".join(map(str, train.shape[1:]))
    classes = len(imported["classes"])
    return f"{len(train)} training and {len(test)} test images ({shape}, {train.dtype}), {classes} classes from {path} -> {out}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory to fill with the four .gz files, or the imported splits")
    parser.add_argument("--mirror", help="local mirror (directory or URL) tried first; default: $MNIST_MIRROR")
    parser.add_argument("--timeout-s", type=float, default=float(os.environ.get("MNIST_TIMEOUT_S", 60)))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        p = params.load(params.DownloadParams, "download", args.params)
        if p.dataset in KINDS:
            return import_local(p.dataset, p.path, args.out)
        dataset = dataset_for(p.dataset, p.md5)
        env = dict(os.environ, MNIST_MIRROR=args.mirror) if args.mirror else None
        download(args.out, dataset, mirrors_for(dataset, env), timeout_s=args.timeout_s)
        return f"4 files of {dataset.name} verified in {args.out}"

    return stage.run("download", body)


if __name__ == "__main__":
    sys.exit(main())
