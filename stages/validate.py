"""Stage `validate`: refuse a params.yaml any stage would refuse, first in a full `dvc repro` (every stage also checks what it reads)."""

import argparse
import sys

from edgequant import stage
from edgequant.files import write_text
from edgequant.params import naming
from edgequant.validate import check_pipeline, check_tracked, load_all

# The same bytes whatever the params: stages depend on this file only to run after this check,
# and a content that changed with the params would re-run all of them.
VERDICT = "params.yaml passed edgequant.validate\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output: a fixed line, written only when params.yaml is valid")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        with naming(args.params):
            everything = load_all(args.params)
            check_pipeline(everything)
            check_tracked(args.params, everything)
        write_text(args.out, VERDICT)
        return f"{args.params} is valid"

    return stage.run("validate", body)


if __name__ == "__main__":
    sys.exit(main())
