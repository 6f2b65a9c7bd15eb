"""Stage `probe`: record what machine this is, so the benchmark re-runs on another CPU and not otherwise."""

import argparse
import json
import sys

from edgequant import stage
from edgequant.files import write_text
from edgequant.measure.machine import probe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="output: the machine record, JSON")
    args = parser.parse_args(argv)

    def body() -> str:
        record = probe()
        write_text(args.out, json.dumps(record, indent=2) + "\n")
        clock, isa = record["clock"], record["isa"]
        at = f"{clock['mhz']} MHz from {clock['source']}" if clock["mhz"] else "clock unknown"
        return f"{record['name']} (INT8 path {isa['int8_path']}, {at}) -> {args.out}"

    return stage.run("probe", body)


if __name__ == "__main__":
    sys.exit(main())
