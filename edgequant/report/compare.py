"""Compare two revisions (commits, branches, experiments): the Markdown report a reviewer reads in a pull request.

    python -m edgequant.report.compare main my-branch --out reports/main_vs_my-branch

writes `compare.md` (params changed, headline metrics per method, every changed metric, plot images of
both revisions) and `plots/index.html` (`dvc plots diff`, both revisions overlaid). With `--vega-dir`
(a folder holding vega, vega-lite and vega-embed `.min.js`, see `make vega`) the HTML gets those
scripts inlined instead of loading them from a CDN, so it renders offline and can be attached as-is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import yaml

from edgequant.data.urls import redact
from edgequant.deps import PROBE, REFERENCE
from edgequant.files import atomic_dir
from edgequant.report.markdown import code, escape
from edgequant.team import dvclock

# Per method, the figures a reviewer decides on; the full list follows in a collapsed section.
HEADLINE = ("accuracy_pct", "accuracy_drop_pp", "size_bytes", "threads_1.latency_ms_p50", "threads_1.throughput_ips")
VEGA_SCRIPTS = {"vega": "vega.min.js", "vega-lite": "vega-lite.min.js", "vega-embed": "vega-embed.min.js"}
CDN_SCRIPT = re.compile(r'<script src="https://cdn\.jsdelivr\.net/npm/(vega(?:-lite|-embed)?)@[^"]*"></script>')


def dvc(*args: str, as_json: bool = False) -> str:
    """Run a dvc command and return its stdout; a failure names the command and dvc's message."""
    proc = subprocess.run(["dvc", *args, *(["--json"] if as_json else [])], capture_output=True, text=True)
    if proc.returncode != 0:
        message = redact(proc.stderr.strip() or proc.stdout.strip())
        fix = dvclock.explain(message)  # a rwlock cut short by a full disk fails every dvc command
        raise RuntimeError(f"`dvc {' '.join(args)}` failed: {message}" + (f" {fix}" if fix else ""))
    return proc.stdout


def dvc_json(*args: str) -> dict:
    return json.loads(dvc(*args, as_json=True) or "{}")


def fmt(value: object) -> str:
    """A cell: numbers rounded, anything else (a param's value from another revision) escaped for Markdown."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return "—" if value is None else value if isinstance(value, Cell) else escape(value)


class Cell(str):
    """Markdown made here (a code span of an escaped name), written into a table as it is."""


def table(head: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def flatten(diff: dict) -> dict[str, dict]:
    """{file: {key: {old, new, diff}}} → {"file: key": {...}}; the file is left out when it is the only one
    and not a workload's (a workload's rows must say whose they are)."""
    bare = len(diff) == 1 and not next(iter(diff), "").startswith("workloads/")
    return {f"{key}" if bare else f"{file}: {key}": v for file, keys in diff.items() for key, v in keys.items()}


def change(metric: str, old: object, new: object) -> str:
    """Percentages and percentage points change by points; everything else by a relative change."""
    if not (isinstance(old, (int, float)) and isinstance(new, (int, float))):
        return "—"
    if metric.endswith(("_pct", "_pp")):
        return f"{new - old:+.2f} pp"
    return f"{(new - old) / old * 100:+.1f} %" if old else "—"


def headline_rows(metrics: dict[str, dict]) -> list[list[object]]:
    """One row per (method, headline metric) that changed, grouped by method in the order of HEADLINE."""
    rows = []
    for key, v in metrics.items():
        match = re.search(r"methods\.([^.]+)\.(.+)$", key)
        if match and match.group(2) in HEADLINE:
            method, metric = match.groups()
            # A workload's metrics file is workloads/<name>/metrics/...: its rows say which workload they are of.
            workload = re.match(r"workloads/([^/]+)/", key)
            label = Cell(code(method) + (f" ({escape(workload.group(1))})" if workload else ""))
            rows.append([label, metric, v.get("old"), v.get("new"), change(metric, v.get("old"), v.get("new"))])
    return sorted(rows, key=lambda r: (r[0], HEADLINE.index(r[1])))


def plot_order(image: str, a: str, b: str) -> tuple[str, bool]:
    """Sort key of a `dvc plots diff` copy, "<rev>_<path>.png": by the plot's path (a workload's beside the
    reference's same chart, never interleaved with it), then revision `a` before `b`."""
    name = Path(image).name
    for rev in sorted((a, b), key=len, reverse=True):  # "main" must not claim "main2_..."
        prefix = rev.replace("/", "_") + "_"
        if name.startswith(prefix):
            return name[len(prefix) :], rev != a
    return name, True


def read_vega(vega_dir: Path) -> dict[str, str]:
    """The three vega scripts' text by package name; checked before any dvc work starts."""
    missing = [name for name in VEGA_SCRIPTS.values() if not (vega_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{vega_dir} lacks {missing}; run `make vega` to fetch them from the npm registry")
    return {package: (vega_dir / name).read_text() for package, name in VEGA_SCRIPTS.items()}


def inline_vega(html: str, scripts: dict[str, str]) -> str:
    """Replace the CDN <script src> tags of `dvc plots` HTML with the scripts' text."""
    # "</script" inside the library text would end the tag early; "<\/script" means the same in JS strings.
    return CDN_SCRIPT.sub(lambda m: "<script>" + scripts[m.group(1)].replace("</script", "<\\/script") + "</script>", html)


def pipeline_paths() -> list[Path]:
    """Every input and output of the pipelines: what the last runs recorded in dvc.lock (the probe's and each
    workload's too) and the literal paths of each dvc.yaml, so a fresh clone's or a never-run stage's are known
    (paths are from the repo root)."""
    paths = []
    for lock in [Path(REFERENCE).with_name("dvc.lock"), Path(PROBE).with_name("dvc.lock"), *sorted(Path("workloads").glob("*/dvc.lock"))]:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
        paths += [entry["path"] for stage in stages.values() for key in ("deps", "outs") for entry in stage.get(key, [])]
    for spec in [Path(REFERENCE), Path(PROBE), *sorted(Path("workloads").glob("*/dvc.yaml"))]:
        stages = (yaml.safe_load(spec.read_text()) or {}).get("stages", {}) if spec.is_file() else {}
        for stage in stages.values():
            entries = [e for key in ("deps", "outs") for e in stage.get(key, []) or []]
            paths += [e if isinstance(e, str) else next(iter(e)) for e in entries]
    return [Path(p).resolve() for p in dict.fromkeys(paths) if "${" not in p]


def check_revisions(a: str, b: str) -> None:
    """Refuse a revision DVC would misread: an empty one (`make compare A=`) compares nothing against the workspace,
    one starting with '-' would be taken as an option."""
    for role, rev in (("A (the base revision)", a), ("B (the revision to compare)", b)):
        if not rev.strip() or rev.startswith("-") or not rev.isprintable():
            raise ValueError(
                f"{role} is {rev!r}: name a commit, branch or experiment (`workspace` for uncommitted changes),"
                " e.g. `make compare A=main B=my-branch`"
            )


def check_out(out: Path) -> None:
    """Refuse a report directory that would replace or sit inside something else: the report replaces `out` whole."""
    target = out.resolve()
    if target.exists() and not (target / "compare.md").is_file():
        raise ValueError(
            f"--out {out} exists and is not an earlier report; it would be replaced whole. Name a new directory, e.g. reports/a_vs_b"
        )
    for path in pipeline_paths():
        if target == path or path in target.parents or target in path.parents:
            raise ValueError(
                f"--out {out} overlaps the pipeline's input or output {os.path.relpath(path)};"
                " name a directory outside them, e.g. reports/a_vs_b"
            )


def compare(a: str, b: str, out: Path, vega_dir: Path | None = None) -> Path:
    """Write the comparison of revisions `a` and `b` into `out`; returns the Markdown file."""
    check_revisions(a, b)
    check_out(out)
    scripts = read_vega(vega_dir) if vega_dir is not None else None
    params = flatten(dvc_json("params", "diff", a, b))
    metrics = flatten(dvc_json("metrics", "diff", a, b))
    with atomic_dir(out) as tmp:
        dvc("plots", "diff", a, b, "-o", str(tmp / "plots"))
        index = tmp / "plots" / "index.html"
        if scripts is not None:
            index.write_text(inline_vega(index.read_text(), scripts))
        # dvc names the copies "<rev>_<path>.png"; show each plot's two revisions one after the other.
        images = sorted((p.relative_to(tmp).as_posix() for p in (tmp / "plots").rglob("*.png")), key=lambda p: plot_order(p, a, b))
        md = [f"# edgequant: {code(a)} → {code(b)}", ""]
        md += ["## Params changed", ""]
        md += [table(["param", a, b], [[Cell(code(k)), v.get("old"), v.get("new")] for k, v in params.items()]) if params else "None.", ""]
        md += ["## Headline metrics per method", ""]
        rows = headline_rows(metrics)
        md += [table(["method", "metric", a, b, "change"], rows) if rows else "No headline metric changed.", ""]
        md += [f"<details><summary>All {len(metrics)} changed metrics</summary>", ""]
        changed = [[Cell(code(k)), v.get("old"), v.get("new"), v.get("diff")] for k, v in metrics.items()]
        md += [table(["metric", a, b, "diff"], changed), ""]
        md += ["</details>", "", "## Plots", "", "Interactive, both revisions overlaid: [plots/index.html](plots/index.html)", ""]
        md += [f"![{escape(Path(p).stem)}]({quote(p)})" for p in images]
        (tmp / "compare.md").write_text("\n".join(md) + "\n")
    return out / "compare.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="base revision (e.g. main)")
    parser.add_argument("b", help="revision to compare (branch, commit, experiment; `workspace` for uncommitted)")
    parser.add_argument("--out", required=True, help="output directory (replaced whole)")
    parser.add_argument("--vega-dir", type=Path, help="inline vega scripts from here for offline HTML")
    args = parser.parse_args(argv)
    try:
        path = compare(args.a, args.b, Path(args.out), args.vega_dir)
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    print(f"compare: {args.a} vs {args.b} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
