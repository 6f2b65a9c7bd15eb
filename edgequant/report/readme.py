"""The generated blocks of the README and docs/: reference, summary, results, per-operator, NPU, workload, fleet,
pipeline, vendor-tool and LoadGen blocks, each written from the pipeline's outputs (never typed by hand) between its markers.

python -m edgequant.report.readme                        # print the results tables
python -m edgequant.report.readme README.md docs/*.md    # rewrite every block each file holds, between its markers
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from edgequant.files import write_text
from edgequant.report.loadgentable import loadgen_table
from edgequant.report.markdown import check_markers, marker_stem
from edgequant.report.tables import markdown_table, npu_table, ops_table, reference_table, summary_table, workload_tables
from edgequant.report.vendortable import vendor_tables

GENERATE = "python -m edgequant.report.readme README.md docs/*.md"


def markers(name: str) -> tuple[str, str]:
    """The two lines that enclose generated block `name`; the begin line says how to regenerate it."""
    return f"<!-- {name}:begin ({GENERATE}) -->", f"<!-- {name}:end -->"


WORKLOADS = markers("workloads")
RESULTS = markers("results")
SUMMARY = markers("summary")
OPS = markers("ops")
FLEET = markers("fleet")
NPU = markers("npu")
REFERENCE_BLOCK = markers("reference")
PIPELINE = markers("pipeline")
VENDOR = markers("vendor")
LOADGEN = markers("loadgen")
BEGIN, END = RESULTS
BLOCKS = (REFERENCE_BLOCK, SUMMARY, FLEET, RESULTS, OPS, WORKLOADS, NPU, PIPELINE, VENDOR, LOADGEN)


def fenced(table: str) -> bool:
    """`table` is one fenced code block and nothing else: Markdown shows its lines as code, never as structure."""
    lines = table.splitlines()
    inner = lines[1:-1]
    return len(lines) >= 2 and lines[0].startswith("```") and lines[-1] == "```" and not any(x.startswith("```") for x in inner)


def replace_block(text: str, table: str, markers: tuple[str, str] = RESULTS) -> str:
    """`text` with the part between `markers` replaced by `table`, which may hold no marker or HTML comment of its own
    (a fenced code block may hold `-->`, a Mermaid edge: it cannot open a comment, and no marker begins with it)."""
    check_markers(text, markers)
    if "<!--" in table or ("-->" in table and not fenced(table)):
        raise ValueError(
            f"the block for {marker_stem(markers[0])!r} holds an HTML comment; generated text is escaped, so it was edited by hand"
        )
    begin, end = markers
    head, rest = text.split(begin, 1)
    return f"{head}{begin}\n{table}\n{end}{rest.split(end, 1)[1]}"


def pipeline_graph(root: Path = Path(".")) -> str:
    """`dvc dag --md dvc.yaml`: the reference pipeline's stages and edges as DVC reads them from dvc.yaml, probe/dvc.yaml
    (the machine probe, upstream of the benchmark) and params.yaml."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", "dag", "--md", "dvc.yaml"], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"`dvc dag --md dvc.yaml` failed in {root}: {reason}")
    return proc.stdout.strip()


def read_ops(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def builders(args: argparse.Namespace) -> dict[tuple[str, str], Callable[[], str]]:
    """Each block's markers and how to build its text from the files the arguments name."""
    import yaml

    return {
        RESULTS: lambda: markdown_table(read_json(args.metrics)),
        SUMMARY: lambda: summary_table(read_json(args.metrics), yaml.safe_load(Path(args.params).read_text())["benchmark"]),
        OPS: lambda: ops_table(read_ops(args.ops)),
        REFERENCE_BLOCK: lambda: reference_table(read_json(args.train), read_json(args.metrics)),
        NPU: lambda: npu_table(read_json(args.npu)),
        WORKLOADS: lambda: workload_tables(Path(args.workloads)),
        FLEET: lambda: Path(args.fleet).read_text().strip(),
        PIPELINE: lambda: pipeline_graph(),
        VENDOR: lambda: vendor_tables(read_json(args.vendor)),
        LOADGEN: lambda: loadgen_table(read_json(args.loadgen), read_json(args.metrics)),
    }


def blocks_in(text: str) -> list[tuple[str, str]]:
    """The blocks whose markers `text` holds (either one of the two is enough: an unbalanced pair is refused later)."""
    return [m for m in BLOCKS if any(marker_stem(x) in text for x in m)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the results tables, or write every block the given files hold between its markers.")
    parser.add_argument("documents", nargs="*", help="rewrite these Markdown files' generated blocks in place (README.md docs/*.md)")
    parser.add_argument("--metrics", default="metrics/benchmark.json")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--ops", default="plots/ops.csv")
    parser.add_argument("--fleet", default="plots/fleet.md")
    parser.add_argument("--train", default="metrics/train.json")
    parser.add_argument("--npu", default="metrics/npu.json")
    parser.add_argument("--workloads", default="workloads")
    parser.add_argument("--vendor", default="metrics/vendor.json")
    parser.add_argument("--loadgen", default="metrics/loadgen.json")
    args = parser.parse_args(argv)
    try:
        return write(args)
    except (ValueError, OSError) as exc:
        print(f"readme: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1


def write(args: argparse.Namespace) -> int:
    build = builders(args)
    if not args.documents:
        print("\n\n".join(build[m]() for m in (REFERENCE_BLOCK, RESULTS, OPS, FLEET)))
        return 0
    texts = {path: Path(path).read_text() for path in args.documents}
    for path, text in texts.items():  # every file's markers checked before anything is built or rewritten
        for markers in blocks_in(text):
            try:
                check_markers(text, markers)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
    built = {markers: build[markers]() for markers in BLOCKS if any(markers in blocks_in(text) for text in texts.values())}
    rewritten = {}
    for path, text in texts.items():  # every block replaced in memory first: a refused one leaves every file as it was
        for markers in blocks_in(text):
            text = replace_block(text, built[markers], markers)
        rewritten[path] = text
    for path, text in rewritten.items():
        if text != texts[path]:
            write_text(path, text)
        names = [marker_stem(m[0]).removeprefix("<!-- ").removesuffix(":begin") for m in blocks_in(text)]
        print(f"{path}: {', '.join(names) or 'no generated block'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
