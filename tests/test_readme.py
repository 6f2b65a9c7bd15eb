"""The README and docs/: every generated block against the committed files it is written from, the fault table
against the tests it cites, every relative link against the file and heading it points to."""

import ast
import csv
import io
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT

CITED = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


def committed(path: str) -> str:
    """The file as committed: the README documents the committed run, and `make repro` on another
    machine rewrites the workspace copy with that machine's figures before `make test` runs."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / path).read_text()


def faults_table() -> list[str]:
    text = (ROOT / "docs/faults.md").read_text()
    section = text.split("# What happens when…", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault")]


def test_every_fault_row_cites_tests_that_exist():
    rows = faults_table()
    assert len(rows) >= 20
    defined: dict[str, set[str]] = {}
    for row in rows:
        cited = CITED.findall(row)
        assert cited, f"docs/faults.md row cites no test: {row}"
        for path, name in cited:
            if path not in defined:
                tree = ast.parse((ROOT / path).read_text())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"docs/faults.md cites {path}::{name}, which does not exist"


def test_results_table_is_the_one_generated_from_committed_metrics():
    import json

    from edgequant.report.readme import BEGIN, END, markdown_table

    text = committed("docs/results.md")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown_table(json.loads(committed("metrics/benchmark.json")))


def test_per_operator_table_is_the_one_generated_from_committed_profile():
    from edgequant.report.readme import OPS, ops_table

    text = committed("docs/results.md")
    block = text.split(OPS[0], 1)[1].split(OPS[1], 1)[0].strip()
    assert block == ops_table(list(csv.DictReader(io.StringIO(committed("plots/ops.csv")))))


def test_reference_table_is_generated_from_reference_py_and_the_committed_run():
    import json

    from edgequant.report.readme import REFERENCE_BLOCK, reference_table

    block = committed("README.md").split(REFERENCE_BLOCK[0], 1)[1].split(REFERENCE_BLOCK[1], 1)[0].strip()
    expected = reference_table(json.loads(committed("metrics/train.json")), json.loads(committed("metrics/benchmark.json")))
    assert block == expected and "| FP32 test accuracy | 98.97 % |" in block


def test_npu_table_is_generated_from_the_committed_estimates():
    import json

    from edgequant.report.readme import NPU, npu_table

    block = committed("docs/machines.md").split(NPU[0], 1)[1].split(NPU[1], 1)[0].strip()
    assert block == npu_table(json.loads(committed("metrics/npu.json"))) and "compiler estimate (Vela), not a measurement" in block


def test_the_vendor_and_loadgen_tables_are_generated_from_the_committed_runs():
    import json

    from edgequant.report.readme import LOADGEN, VENDOR, loadgen_table, vendor_tables

    text = committed("docs/machines.md")
    vendor = text.split(VENDOR[0], 1)[1].split(VENDOR[1], 1)[0].strip()
    assert vendor == vendor_tables(json.loads(committed("metrics/vendor.json"))) and "| harness / tool [95 % CI] |" in vendor
    loadgen = text.split(LOADGEN[0], 1)[1].split(LOADGEN[1], 1)[0].strip()
    expected = loadgen_table(json.loads(committed("metrics/loadgen.json")), json.loads(committed("metrics/benchmark.json")))
    assert loadgen == expected and "| `fp32` |" in loadgen


@pytest.mark.parametrize("document", ["README.md", "docs/machines.md"])
def test_fleet_table_is_the_committed_fleet_report(document):
    from edgequant.report.readme import FLEET

    block = committed(document).split(FLEET[0], 1)[1].split(FLEET[1], 1)[0].strip()
    assert block == committed("plots/fleet.md").strip() and block.count("\n| `") >= 2  # at least two machines


def test_int8_ceiling_puts_every_mac_at_the_measured_peak():
    from edgequant.report.tables import ceiling

    def run(ips):
        return {"threads_1": {"throughput_ips": ips}}

    metrics = {
        "macs_per_image": 12_000_000,
        "peak": {"threads_1": {"int8_gmacs": 120.0, "fp32_gmacs": 40.0}},  # 120 GMAC/s / 12 M MACs = 10,000 img/s
        "methods": {
            "fp32": {"precision": "fp32", **run(1_000)},
            "slow_int8": {"precision": "int8", **run(2_000)},
            "fast_int8": {"precision": "int8", **run(5_000)},
        },
    }
    assert ceiling(metrics).endswith("1 thread(s): 10,000 img/s = 10.0× FP32 eager (best: `fast_int8`, 5.0×, 50 % of that bound).")
    fp32_only = {**metrics, "methods": {"fp32": metrics["methods"]["fp32"]}}
    assert ceiling(fp32_only) == "INT8 ceiling: no INT8 method was measured."


def test_workload_tables_are_the_ones_generated_from_the_workloads_runs():
    from edgequant.report.readme import WORKLOADS, workload_tables

    text = committed("docs/results.md")
    block = text.split(WORKLOADS[0], 1)[1].split(WORKLOADS[1], 1)[0].strip()
    assert block == workload_tables(ROOT / "workloads")  # from each workload's metrics, written by `dvc repro -P`
    assert "onnx_qdq_int8_per_tensor_aware" in block and "McNemar" in block


HOSTILE = "EPYC | x\n<!-- fleet:end -->\n## injected <script>alert(1)</script>"


def fleet_row(machine: str) -> dict:
    methods = dict.fromkeys(("fastest_int8", "lowest_latency_int8", "ship_throughput", "ship_latency"), "onnx_qdq_int8")
    return {"machine": machine, "int8_dot": HOSTILE, **methods, "speedup_vs_fp32_eager": 5.0, "speedup_vs_runtime_fp32": 2.0}


def test_a_marker_inside_a_record_cannot_grow_the_readme():
    import json

    from edgequant.fleet.table import markdown
    from edgequant.report.readme import FLEET, RESULTS, markdown_table, replace_block

    row = {**fleet_row(HOSTILE), "peak_fraction": 0.5, "threads": 1, "source": "x"}
    readme = f"intro\n{RESULTS[0]}\nold\n{RESULTS[1]}\n{FLEET[0]}\nold\n{FLEET[1]}\nafter\n"
    once = replace_block(readme, markdown([row]), FLEET)
    assert replace_block(once, markdown([row]), FLEET) == once and once.count("<!--") == 4
    assert "\n## injected" not in once and "<script" not in once
    metrics = json.loads(committed("metrics/benchmark.json"))
    metrics["machine"]["cpu"] = metrics["peak"]["threads_1"]["int8_engine"] = HOSTILE
    results = replace_block(readme, markdown_table(metrics), RESULTS)
    assert results.count("<!--") == 4 and "\n## injected" not in results and "<script" not in results


BAD_MARKERS = {
    "no end": "{begin}\nx\n",
    "two ends": "{begin}\nx\n{end}\ny\n{end}\n",
    "two begins": "{begin}\n{begin}\nx\n{end}\n",
    "end before begin": "{end}\nx\n{begin}\n",
}


@pytest.mark.parametrize("layout", BAD_MARKERS)
def test_the_readme_generator_refuses_unbalanced_or_repeated_markers(layout):
    from edgequant.report.readme import FLEET, replace_block

    text = BAD_MARKERS[layout].format(begin=FLEET[0], end=FLEET[1])
    with pytest.raises(ValueError, match="markers|holds"):
        replace_block(text, "table", FLEET)


def test_a_block_holding_a_marker_is_refused():
    from edgequant.report.readme import FLEET, replace_block

    with pytest.raises(ValueError, match="holds an HTML comment"):
        replace_block(f"{FLEET[0]}\nx\n{FLEET[1]}\n", f"| a |\n{FLEET[1]}\n# injected", FLEET)


def test_a_fenced_block_may_hold_a_mermaid_edge_but_no_comment_and_plain_text_neither():
    from edgequant.report.readme import PIPELINE, replace_block

    text = f"{PIPELINE[0]}\nold\n{PIPELINE[1]}\n"
    graph = '```mermaid\nflowchart TD\n\tnode1["a"]\n\tnode1-->node2\n```'
    assert graph in replace_block(text, graph, PIPELINE)
    for table in ("```mermaid\n<!-- x -->\n```", "a-->b", "```\na-->b\n```\n-->", "```\n```\n-->\n```"):
        with pytest.raises(ValueError, match="holds an HTML comment"):
            replace_block(text, table, PIPELINE)


SUMMARY_THREADS = 1  # the README's short table shows the smallest thread count measured


def test_the_readmes_summary_is_generated_from_the_committed_run_and_params():
    import json

    import yaml

    from edgequant.report.readme import SUMMARY, summary_table

    metrics = json.loads(committed("metrics/benchmark.json"))
    block = committed("README.md").split(SUMMARY[0], 1)[1].split(SUMMARY[1], 1)[0].strip()
    assert block == summary_table(metrics, yaml.safe_load(committed("params.yaml"))["benchmark"])
    assert block.count("\n| `") == len(metrics["methods"]) and f"{SUMMARY_THREADS} thread, on `{metrics['machine']['name']}`" in block


@pytest.mark.slow
def test_the_pipeline_graph_is_dvc_dag_of_the_checkouts_dvc_yaml(tmp_path, monkeypatch):
    from edgequant.report.readme import PIPELINE, pipeline_graph

    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path))
    block = (ROOT / "docs/pipeline.md").read_text().split(PIPELINE[0], 1)[1].split(PIPELINE[1], 1)[0].strip()
    graph = pipeline_graph(ROOT)
    assert graph.startswith("```mermaid\nflowchart TD") and '"quantize@fp32"' in graph
    regenerate = "run `python -m edgequant.report.readme README.md docs/*.md`"
    assert block == graph, f"dvc.yaml, probe/dvc.yaml or params.yaml changed the graph: {regenerate}"


def documents() -> list[str]:
    return ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def test_every_generated_block_lives_in_one_of_the_documents():
    from edgequant.report.readme import BLOCKS, blocks_in

    held = {m for path in documents() for m in blocks_in((ROOT / path).read_text())}
    assert held == set(BLOCKS), f"blocks in no document: {sorted(m[0] for m in set(BLOCKS) - held)}"


MAX_README_LINES = 250


def test_the_readme_stays_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/ (limit {MAX_README_LINES})"


FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links in a Markdown file whose file, or heading after `#`, does not exist."""
    broken = []
    for target in LINK.findall(re.sub(r"`[^`\n]*`", "", FENCE.sub("", path.read_text()))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto: ...
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists() or (anchor and (dest.suffix != ".md" or anchor not in anchors(dest.read_text()))):
            broken.append(target)
    return broken


@pytest.mark.parametrize("document", documents())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(document):
    assert broken_links(ROOT / document) == []


def test_a_link_to_a_missing_file_or_heading_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Which runtime to ship\n\n## What happens when…\n\n```bash\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    links = "[ok](b.md#which-runtime-to-ship) [ok](b.md#what-happens-when) [self](#top) [web](https://x.org/y)"
    page.write_text(f"# Top\n\n{links} [gone](c.md) [no](b.md#not-a-heading) `[code](d.md)`\n")
    assert broken_links(page) == ["c.md", "b.md#not-a-heading"]


def copy_inputs(tmp_path: Path) -> list[str]:
    """The committed files the reference, results, fleet and summary blocks are written from, as CLI options."""
    for name in ("metrics/benchmark.json", "metrics/train.json", "plots/fleet.md", "params.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(committed(name))
    return [
        f"--{o}={tmp_path / f}"
        for o, f in (
            ("metrics", "metrics/benchmark.json"),
            ("train", "metrics/train.json"),
            ("fleet", "plots/fleet.md"),
            ("params", "params.yaml"),
        )
    ]


def test_one_command_fills_each_documents_blocks_and_leaves_a_document_without_markers_alone(tmp_path, capsys):
    from edgequant.report.readme import FLEET, REFERENCE_BLOCK, RESULTS, SUMMARY, main

    options = copy_inputs(tmp_path)
    readme, results, plain = tmp_path / "README.md", tmp_path / "results.md", tmp_path / "plain.md"
    readme.write_text(f"# x\n{REFERENCE_BLOCK[0]}\nold\n{REFERENCE_BLOCK[1]}\n{SUMMARY[0]}\n{SUMMARY[1]}\n{FLEET[0]}\n{FLEET[1]}\n")
    results.write_text(f"# y\n{RESULTS[0]}\nstale\n{RESULTS[1]}\n{FLEET[0]}\n{FLEET[1]}\nend\n")
    plain.write_text("# z\nno block\n")
    assert main([str(readme), str(results), str(plain), *options]) == 0
    fleet = committed("plots/fleet.md").strip()
    text = readme.read_text()
    assert "old" not in text and "| FP32 test accuracy |" in text and "| method | runtime | size vs own FP32 |" in text
    assert text.count(fleet) == 1 and results.read_text().count(fleet) == 1
    assert "stale" not in results.read_text() and results.read_text().endswith("end\n") and plain.read_text() == "# z\nno block\n"
    assert main([str(readme), str(results), str(plain), *options]) == 0 and readme.read_text() == text  # idempotent
    assert f"{plain}: no generated block" in capsys.readouterr().err


def test_unbalanced_markers_in_any_document_leave_every_document_as_it_was(tmp_path, capsys):
    from edgequant.report.readme import FLEET, RESULTS, main

    options = copy_inputs(tmp_path)
    good, bad = tmp_path / "README.md", tmp_path / "docs.md"
    good.write_text(f"{FLEET[0]}\nold\n{FLEET[1]}\n")
    bad.write_text(f"{RESULTS[0]}\nx\n{RESULTS[1]}\n{RESULTS[1]}\n")
    assert main([str(good), str(bad), *options]) == 1
    assert good.read_text() == f"{FLEET[0]}\nold\n{FLEET[1]}\n"
    assert f"readme: {bad}: the README holds 1 '<!-- results:begin' and 2 '<!-- results:end'" in capsys.readouterr().err


def test_a_refused_block_leaves_every_document_as_it_was(tmp_path, capsys):
    from edgequant.report.readme import FLEET, REFERENCE_BLOCK, main

    options = copy_inputs(tmp_path)
    (tmp_path / "plots/fleet.md").write_text(f"| a |\n{FLEET[1]}\n# injected\n")  # a fleet report edited by hand
    first, second = tmp_path / "README.md", tmp_path / "machines.md"
    first.write_text(f"{REFERENCE_BLOCK[0]}\nold\n{REFERENCE_BLOCK[1]}\n")
    second.write_text(f"{FLEET[0]}\nold\n{FLEET[1]}\n")
    assert main([str(first), str(second), *options]) == 1
    assert first.read_text() == f"{REFERENCE_BLOCK[0]}\nold\n{REFERENCE_BLOCK[1]}\n" and "holds an HTML comment" in capsys.readouterr().err
