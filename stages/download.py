"""Stage `download`: fetch the dataset named in params.yaml, verified by md5, from $MNIST_MIRROR then public mirrors."""

import argparse
import os
import sys

from edgequant import params, stage
from edgequant.data.datasets import dataset_for
from edgequant.data.download import download, mirrors_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory to fill with the four .gz files")
    parser.add_argument("--mirror", help="local mirror (directory or URL) tried first; default: $MNIST_MIRROR")
    parser.add_argument("--timeout-s", type=float, default=float(os.environ.get("MNIST_TIMEOUT_S", 60)))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        p = params.load(params.DownloadParams, "download", args.params)
        dataset = dataset_for(p.dataset, p.md5)
        env = dict(os.environ, MNIST_MIRROR=args.mirror) if args.mirror else None
        download(args.out, dataset, mirrors_for(dataset, env), timeout_s=args.timeout_s)
        return f"4 files of {dataset.name} verified in {args.out}"

    return stage.run("download", body)


if __name__ == "__main__":
    sys.exit(main())
