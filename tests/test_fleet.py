"""The fleet view: each machine ranked on its own measurements, the shipping rule applied as stated, old records read;
an imported record checked before it is kept, and written nowhere but its own folder."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from edgequant.fleet import table
from edgequant.measure.machine import FLAGS, int8_dot, probe, slug
from edgequant.params import GateParams
from stages import fleet as fleet_stage

from .conftest import ROOT, TINY, sh

GATE = GateParams(
    methods=["onnx_qdq_int8", "executorch_xnnpack_int8"], max_accuracy_drop_pp=0.1, min_speedup=1.3, max_size_ratio=0.27, enforce=True
)
AVX2 = ("fma", "avx2")
VNNI = (*AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")
MACS_PER_IMAGE = 12_000_000
CELLS_PER_ROW = 9  # the fleet table's columns


def method(precision, ips, p50, own=2.0, drop=0.0, fraction=0.5):
    per_thread = {
        "throughput_ips": ips,
        "latency_ms_p50": p50,
        "throughput_speedup_vs_fp32_eager": ips / 1000,
        "throughput_speedup_vs_runtime_fp32": own,
        "peak_fraction": fraction,
    }
    return {"precision": precision, "accuracy_drop_pp": drop, "size_ratio_vs_runtime_fp32": 0.25, "threads_1": per_thread}


def probed(flags=AVX2, cpu="AMD EPYC", caps=None):
    """A machine record as the probe writes it."""
    record = {
        "cpu": cpu,
        "arch": "x86_64",
        "flags": {f: f in flags for f in FLAGS},
        "isa": {"torch_cpu_capability": "AVX2", "onednn": "AVX2", "int8_dot": int8_dot(set(flags))},
        "caps": caps or {"ATEN_CPU_CAPABILITY": None, "ONEDNN_MAX_CPU_ISA": None},
    }
    return {**record, "name": slug(record)}


def metrics(flags, xnnpack_ips, ort_ips, ort_own=2.0, engine=True, cpu="AMD EPYC"):
    peak = {"int8_gmacs": 100.0, "fp32_gmacs": 50.0, **({"int8_engine": "onnxruntime MatMulInteger"} if engine else {})}
    return {
        "machine": probed(flags, cpu),
        "macs_per_image": MACS_PER_IMAGE,
        "peak": {"threads_1": peak},
        "methods": {
            "fp32": method("fp32", 1000, 0.5, own=1.0),
            "executorch_xnnpack_int8": method("int8", xnnpack_ips, 0.10),
            "onnx_qdq_int8": method("int8", ort_ips, 0.12, own=ort_own),
        },
    }


def entry(m):
    return {"name": table.machine_name(m["machine"]), "metrics": m, "source": "x"}


def cells(line: str) -> int:
    """Table cells in a Markdown row: the pipes no backslash escapes, less one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_each_machine_is_ranked_on_its_own_numbers():
    vnni, avx2 = table.summarize(entry(metrics(VNNI, 13000, 11000)), GATE), table.summarize(entry(metrics(AVX2, 3200, 5400)), GATE)
    assert (vnni["machine"], avx2["machine"]) == ("amd-epyc-avx512-vnni", "amd-epyc-avx2")
    assert (vnni["fastest_int8"], avx2["fastest_int8"]) == ("executorch_xnnpack_int8", "onnx_qdq_int8")
    assert avx2["speedup_vs_fp32_eager"] == pytest.approx(5.4) and avx2["peak_fraction"] == 0.5
    assert vnni["ship_throughput"] == "executorch_xnnpack_int8" and vnni["lowest_latency_int8"] == "executorch_xnnpack_int8"


def test_the_shipping_rule_skips_a_candidate_that_fails_the_gate():
    row = table.summarize(entry(metrics(AVX2, 3200, 5400, ort_own=1.1)), GATE)  # ORT fastest, but 1.1x its own FP32 < 1.3
    assert row["fastest_int8"] == "onnx_qdq_int8" and row["ship_throughput"] == "executorch_xnnpack_int8"


def test_a_record_from_before_the_probe_is_named_and_its_single_engine_peak_not_shown():
    old = metrics(AVX2, 3200, 5400, engine=False)
    old["machine"] = {"cpu": "AMD EPYC", "arch": "x86_64", "flag_avx2": True, "flag_avx512_vnni": False}
    row = table.summarize({"name": table.machine_name(old["machine"]), "metrics": old, "source": "x"}, GATE)
    assert row["machine"] == "amd-epyc-avx2" and row["int8_dot"] == "avx2 vpmaddubsw (int16 pairs saturate)"
    assert row["peak_fraction"] is None and "n/a¹" in table.markdown([row])


def measured(record: dict, method: str, ips: tuple[float, float], p50: tuple[float, float]) -> dict:
    """A method's throughput and p50 intervals over the benchmark's repeats, added to a record."""
    run = record["methods"][method]["threads_1"]
    run.update(throughput_ips_ci95_low=ips[0], throughput_ips_ci95_high=ips[1])
    run.update(latency_ms_p50_ci95_low=p50[0], latency_ms_p50_ci95_high=p50[1])
    return record


def test_candidates_whose_intervals_overlap_the_best_ones_are_named_as_a_tie():
    """XNNPACK 13,000 img/s [12,500–13,500] and ORT 12,800 [12,200–13,300] cannot be told apart; their p50s can
    (0.100 [0.095–0.105] ms against 0.120 [0.115–0.130]): a tie for throughput, one name for latency."""
    record = measured(metrics(VNNI, 13000, 12800), "executorch_xnnpack_int8", (12500, 13500), (0.095, 0.105))
    row = table.summarize(entry(measured(record, "onnx_qdq_int8", (12200, 13300), (0.115, 0.13))), GATE)
    assert (row["ship_throughput"], row["ship_throughput_tied"]) == ("executorch_xnnpack_int8", ["onnx_qdq_int8"])
    assert (row["ship_latency"], row["ship_latency_tied"]) == ("executorch_xnnpack_int8", [])
    text = table.markdown([row])
    assert "| `executorch_xnnpack_int8` ≈ `onnx_qdq_int8` | `executorch_xnnpack_int8` |" in text and "²" not in text
    apart = measured(metrics(VNNI, 13000, 12800), "executorch_xnnpack_int8", (12900, 13500), (0.095, 0.105))
    row = table.summarize(entry(measured(apart, "onnx_qdq_int8", (12200, 12850), (0.115, 0.13))), GATE)
    assert row["ship_throughput_tied"] == [] and "| `executorch_xnnpack_int8` | `executorch_xnnpack_int8` |" in table.markdown([row])


def with_rounds(record: dict, method: str, ips: list[float]) -> dict:
    """A method's per-round throughputs (one run's interleaved repeats), their median and [min, max] interval."""
    run = record["methods"][method]["threads_1"]
    ordered = sorted(ips)
    run.update(throughput_ips=(ordered[2] + ordered[3]) / 2, throughput_ips_rounds=ips)
    run.update(throughput_ips_ci95_low=ordered[0], throughput_ips_ci95_high=ordered[-1])
    run.update(latency_ms_p50_ci95_low=0.09, latency_ms_p50_ci95_high=0.2)
    return record


# One run's six rounds, the machine slower in rounds 3 and 4: the intervals of both methods span the slow rounds.
XNNPACK_ROUNDS = [13000, 13100, 10000, 10100, 13050, 12950]
CLOSE_BEHIND = [12500, 12600, 9600, 9700, 12550, 12450]  # 4 % behind in every round: closer than runs reproduce
FAR_BEHIND = [9000, 12800, 7000, 7100, 9100, 9000]  # 30 % behind in most rounds, ahead in one


def test_within_one_run_a_tie_is_a_candidate_within_the_margin_of_the_best_round_by_round():
    """Within one run the fleet compares round by round: 4 % behind in all six rounds is a tie (closer than two runs
    of one machine reproduce); a median 30 % behind is not, although one round and the overlapping intervals say
    they might be alike."""
    base = with_rounds(metrics(VNNI, 13000, 12800), "executorch_xnnpack_int8", XNNPACK_ROUNDS)
    close = table.summarize(entry(with_rounds(copy.deepcopy(base), "onnx_qdq_int8", CLOSE_BEHIND)), GATE)
    assert (close["ship_throughput"], close["ship_throughput_tied"]) == ("executorch_xnnpack_int8", ["onnx_qdq_int8"])
    assert "| `executorch_xnnpack_int8` ≈ `onnx_qdq_int8` |" in table.markdown([close])
    far = with_rounds(copy.deepcopy(base), "onnx_qdq_int8", FAR_BEHIND)
    assert table.interval(far["methods"]["onnx_qdq_int8"]["threads_1"], "throughput_ips")[1] >= 10000  # the intervals overlap
    row = table.summarize(entry(far), GATE)
    assert (row["ship_throughput"], row["ship_throughput_tied"]) == ("executorch_xnnpack_int8", [])


def test_a_record_without_intervals_names_one_candidate_marked_as_one_run():
    row = table.summarize(entry(metrics(VNNI, 13000, 12999)), GATE)  # 1 img/s apart, but one run shows no tie
    text = table.markdown([row])
    assert row["ship_throughput_tied"] == [] and row["intervals"] is False
    assert "| `executorch_xnnpack_int8`² | `executorch_xnnpack_int8`² |" in text and table.SINGLE_RUN in text.splitlines()


def test_a_record_measured_before_the_repeats_is_read_and_shown_as_one_run():
    from edgequant.params import load

    stored = table.load(ROOT / "tests/cpuinfo", "intel-xeon-amx.benchmark.json")  # the AMX Xeon's at 8374379, as it was written
    row = table.summarize(stored, load(GateParams, "gate", ROOT / "params.yaml"))
    assert row["intervals"] is False and row["ship_throughput_tied"] == row["ship_latency_tied"] == []
    assert f"| {table.code(row['ship_throughput'])}² |" in table.markdown([row])


def test_markdown_states_the_rule_and_one_row_per_machine():
    rows = [table.summarize(entry(metrics(f, a, b)), GATE) for f, a, b in ((VNNI, 13000, 11000), (AVX2, 3200, 5400))]
    text = table.markdown(rows)
    assert text.count("\n| `") == 2 and table.SHIP_RULE in text
    assert "| `amd-epyc-avx2` | avx2 vpmaddubsw (int16 pairs saturate) | `onnx_qdq_int8` | 5.4× |" in text


def test_strings_from_a_record_cannot_shift_cells_or_end_the_table():
    row = table.summarize(entry(metrics(AVX2, 3200, 5400)), GATE)
    row["machine"] = "a|b\n<!-- fleet:end -->\n# injected"
    row["int8_dot"] = "x | y <script>alert(1)</script> [link](http://example.invalid) `code`"
    text = table.markdown([row])
    assert [cells(line) for line in text.splitlines() if line.startswith("|")] == [CELLS_PER_ROW] * 3
    assert "<!--" not in text and "<script" not in text and "&lt;!-- fleet:end --&gt;" in text
    assert r"\[link\](http://example.invalid) \`code\`" in text  # shown as typed: no link, no code span
    assert not any(line.startswith("#") for line in text.splitlines())


def test_a_folder_left_out_is_named_as_plain_text():
    row = table.summarize(entry(metrics(AVX2, 3200, 5400)), GATE)
    text = table.markdown([row], skipped=["machines/z: bad | record\n## heading <!-- x -->"])
    assert text.splitlines()[-1] == r"Not shown: machines/z: bad \| record ## heading &lt;!-- x --&gt;"


@pytest.mark.parametrize("caps", [{}, {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_the_probes_own_record_is_read_and_named_as_the_probe_names_it(caps):
    record = probe(env=caps)
    assert table.machine_name(record) == record["name"]


def test_save_puts_a_run_under_its_machine_name(tmp_path):
    (tmp_path / "machine.json").write_text(json.dumps(probed(AVX2)))
    (tmp_path / "benchmark.json").write_text(json.dumps(metrics(AVX2, 1, 2)))
    folder = table.save([tmp_path / "benchmark.json"], tmp_path / "machine.json", tmp_path / "machines")
    assert folder.name == "amd-epyc-avx2" and table.load(folder)["name"] == "amd-epyc-avx2"


def test_a_folder_that_is_not_a_benchmark_record_is_named(tmp_path):
    (tmp_path / "benchmark.json").write_text("{}")
    with pytest.raises(ValueError, match=r"benchmark.json: machine must be a JSON object, got NoneType None"):
        table.load(tmp_path)


# --- Importing: the name is computed from the record, checked as a plain slug, and only its own folder is replaced.

HOSTILE_NAMES = ["../x", ".", "", "ABSOLUTE", "..", "a" * 300, 3, ["x"], "a/b", "amd-epyc\n-avx2"]


def import_device(tmp_path, record: dict | str, machine: dict | None = None) -> tuple[list[str], object]:
    """A device's output (benchmark.json, machine.json) as the bench bundle's runner writes it, and the import command line."""
    device = tmp_path / "device"
    device.mkdir(exist_ok=True)
    (device / "benchmark.json").write_text(record if isinstance(record, str) else json.dumps(record))
    (device / "machine.json").write_text(json.dumps(machine or probed(AVX2)))
    out = tmp_path / "machines"
    return [str(device / "benchmark.json"), "--machine", str(device / "machine.json"), "--out", str(out)], device


@pytest.fixture
def kept(tmp_path):
    """What an import must never touch: another machine's folder, a sibling of machines/, a folder elsewhere."""
    files = [tmp_path / "machines/amd-epyc-avx512-vnni/benchmark.json", tmp_path / "x/keep.txt", tmp_path / "abs/keep.txt"]
    for f in files:
        f.parent.mkdir(parents=True)
        f.write_text("kept")
    return files


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=lambda n: ascii(n)[:12])
def test_an_imported_machine_name_never_leaves_its_folder(tmp_path, capsys, kept, name):
    name = str(tmp_path / "abs") if name == "ABSOLUTE" else name
    argv, device = import_device(tmp_path, metrics(AVX2, 3200, 5400), {**probed(AVX2), "name": name})
    assert table.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{device / 'machine.json'}: machine.name" in err and "is not a plain name" in err, err
    assert all(f.read_text() == "kept" for f in kept)
    assert sorted(p.name for p in (tmp_path / "machines").iterdir()) == ["amd-epyc-avx512-vnni"]


def test_a_cpu_name_that_would_make_a_long_folder_is_refused(tmp_path, capsys, kept):
    record = metrics(AVX2, 3200, 5400)
    record["machine"]["cpu"] = "x" * 300
    argv, device = import_device(tmp_path, record, record["machine"])
    assert table.main(argv) == 1
    assert f"{device / 'benchmark.json'}: machine.cpu must be printable text of 1 to 200 characters" in capsys.readouterr().err


def test_an_import_replaces_only_a_machines_folder(tmp_path, capsys):
    argv, _ = import_device(tmp_path, metrics(AVX2, 3200, 5400))
    notes = tmp_path / "machines/amd-epyc-avx2/notes.txt"  # a folder of that name that holds no machine's record
    notes.parent.mkdir(parents=True)
    notes.write_text("mine")
    assert table.main(argv) == 1 and "exists and is not a machine's folder" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    notes.unlink()
    (notes.parent / "benchmark.json").write_text(json.dumps(metrics(AVX2, 1, 2)))  # an earlier import: replaced
    assert table.main(argv) == 0 and table.load(notes.parent)["metrics"]["methods"]["onnx_qdq_int8"]["threads_1"]["throughput_ips"] == 5400


def deep(record: dict) -> str:
    return json.dumps(record)[:-1] + ', "extra": ' + "[" * 200_000 + "]" * 200_000 + "}"


def mutate(change):
    def make() -> dict:
        record = metrics(AVX2, 3200, 5400)
        change(record)
        return record

    return make


def ort(key, value):
    return mutate(lambda r: r["methods"]["onnx_qdq_int8"]["threads_1"].__setitem__(key, value))


BAD_RECORDS = {
    "no peak": (mutate(lambda r: r.pop("peak")), "peak must be a JSON object, got NoneType None"),
    "string throughput": (ort("throughput_ips", "fast"), "methods.onnx_qdq_int8.threads_1.throughput_ips must be a finite number"),
    "no INT8 method": (mutate(lambda r: r.__setitem__("methods", {"fp32": r["methods"]["fp32"]})), "methods has no INT8 method"),
    "NaN throughput": (ort("throughput_ips", float("nan")), "methods.onnx_qdq_int8.threads_1.throughput_ips is nan"),
    "negative throughput": (ort("throughput_ips", -5.0), "methods.onnx_qdq_int8.threads_1.throughput_ips must be a finite number > 0"),
    "1e300 throughput": (ort("throughput_ips", 1e300), "methods.onnx_qdq_int8.threads_1.throughput_ips must be a finite number > 0"),
    "infinite peak": (mutate(lambda r: r["peak"]["threads_1"].__setitem__("int8_gmacs", float("inf"))), "peak.threads_1.int8_gmacs is inf"),
    "string latency": (ort("latency_ms_p50", "1 ms"), "methods.onnx_qdq_int8.threads_1.latency_ms_p50 must be a finite number"),
    "a list for methods": (mutate(lambda r: r.__setitem__("methods", ["onnx_qdq_int8"])), "methods must be a JSON object"),
    "a path as method name": (mutate(lambda r: r["methods"].__setitem__("../x", r["methods"]["fp32"])), "'../x' is not a method name"),
    "a thread count of zero": (mutate(lambda r: r["peak"].__setitem__("threads_0", r["peak"]["threads_1"])), "peak.threads_0"),
    "nested 200,000 deep": (lambda: deep(metrics(AVX2, 3200, 5400)), "nested more than 16 levels deep"),
    "a figure outside its interval": (
        mutate(lambda r: r["methods"]["onnx_qdq_int8"]["threads_1"].update(throughput_ips_ci95_low=5500, throughput_ips_ci95_high=5600)),
        "methods.onnx_qdq_int8.threads_1.throughput_ips 5400 is not within its interval [5500, 5600]",
    ),
    "half an interval": (ort("latency_ms_p50_ci95_low", 0.1), "methods.onnx_qdq_int8.threads_1.latency_ms_p50_ci95_high is missing"),
    "a string for repeats": (mutate(lambda r: r.__setitem__("repeats", "6")), "repeats must be a whole number from 1 to 100"),
}


@pytest.mark.parametrize("case", BAD_RECORDS)
def test_a_bad_record_is_refused_on_import_naming_file_and_field(tmp_path, capsys, case):
    make, field = BAD_RECORDS[case]
    argv, device = import_device(tmp_path, make())
    assert table.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fleet: {device / 'benchmark.json'}: ") and field in err, err
    assert not (tmp_path / "machines").exists() or not any((tmp_path / "machines").iterdir())


def test_a_record_too_large_is_refused_before_it_is_read(tmp_path, capsys):
    argv, device = import_device(tmp_path, metrics(AVX2, 3200, 5400))
    with (device / "benchmark.json").open("r+b") as f:
        f.truncate(2**30)  # 1 GiB, sparse: nothing is written, and nothing may be read
    assert table.main(argv) == 1
    assert f"{device / 'benchmark.json'}: 1,073,741,824 bytes, more than a record holds" in capsys.readouterr().err


# --- The fleet stage: a bad folder is named and left out; every other machine stays.


def run_stage(tmp_path, here: dict, machines) -> tuple[int, str]:
    (tmp_path / "here").mkdir()
    (tmp_path / "here/benchmark.json").write_text(json.dumps(here))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    md = tmp_path / "out/fleet.md"
    argv = ["--metrics", str(tmp_path / "here/benchmark.json"), "--machines", str(machines), "--md", str(md)]
    rc = fleet_stage.main([*argv, "--png", str(tmp_path / "out/fleet.png"), "--params", str(tmp_path / "params.yaml")])
    return rc, md.read_text() if md.exists() else ""


@pytest.mark.slow
def test_the_fleet_stage_names_a_bad_folder_and_shows_every_other(tmp_path, capsys):
    machines = tmp_path / "machines"
    for name, record in (("amd-epyc-avx512-vnni", metrics(VNNI, 13000, 11000)), ("bad", metrics(AVX2, 1, 2, cpu="Intel Xeon"))):
        (machines / name).mkdir(parents=True)
        (machines / name / "benchmark.json").write_text(json.dumps(record))
    broken = json.loads((machines / "bad/benchmark.json").read_text())
    del broken["peak"]  # as a hand edit or an import made before records were checked leaves it
    (machines / "bad/benchmark.json").write_text(json.dumps(broken))
    (machines / "elsewhere").symlink_to(machines / "amd-epyc-avx512-vnni")  # a link may lead anywhere: not followed
    shutil.copytree(machines / "amd-epyc-avx512-vnni", machines / "Copy of it")
    rc, md = run_stage(tmp_path, metrics(AVX2, 3200, 5400), machines)
    err = capsys.readouterr().err
    assert rc == 0 and md.count("\n| `") == 2 and "| `amd-epyc-avx512-vnni` |" in md and "| `amd-epyc-avx2` |" in md
    assert f"Not shown: {machines}/elsewhere: a symlink" in md and f"Not shown: {machines}/Copy of it: not a machine's name" in md
    assert f"Not shown: {machines}/bad/benchmark.json: peak must be a JSON object" in md
    assert f"fleet: not shown: {machines}/bad/benchmark.json: peak must be a JSON object" in err


def test_make_machine_saves_the_run_whole_and_refuses_a_probe_of_another_machine(tmp_path):
    for f in table.RUN_FILES:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x,y\n" if f.endswith(".csv") else "{}")
    (tmp_path / "metrics/benchmark.json").write_text(json.dumps(metrics(AVX2, 3200, 5400)))
    (tmp_path / "metrics/machine.json").write_text(json.dumps(probed(VNNI)))  # the probe ran again elsewhere since
    with pytest.raises(ValueError, match=r"machine.json: names the machine amd-epyc-avx512-vnni, but benchmark.json was measured on"):
        table.save_run(tmp_path / "machines", tmp_path)
    (tmp_path / "metrics/machine.json").write_text(json.dumps(probed(AVX2)))
    assert table.save_run(tmp_path / "machines", tmp_path).name == "amd-epyc-avx2"
    assert table.unsaved(lambda f: (tmp_path / f).read_bytes() if (tmp_path / f).is_file() else None, str(tmp_path / "machines")) == []


def test_an_import_is_a_plain_copy_of_its_source(tmp_path):
    source = tmp_path / "shared/some-device"
    shutil.copytree(ROOT / "machines/amd-epyc-avx2", source)
    first = table.import_folder(source, tmp_path / "machines")
    second = table.import_folder(source, tmp_path / "machines")  # a later import of the same source: the same bytes again
    assert first == second and {p.name: p.read_bytes() for p in first.iterdir()} == {p.name: p.read_bytes() for p in source.iterdir()}


def test_a_later_import_never_replaces_another_run_of_the_machine_unasked(tmp_path, capsys):
    source = tmp_path / "shared/some-device"
    shutil.copytree(ROOT / "machines/amd-epyc-avx2", source)
    target = table.import_folder(source, tmp_path / "machines")
    (target / "train.json").write_text("{}")  # as if `make machine` had saved a newer run there since
    assert table.main(["import", str(source), "--out", str(tmp_path / "machines")]) == 1
    assert "holds another run of this machine" in capsys.readouterr().err and (target / "train.json").read_text() == "{}"
    assert table.main(["import", "--replace", str(source), "--out", str(tmp_path / "machines")]) == 0
    assert (target / "train.json").read_bytes() == (source / "train.json").read_bytes()


# --- The fleet keeps every machine: the one whose results are committed in metrics/ lives in machines/ too.


def committed(path: str) -> bytes | None:
    """The file as committed (a run on another CPU rewrites the workspace's metrics/ before the tests run), else as it is here."""
    proc = subprocess.run(["git", "show", f"HEAD:{path}"], cwd=ROOT, capture_output=True)
    if proc.returncode == 0:
        return proc.stdout
    return (ROOT / path).read_bytes() if (ROOT / path).is_file() else None


def committed_machine() -> str:
    return table.machine_name(json.loads(committed("metrics/benchmark.json"))["machine"])


def machine_rows(md: str) -> list[str]:
    """The machine named first in each row of every table in `md`."""
    return re.findall(r"^\| `([^`]+)` \|", md, re.MULTILINE)


def fleet_rows(md: str) -> list[str]:
    """The machines of the fleet table: the first table of plots/fleet.md (BF16's and the emulated CPUs' follow it)."""
    return machine_rows(md.split("\n\n", 1)[0])


def test_the_committed_machine_has_an_identical_copy_in_the_fleet():
    """`make machine` keeps it so; a run re-measured on another CPU is committed together with its copy."""
    assert table.unsaved(committed) == [], (
        f"run `make machine` (or `python -m edgequant.fleet.table save`) and commit machines/{committed_machine()}"
    )


def test_every_machine_folder_is_named_by_its_record():
    from edgequant.fleet import numerics

    entries, skipped = table.gather(ROOT / "machines")
    emulated, unreadable = numerics.gather(ROOT / "machines")
    assert skipped == [] and unreadable == []
    named = {e["name"] for e in entries} | {e["name"] for e in emulated}
    assert named == {p.name for p in (ROOT / "machines").iterdir() if p.is_dir()}
    assert len(entries) >= 3  # the committed AVX-512 VNNI EPYC, the Zen 3 AVX2 EPYC and the AMX Xeon at least
    assert emulated  # and the Arm numerics row (emulated: no timing)


def test_a_run_on_another_cpu_keeps_every_committed_machines_row(tmp_path):
    here = json.loads(committed("metrics/benchmark.json"))
    here["machine"]["caps"] = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # named apart by the probe
    here["machine"]["isa"].update(torch_cpu_capability="DEFAULT", onednn="AVX2")
    here["machine"]["name"] = slug(here["machine"])
    rc, md = run_stage(tmp_path, here, ROOT / "machines")
    folders = {p.name for p in (ROOT / "machines").iterdir() if p.is_dir()}
    assert rc == 0 and fleet_rows(md)[0] == here["machine"]["name"]
    assert set(machine_rows(md)) == {here["machine"]["name"], committed_machine(), *folders}, md  # emulated rows too
    assert "| `intel-xeon-amx` | `openvino_bf16` | `openvino_fp32` |" in md  # the stage sets each machine's BF16 beside its FP32


@pytest.mark.slow
def test_a_fresh_run_on_another_machine_keeps_the_committed_machines_fleet_row(clone):
    """A teammate's clone: the run committed there was saved by `make machine`; a run on another CPU (an ISA cap
    names the machine apart) shows that machine, every other committed one, and itself."""
    work, env = clone
    name = sh([sys.executable, "-m", "edgequant.fleet.table", "save"], work, env).strip()  # what `make machine` does after `dvc repro`
    sh(["git", "add", "machines"], work, env)
    sh(["git", "commit", "-qm", f"results of {name}"], work, env)
    capped = dict(env, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="AVX2")
    out = sh(["dvc", "repro"], work, capped)
    here = table.machine_name(json.loads((work / "metrics/benchmark.json").read_text())["machine"])
    # The timed machines' table first; the emulated CPUs' numerics table (a row per method of each) after BF16's.
    text = (work / "plots/fleet.md").read_text()
    rows, numerics = fleet_rows(text), set(machine_rows(text.partition("Emulated CPUs")[2]))
    folders = {p.name for p in (work / "machines").iterdir() if p.is_dir()}
    assert "Running stage 'fleet'" in out and here != name and name in folders
    assert rows[0] == here and len(rows) == len(set(rows)) and not numerics & set(rows), rows
    assert set(rows) | numerics == {here, *folders} and len(rows) + len(numerics) == len(folders) + 1, (rows, numerics)
