"""Workloads beside the reference: the dvc.yaml derived for each, and one `dvc repro -P` running them side by side."""

import json

import pytest
import yaml

from edgequant.report.tables import workload_table
from edgequant.workloads import SHARED, SKIPPED, derive, render, write

from .conftest import ALWAYS_RUN, ROOT, TINY, sh, stages_run

REFERENCE = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def paths_of(stage: dict, keys=("deps", "outs", "metrics", "plots")) -> list[str]:
    body = stage.get("do", stage)
    entries = [e for key in keys for e in body.get(key, [])]
    return [e if isinstance(e, str) else next(iter(e)) for e in entries]


CODE = ("stages/", "edgequant/", "machines")


def test_a_workload_runs_every_stage_but_the_shared_ones_with_its_own_outputs_and_params():
    derived = derive(REFERENCE, "workloads/w")
    assert set(derived["stages"]) == set(REFERENCE["stages"]) - set(SKIPPED)
    for name, stage in derived["stages"].items():
        body = stage.get("do", stage)
        assert body["wdir"] == "../.." and body["cmd"].endswith(" --params workloads/w/params.yaml"), name
        # Whatever a stage writes is under the workload's folder; whatever it reads is there too, or code, or shared.
        written = paths_of(stage, ("outs", "metrics", "plots"))
        assert written and all(p.startswith("workloads/w/") for p in written), (name, written)
        args = body["cmd"].split()[3:]  # python -m stages.<name> ...
        read = paths_of(stage, ("deps",)) + [a for a in args if not a.startswith("--") and "{" not in a and not a.isdigit()]
        strays = [p for p in read if not p.startswith(("workloads/w/", *CODE)) and p not in SHARED]
        assert not strays, f"{name} reaches the reference's {strays}"
        reference_code = [p for p in paths_of(REFERENCE["stages"][name]) if p.startswith(CODE)]
        assert reference_code == [p for p in paths_of(stage) if p.startswith(CODE)], name
        assert all(set(e) == {"workloads/w/params.yaml"} for e in body.get("params", [])), name
    assert derived["stages"]["quantize"]["foreach"] == "${quantize.methods}"  # DVC reads it from the workload's params.yaml
    assert derived["stages"]["benchmark"]["deps"][1] == "metrics/machine.json"  # the machine, probed once for all
    # Top-level plots: DVC reads their paths from the folder of the dvc.yaml that names them, so they stay as written.
    assert derived["plots"] == REFERENCE["plots"]


def test_a_stage_the_derivation_cannot_move_is_refused_by_name():
    reference = {"stages": {"odd": {"cmd": ["python", "-m", "stages.odd"]}}}
    with pytest.raises(ValueError, match="stage odd needs one cmd string and no wdir of its own"):
        derive(reference, "workloads/w")


def test_each_workloads_dvc_yaml_is_the_one_derived_from_the_reference():
    folders = [p.parent for p in (ROOT / "workloads").glob("*/dvc.yaml")]
    assert folders
    for folder in folders:
        name = folder.relative_to(ROOT).as_posix()
        assert (folder / "dvc.yaml").read_text() == render((ROOT / "dvc.yaml").read_text(), name), (
            f"stale: python -m edgequant.workloads {name}"
        )


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("../elsewhere", "a workload is a folder workloads/<name>"),
        ("workloads/none", "workloads/none/params.yaml does not exist"),
        ("workloads/x;touch PWNED;", "a workload is a folder workloads/<name>"),  # the name reaches every stage's shell command
        ("workloads/two words", "a workload is a folder workloads/<name>"),
        ("bundle/w", "a workload is a folder workloads/<name>"),  # inside a pipeline output, which its stage replaces whole
        ("workloads/a/b", "a workload is a folder workloads/<name>"),
        ("/abs/workloads/w", "a workload is a folder workloads/<name>"),
    ],
)
def test_writing_a_workload_refuses_a_folder_it_cannot_use(tmp_path, monkeypatch, folder, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    with pytest.raises(ValueError, match=message):
        write(folder)
    assert not list(tmp_path.rglob("dvc.yaml"))[1:]


@pytest.mark.slow
def test_workloads_run_side_by_side_and_a_param_re_runs_only_its_own_stages(clone):
    work, env = clone
    folder = "workloads/tiny-dwsep_cnn"
    params = {**TINY, **yaml.safe_load((work / "params.yaml").read_text())}  # the clone's tiny data and its md5s
    params["train"] = {**params["train"], "model": "dwsep_cnn"}
    params["quantize"] = {**params["quantize"], "methods": ["fp32", "litert_fp32", "litert_int8"]}  # the npu stage needs litert_int8
    params["gate"] = {**params["gate"], "methods": ["litert_int8"], "max_size_ratio": 0.5}  # framing weighs more beside 67 k parameters
    (work / folder).mkdir(parents=True)
    (work / folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["python", "-m", "edgequant.workloads", folder], work, env)
    reference_outputs = {p: p.read_bytes() for top in ("metrics", "plots") for p in (work / top).rglob("*") if p.is_file()}
    ran = stages_run(sh(["dvc", "repro", "-P"], work, env))
    assert ran and all(s.startswith(f"{folder}/dvc.yaml:") for s in ran), ran  # the reference was up to date
    assert {f"{folder}/dvc.yaml:benchmark", f"{folder}/dvc.yaml:plot"} <= ran
    assert '"model": "dwsep_cnn"' in (work / folder / "metrics/benchmark.json").read_text()
    assert (work / folder / "plots/accuracy.png").is_file()
    assert all(p.read_bytes() == b for p, b in reference_outputs.items())  # the reference's charts and metrics are its own

    params["gate"]["max_size_ratio"] = 0.6
    (work / folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(sh(["dvc", "repro", "-P"], work, env)) == {f"{folder}/dvc.yaml:validate", f"{folder}/dvc.yaml:gate"}
    reference = yaml.safe_load((work / "params.yaml").read_text())
    reference["gate"]["max_size_ratio"] = 0.5
    (work / "params.yaml").write_text(yaml.safe_dump(reference, sort_keys=False))
    changed = json.loads(sh(["dvc", "status", "--json"], work, env))  # every pipeline's stages
    assert set(changed) - {ALWAYS_RUN} == {"validate", "gate", "fleet"}, changed  # the reference's readers of `gate`


def test_a_significant_drop_is_bold_and_kept_layers_are_listed():
    def row(acc, drop, lost, gained, p):
        return {
            "precision": "int8",
            "accuracy_pct": acc,
            "accuracy_drop_pp": drop,
            "flips_lost": lost,
            "flips_gained": gained,
            "mcnemar_p": p,
            "accuracy_drop_pp_ci95_low": drop - 0.1,
            "accuracy_drop_pp_ci95_high": drop + 0.1,
            "size_ratio_vs_runtime_fp32": 0.3,
            "threads_1": {"throughput_speedup_vs_runtime_fp32": 2.0},
        }

    metrics = {
        "machine": {"name": "test-cpu"},
        "peak": {"threads_1": {}},
        "methods": {
            "fp32": {"precision": "fp32", "accuracy_pct": 90.0, "threads_1": {}},
            "noisy": row(89.9, 0.1, 40, 30, 0.28),
            "worse": row(89.6, 0.4, 60, 20, 0.00001),
        },
    }
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    gate = {
        "checks": [
            {"method": "worse", "param": "gate.max_accuracy_drop_pp", "passed": False},
            {"method": "worse", "param": "gate.max_size_ratio", "passed": False},
            {"method": "worse", "param": "gate.min_speedup", "passed": True},
            {"method": "noisy", "param": "gate.max_accuracy_drop_pp", "passed": True},
        ]
    }
    table = workload_table("w", metrics, params, {"worse": {"fp32_layers": ["conv1", "blocks.0.0"], "validation_drop_pp": 0.05}}, gate)
    lines = table.splitlines()
    assert lines[2].startswith("| `fp32` | 90.00 |")
    assert "| `noisy` | 89.90 | +0.10 [+0.00, +0.20] | 40 / 30 | 0.28 |" in table  # within noise: not bold
    assert (
        "| `worse` | 89.60 | **+0.40** [+0.30, +0.50] | 60 / 20 | 1e-05 |" in table
        and "`conv1`, `blocks.0.0` (+0.05 pp) | misses accuracy, size |" in table
    )
    assert "| 0.28 | 0.30 | 2.00× | – | pass |" in table


def test_every_path_in_a_derived_command_is_a_plain_shell_word():
    import shlex

    for name, stage in derive(REFERENCE, "workloads/w")["stages"].items():
        cmd = stage.get("do", stage)["cmd"]
        assert shlex.join(shlex.split(cmd)) == cmd, name  # quoting changes nothing: no token needs it
        assert "workloads/w/params.yaml" in shlex.split(cmd), name


def test_every_stage_that_can_import_a_users_model_depends_on_its_module():
    """A stage whose import closure holds the model importer must list the user's model module: otherwise DVC would not
    re-run it when that module changes."""
    from edgequant.tracked import MODEL_STAGES

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    importing = {name for name, stage in stages.items() if "edgequant/model/imported.py" in stage.get("do", stage).get("deps", [])}
    assert importing and importing <= set(MODEL_STAGES), sorted(importing - set(MODEL_STAGES))
