"""The machine record (probe stage) and the roofline: right on every ISA, stable on one machine, an input of the benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from edgequant.machine import onednn_isa, probe, read_cpuinfo, torch_capability
from edgequant.roofline import ENGINES, measure_peak

from .conftest import ROOT, is_up_to_date, sh, stages_run

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse sse2 fma avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16
processor\t: 1
vendor_id\t: GenuineIntel
"""
ZEN3 = ZEN4.replace("model\t\t: 17", "model\t\t: 1").replace("EPYC 9R14", "EPYC 7R13").split("avx512f")[0] + "\n"
ARM = (
    "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp sve i8mm\n"
    "CPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
)


def test_first_processor_only():
    fields = read_cpuinfo(ZEN4)
    assert fields["vendor_id"] == "AuthenticAMD" and fields["model"] == "17"


@pytest.mark.parametrize(
    ("cpuinfo", "name", "torch_isa", "onednn", "dot"),
    [
        (ZEN4, "amd-epyc-9r14-avx512-vnni", "AVX512", "AVX512_CORE_BF16", "avx512_vnni vpdpbusd (no saturation)"),
        (ZEN3, "amd-epyc-7r13-avx2", "AVX2", "AVX2", "avx2 vpmaddubsw (int16 pairs saturate)"),
    ],
)
def test_x86_records(cpuinfo, name, torch_isa, onednn, dot):
    record = probe(cpuinfo, env={})
    assert record["name"] == name and record["isa"] == {"torch_cpu_capability": torch_isa, "onednn": onednn, "int8_dot": dot}
    assert record["versions"]["torch"].startswith("2.13") and record["versions"]["executorch"] == "1.5.1"


def test_arm_record():
    record = probe(ARM, env={})
    assert record["flags"]["asimddp"] and record["flags"]["i8mm"] and record["vendor"] == "0x41" and record["model"] == "0xd40"
    assert record["isa"]["int8_dot"] == "arm i8mm smmla (no saturation)"


def test_caps_lower_the_isa_and_name_the_machine_apart():
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    record = probe(ZEN4, env=env)
    assert record["isa"]["torch_cpu_capability"] == "AVX2" and record["isa"]["onednn"] == "AVX2"
    assert record["name"] == "amd-epyc-9r14-avx512-vnni-capped-avx2" and record["caps"] == env
    assert torch_capability({"avx2", "fma"}, {"ATEN_CPU_CAPABILITY": "avx512"}) == "AVX2"  # a cap never raises it
    assert onednn_isa({"avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX2"


def test_same_machine_same_bytes():
    assert json.dumps(probe()) == json.dumps(probe())


@pytest.mark.parametrize("cap", [None, "avx2", "default"])
def test_probe_agrees_with_what_torch_reports(cap, subprocess_env):
    env = dict(subprocess_env)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if cap:
        env["ATEN_CPU_CAPABILITY"] = cap
    code = (
        "import json, torch; from edgequant.machine import probe; "
        "print(json.dumps([probe()['isa']['torch_cpu_capability'], torch.backends.cpu.get_cpu_capability()]))"
    )
    ours, torchs = json.loads(
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    assert ours == torchs


def test_roofline_is_the_best_engine_and_names_it():
    peak = measure_peak(1, 64, 0.02)
    for precision, engines in ENGINES.items():
        measured = peak[f"{precision}_engines_gmacs"]
        assert set(measured) <= set(engines) and len(measured) >= 2 and min(measured.values()) > 0
        assert peak[f"{precision}_gmacs"] == max(measured.values()) and measured[peak[f"{precision}_engine"]] == peak[f"{precision}_gmacs"]
    torch.backends.quantized.engine = torch.backends.quantized.supported_engines[-1]


@pytest.mark.slow
def test_another_machine_re_runs_only_the_benchmark_and_what_reads_it(clone):
    work, env = clone
    start = time.perf_counter()
    out = sh(["dvc", "repro"], work, env)
    noop_s = time.perf_counter() - start
    print(f"no-op dvc repro with the probe: {noop_s:.2f} s")  # a figure for the README, not a timed assertion
    assert "Running stage 'probe'" in out and stages_run(out) == set() and is_up_to_date(work, env)
    capped = dict(env, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")  # as if on an AVX2 CPU
    out = sh(["dvc", "repro"], work, capped)
    assert stages_run(out) == {"benchmark", "gate", "fleet", "plot"}, out
    machine = json.loads((work / "metrics/benchmark.json").read_text())["machine"]
    assert machine["isa"]["torch_cpu_capability"] == "AVX2" and machine["reported"]["torch_cpu_capability"] == "AVX2"
    assert stages_run(sh(["dvc", "repro"], work, capped)) == set()  # same (capped) machine again: nothing
