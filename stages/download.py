"""Stage `download`: fetch the four MNIST files, verified by md5, from $MNIST_MIRROR then the public mirrors."""

import argparse
import os
import sys

from edgequant.download import DownloadError, checksums_from_env, download_mnist, mirrors_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory to fill with the four .gz files")
    parser.add_argument("--mirror", help="local mirror (directory or URL) tried first; default: $MNIST_MIRROR")
    parser.add_argument("--timeout-s", type=float, default=float(os.environ.get("MNIST_TIMEOUT_S", 60)))
    args = parser.parse_args(argv)
    try:
        env = dict(os.environ, MNIST_MIRROR=args.mirror) if args.mirror else None
        download_mnist(args.out, mirrors_from_env(env), timeout_s=args.timeout_s, checksums=checksums_from_env())
    except DownloadError as exc:
        print(f"download: {exc}", file=sys.stderr)
        return 1
    print(f"download: 4 files verified in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
