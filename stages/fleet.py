"""Stage `fleet`: every machine's results side by side, with what to ship on each (Markdown and a chart)."""

import argparse
import sys
from pathlib import Path

from edgequant import params, stage
from edgequant.files import write_text
from edgequant.fleet import numerics, reduced, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, help="this machine's combined benchmark metrics")
    parser.add_argument("--machines", required=True, help="folder of other machines' results, one sub-folder each")
    parser.add_argument("--md", required=True, help="output: the fleet table, Markdown")
    parser.add_argument("--png", required=True, help="output: the fleet chart")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)

    def body() -> str:
        gate = params.load(params.GateParams, "gate", args.params)
        here = table.load(Path(args.metrics).parent, Path(args.metrics).name)  # this run's own output: a bad one is refused
        # Another machine's folder that cannot be read is named and left out, not fatal: one bad import must not
        # take the fleet view (and every other machine's row) from everyone who runs the pipeline.
        others, skipped = table.gather(Path(args.machines))
        for line in skipped:
            print(f"fleet: not shown: {line}", file=sys.stderr)
        emulated, unreadable = numerics.gather(Path(args.machines))  # emulated CPUs: numerics only, no timing
        for line in unreadable:
            print(f"fleet: not shown: {line}", file=sys.stderr)
        skipped += unreadable
        entries = [here] + [e for e in others if e["name"] != here["name"]]  # this run replaces its own saved copy
        rows = [table.summarize(e, gate) for e in entries]
        text = table.markdown(rows, skipped)
        below_fp32 = reduced.markdown(*reduced.collect(entries), threads=rows[0]["threads"])  # BF16 beside FP32, per machine
        if below_fp32:
            text += "\n\n" + below_fp32
        if emulated:
            text += "\n\n" + numerics.markdown(emulated)
        write_text(args.md, text + "\n")
        table.plot(entries, Path(args.png), tuple(e["name"] for e in emulated))
        return f"{len(entries)} machine(s) -> {args.md}" + (f"; {len(skipped)} folder(s) not shown, named there" if skipped else "")

    return stage.run("fleet", body)


if __name__ == "__main__":
    sys.exit(main())
