"""The README's "What happens when…" table is checked against the tests it cites, so it cannot drift from them."""

import ast
import csv
import io
import re
import subprocess

import pytest

from .conftest import ROOT

CITED = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


def committed(path: str) -> str:
    """The file as committed: the README documents the committed run, and `make repro` on another
    machine rewrites the workspace copy with that machine's figures before `make test` runs."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / path).read_text()


def faults_table() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## What happens when…", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault")]


def test_every_fault_row_cites_tests_that_exist():
    rows = faults_table()
    assert len(rows) >= 20
    defined: dict[str, set[str]] = {}
    for row in rows:
        cited = CITED.findall(row)
        assert cited, f"README row cites no test: {row}"
        for path, name in cited:
            if path not in defined:
                tree = ast.parse((ROOT / path).read_text())
                defined[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert name in defined[path], f"README cites {path}::{name}, which does not exist"


def test_results_table_is_the_one_generated_from_committed_metrics():
    import json

    from edgequant.report.readme import BEGIN, END, markdown_table

    text = committed("README.md")
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown_table(json.loads(committed("metrics/benchmark.json")))


def test_per_operator_table_is_the_one_generated_from_committed_profile():
    from edgequant.report.readme import OPS, ops_table

    text = committed("README.md")
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

    block = committed("README.md").split(NPU[0], 1)[1].split(NPU[1], 1)[0].strip()
    assert block == npu_table(json.loads(committed("metrics/npu.json"))) and "compiler estimate (Vela), not a measurement" in block


def test_fleet_table_is_the_committed_fleet_report():
    from edgequant.report.readme import FLEET

    block = committed("README.md").split(FLEET[0], 1)[1].split(FLEET[1], 1)[0].strip()
    assert block == committed("plots/fleet.md").strip() and block.count("\n| `") >= 2  # at least two machines


def test_int8_ceiling_puts_every_mac_at_the_measured_peak():
    from edgequant.report.readme import ceiling

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

    text = committed("README.md")
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
