"""The machine record (probe stage), the runtimes' INT8 evidence and the roofline: right on every committed CPU and
under ISA caps, stable on one machine, an input of the benchmark."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from edgequant.measure.evidence import mlas_kernel
from edgequant.measure.kernels import isa_line_path, kernel_name_path, onednn_int8_primitives
from edgequant.measure.machine import CAPS, INT8_PATHS, MAX_NAME_CHARS, mlas_path, name_of, probe, read_cpuinfo, slug, torch_capability
from edgequant.measure.roofline import ENGINES, measure_peak
from edgequant.measure.timing import machine_info
from edgequant.quantize.precisions import lacking

from .conftest import ALWAYS_RUN, ROOT, is_up_to_date, sh, stages_run

SAMPLES = Path(__file__).parent / "cpuinfo"
SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
AMX_XEON_MEASURED_INT8_GMACS = 761  # the AMX Xeon's INT8 peak at 1 thread (ORT MatMulInteger, ../shared/machines)
ARM = (
    "processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes crc32 atomics asimddp sve i8mm\n"
    "CPU implementer\t: 0x41\nCPU part\t: 0xd40\n"
)


def sample(name: str, extra: str = "") -> str:
    return (SAMPLES / f"{name}.txt").read_text() + extra


def this_cpu_flags() -> set[str]:
    fields = read_cpuinfo(Path("/proc/cpuinfo").read_text())
    return set(fields.get("flags", "").split())


def test_first_processor_only():
    fields = read_cpuinfo(sample("amd-epyc-avx512-vnni") + "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert fields["vendor_id"] == "AuthenticAMD" and fields["model"] == "2"


# name, torch capability, oneDNN ISA, widest INT8 path, paths by rule (oneDNN, FBGEMM, MLAS), int8_dot
COMMITTED = [
    (
        "intel-xeon-amx",
        "AVX512",
        "AVX512_CORE_AMX",
        "amx",
        {"onednn": "amx", "fbgemm": "avx512_vnni", "mlas": "amx"},
        "amx_int8 tdpbusd tiles (no saturation)",
    ),
    (
        "amd-epyc-avx512-vnni",
        "AVX512",
        "AVX512_CORE_BF16",
        "avx512_vnni",
        {"onednn": "avx512_vnni", "fbgemm": "avx512_vnni", "mlas": "avx512_vnni"},
        "avx512_vnni vpdpbusd (no saturation)",
    ),
    (
        "amd-epyc-zen3-avx2",
        "AVX2",
        "AVX2",
        "avx2_pairs",
        {"onednn": "avx2_pairs", "fbgemm": "avx2_pairs", "mlas": "avx2_pairs"},
        "avx2 vpmaddubsw (int16 pairs saturate)",
    ),
]


@pytest.mark.parametrize(("cpu", "torch_isa", "onednn", "path", "by_rule", "dot"), COMMITTED)
def test_each_committed_cpu_gets_its_int8_path_by_each_librarys_rule(cpu, torch_isa, onednn, path, by_rule, dot):
    isa = probe(sample(cpu), env={})["isa"]
    assert (isa["torch_cpu_capability"], isa["onednn"], isa["int8_path"], isa["int8_dot"]) == (torch_isa, onednn, path, dot)
    assert isa["int8_paths_by_rule"] == by_rule


@pytest.mark.parametrize(
    ("cpu", "name"),
    [("intel-xeon-amx", "intel-xeon-amx"), ("amd-epyc-avx512-vnni", "amd-epyc-avx512-vnni"), ("amd-epyc-zen3-avx2", "amd-epyc-avx2")],
)
def test_committed_cpus_are_named_without_marketing_marks(cpu, name):
    assert probe(sample(cpu), env={})["name"] == name


@pytest.mark.parametrize(
    ("cpu", "flags", "name"),
    [
        ("Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz", {"avx2": True}, "intel-xeon-e5-2686-v4-avx2"),
        ("Intel(R) Xeon(R) Platinum 8488C", {"amx_int8": True}, "intel-xeon-platinum-8488c-amx"),
        ("AMD EPYC 9R14 96-Core Processor", {"avx512_vnni": True}, "amd-epyc-9r14-avx512-vnni"),
        ("AMD EPYC 7R13 Processor", {"avx2": True}, "amd-epyc-7r13-avx2"),
        ("12th Gen Intel(R) Core(TM) i7-1260P", {"avx_vnni": True}, "12th-gen-intel-core-i7-1260p-avx-vnni"),
        ("AMD Ryzen 9 7950X 16-Core Processor", {"avx512_vnni": True}, "amd-ryzen-9-7950x-avx512-vnni"),
    ],
)
def test_names_keep_model_numbers_and_drop_marks_and_clocks(cpu, flags, name):
    assert name_of(cpu, flags, "x86_64") == name


@pytest.mark.parametrize(
    ("cpu", "arch"), [("", "x86_64"), ("Genuine Intel(R) CPU 0000%@", "x86_64"), ("Ünïcode™ Prozessor " * 12, "aarch64"), ("", "")]
)
def test_names_are_plain_bounded_slugs(cpu, arch):
    name = name_of(cpu, {"avx2": True} if arch == "x86_64" else {}, arch)
    assert SLUG.match(name) and len(name) <= MAX_NAME_CHARS, name


def test_a_stored_record_is_named_again_from_its_fields():
    """The fleet re-derives a machine's name from its record: a record written before the clock, the INT8 paths and
    the FBGEMM cap were recorded is named as a new one is."""
    stored = json.loads((SAMPLES / "intel-xeon-amx.machine.json").read_text())
    assert stored["name"] == "intel-r-xeon-r-processor-amx" and slug(stored) == "intel-xeon-amx"


def test_an_arm_cpu_with_i8mm_takes_the_smmla_path_and_a_dotprod_one_sdot():
    record = probe(ARM, env={})
    assert record["flags"]["asimddp"] and record["flags"]["i8mm"] and record["vendor"] == "0x41" and record["model"] == "0xd40"
    assert record["isa"]["int8_dot"] == "arm i8mm smmla (no saturation)" and record["isa"]["int8_paths_by_rule"]["mlas"] == "arm_i8mm"
    assert record["isa"]["int8_ceiling"]["macs_per_cycle"] == INT8_PATHS["arm_i8mm"]["macs_per_cycle"]
    assert mlas_path({"asimd", "asimddp"}) == "arm_dotprod"


def test_caps_lower_the_isa_and_name_the_machine_apart():
    env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    record = probe(sample("amd-epyc-avx512-vnni"), env=env)
    assert record["isa"]["torch_cpu_capability"] == "AVX2" and record["isa"]["onednn"] == "AVX2"
    assert record["name"] == "amd-epyc-avx512-vnni-capped-avx2" and record["caps"] == {**dict.fromkeys(CAPS), **env}
    assert torch_capability({"avx2", "fma"}, {"ATEN_CPU_CAPABILITY": "avx512"}) == "AVX2"  # a cap never raises it


def test_a_onednn_cap_alone_is_named_by_what_it_leaves_and_lowers_only_onednn():
    record = probe(sample("intel-xeon-amx"), env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"})  # no AMX, no BF16
    assert record["name"] == "intel-xeon-amx-capped-avx512-core-vnni"
    assert record["isa"]["int8_paths_by_rule"] == {"onednn": "avx512_vnni", "fbgemm": "avx512_vnni", "mlas": "amx"}  # MLAS has no cap
    fbgemm = probe(sample("intel-xeon-amx"), env={"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"})
    assert fbgemm["isa"]["int8_paths_by_rule"]["fbgemm"] == "avx2_pairs" and fbgemm["name"] == "intel-xeon-amx-capped-avx2"


def test_a_cap_below_avx2_is_honoured():
    isa = probe(sample("amd-epyc-zen3-avx2"), env={"ONEDNN_MAX_CPU_ISA": "SSE41"})["isa"]
    assert isa["onednn"] == "SSE41" and isa["int8_paths_by_rule"]["onednn"] == "sse_pairs"


@pytest.mark.parametrize(
    ("extra", "max_khz", "mhz", "source"),
    [
        ("cpu MHz\t\t: 2445.422\n", "3700000\n", 3700, "cpufreq cpuinfo_max_freq"),  # the driver's max wins
        ("cpu MHz\t\t: 2445.422\n", None, 2450, "cpu MHz (boot-time calibration, to 10 MHz)"),
        ("cpu MHz\t\t: 2445.422\n", "0\n", 2450, "cpu MHz (boot-time calibration, to 10 MHz)"),
        ("", None, None, None),
    ],
)
def test_the_clock_comes_from_the_steadiest_source(extra, max_khz, mhz, source):
    clock = probe(sample("amd-epyc-zen3-avx2").replace("model name", extra + "model name"), env={}, max_freq_khz=max_khz)["clock"]
    assert clock == {"mhz": mhz, "source": source}


def test_the_model_names_clock_beats_cpu_mhz_and_a_live_cpu_mhz_is_not_read():
    named = "model name\t: Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz\ncpu MHz\t\t: 1199.978\nflags\t\t: avx2 fma\n"
    assert probe(named, env={})["clock"] == {"mhz": 2300, "source": "model name"}
    # With APERF/MPERF the kernel prints the last milliseconds' average: it moves with load, so it is not a clock.
    live = [f"model name\t: AMD EPYC\ncpu MHz\t\t: {mhz}\nflags\t\t: avx2 fma aperfmperf\n" for mhz in ("1499.998", "3512.881")]
    first, second = (probe(text, env={}) for text in live)
    assert first["clock"] == {"mhz": None, "source": None} and json.dumps(first) == json.dumps(second)


def test_calibration_jitter_does_not_change_the_record():
    """The boot-time calibration moves by a few kHz between boots; the record must not."""
    texts = [sample("amd-epyc-zen3-avx2").replace("model name", f"cpu MHz\t\t: {mhz}\nmodel name") for mhz in ("2445.422", "2445.418")]
    assert json.dumps(probe(texts[0], env={})) == json.dumps(probe(texts[1], env={}))


def test_the_int8_ceiling_is_the_widest_paths_macs_per_cycle_times_the_clock():
    amx = probe(sample("intel-xeon-amx", "cpu MHz\t\t: 2600.000\n"), env={})["isa"]["int8_ceiling"]
    assert amx == {"path": "amx", "macs_per_cycle": 1024, "gmacs_per_core": pytest.approx(2662.4)}
    assert amx["gmacs_per_core"] > AMX_XEON_MEASURED_INT8_GMACS  # what the AMX Xeon measured sits below its hardware
    zen3 = probe(sample("amd-epyc-zen3-avx2", "cpu MHz\t\t: 2445.422\n"), env={})["isa"]["int8_ceiling"]
    assert zen3 == {"path": "avx2_pairs", "macs_per_cycle": 32, "gmacs_per_core": pytest.approx(78.4)}
    assert probe(sample("intel-xeon-amx"), env={})["isa"]["int8_ceiling"]["gmacs_per_core"] is None  # no clock, no figure


def test_the_probe_stage_writes_the_same_bytes_in_two_processes_and_imports_no_runtime(tmp_path, subprocess_env):
    env = {k: v for k, v in subprocess_env.items() if k not in CAPS}
    runtimes = "{'torch', 'numpy', 'onnxruntime', 'openvino'}"
    code = f"import sys; from stages.probe import main; main(sys.argv[1:]); print(sorted({runtimes} & set(sys.modules)))"
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, "--out", str(tmp_path / f"{i}.json")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        for i in range(2)
    ]
    assert all(run.stdout.strip().endswith("[]") for run in runs), [run.stdout for run in runs]
    assert (tmp_path / "0.json").read_bytes() == (tmp_path / "1.json").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("cap", [None, "avx2", "default"])
def test_probe_agrees_with_what_torch_reports(cap, subprocess_env):
    env = dict(subprocess_env)
    env.pop("ATEN_CPU_CAPABILITY", None)
    if cap:
        env["ATEN_CPU_CAPABILITY"] = cap
    code = (
        "import json, torch; from edgequant.measure.machine import probe; "
        "print(json.dumps([probe()['isa']['torch_cpu_capability'], torch.backends.cpu.get_cpu_capability()]))"
    )
    ours, torchs = json.loads(
        subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    )
    assert ours == torchs


AMX_ISA_LINE = "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support"


@pytest.mark.parametrize(
    ("line", "path"),
    [
        (AMX_ISA_LINE, "amx"),
        ("Intel AVX-512 with Intel DL Boost and bfloat16 support", "avx512_vnni"),
        ("Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions", "avx512_pairs"),
        ("Intel AVX2 with Intel DL Boost", "avx_vnni"),
        ("Intel AVX2", "avx2_pairs"),
        ("Intel SSE4.1", "sse_pairs"),
    ],
)
def test_onednns_isa_line_names_the_int8_path(line, path):
    assert isa_line_path(line) == path


@pytest.mark.parametrize(
    ("name", "widest", "path"),
    [
        ("brg_conv_fwd:avx512_core_amx", "amx", "amx"),  # torch on the AMX Xeon
        ("brgconv_avx512_amx_I8", "amx", "amx"),  # OpenVINO there
        ("brgconv_avx512_I8", "amx", "avx512_vnni"),  # oneDNN's avx512 INT8 kernels use vpdpbusd where it may
        ("jit_avx512_I8", "avx512_pairs", "avx512_pairs"),
        ("jit_int8:avx512_core_vnni", "avx512_vnni", "avx512_vnni"),
        ("brg_conv_fwd:avx2_vnni", "avx_vnni", "avx_vnni"),
        ("jit_uni_int8_1x1:avx2", "avx2_pairs", "avx2_pairs"),
        ("jit_avx2_I8", "avx2_pairs", "avx2_pairs"),
        ("jit_sse42_I8", "sse_pairs", "sse_pairs"),
        ("ref_any_I8", "avx2_pairs", "no_dot"),
        ("gemm:jit", "avx2_pairs", "avx2_pairs"),  # names no ISA: oneDNN's widest
    ],
)
def test_kernel_names_give_their_int8_path(name, widest, path):
    assert kernel_name_path(name, widest) == path


def test_only_int8_compute_primitives_are_read_from_onednns_verbose_lines():
    lines = [
        "onednn_verbose,v1,info,cpu,isa:" + AMX_ISA_LINE,
        "onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:s8::blocked:abcd::f0 dst:s8::blocked:Acdb64a::f0,,,64x64x1x1,0.01",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_inference,src:u8::blocked:acdb::f0"
        " wei:s8:a:blocked:AcdB64a4b::f0 dst:u8::blocked:acdb::f0,attr-scales:dst:0:f32,alg:convolution_direct,mb1_ic64oc64,0.02",
        "onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32:a:blocked:aBcd8b::f0 wei:f32,,,mb8,32.9",
        "onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:s8::blocked:ab::f0 wei:s8,,,8x64:64x8,0.01",
    ]
    assert onednn_int8_primitives(lines) == ["convolution brg_conv_fwd:avx512_core_amx", "matmul brg_matmul:avx512_core_amx"]


def test_mlas_runs_amx_only_where_linux_grants_tile_data():
    amx = set(read_cpuinfo(sample("intel-xeon-amx"))["flags"].split())
    granted = mlas_kernel(amx, "exact", before=False, after=True)
    assert granted["path"] == "amx" and "granted AMX tile data while ONNX Runtime started" in granted["evidence"]
    assert mlas_kernel(amx, "exact", before=False, after=False)["path"] == "avx512_vnni"  # MlasInitAMX failed
    assert mlas_kernel(amx, "saturated", before=False, after=True)["path"] is None  # the fingerprint disagrees: no claim
    avx2 = set(read_cpuinfo(sample("amd-epyc-zen3-avx2"))["flags"].split())
    assert mlas_kernel(avx2, "saturated", before=False, after=False)["path"] == "avx2_pairs"


def evidence(env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", "import json; from edgequant.measure.evidence import collect; print(json.dumps(collect()))"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.slow
def test_the_runtimes_report_the_path_the_rules_give_and_name_avx2_on_an_avx2_cpu(monkeypatch):
    for cap in CAPS:
        monkeypatch.delenv(cap, raising=False)
    record = probe()
    reported = machine_info(record)["reported"]["int8_path"]
    rules = record["isa"]["int8_paths_by_rule"]
    assert reported["onnxruntime"]["path"] == rules["mlas"]
    assert reported["torch"]["kernels"]["quantized conv2d (onednn engine)"]["path"] is not None
    if rules["onednn"] == "avx2_pairs":  # an AVX2 CPU without VNNI, as the Zen 3 EPYC that runs these tests
        assert reported["torch"]["onednn_isa_line"] == "Intel AVX2"
        assert reported["torch"]["kernels"]["quantized conv2d (onednn engine)"]["primitives"] == ["convolution jit_uni_int8_1x1:avx2"]
        assert reported["openvino"]["kernels"]["Convolution"]["primitive"] == "jit_avx2_I8"
        for runtime in ("torch", "openvino", "onnxruntime"):
            assert reported[runtime]["path"] == "avx2_pairs", reported[runtime]
        assert "fingerprint: saturated" in reported["onnxruntime"]["kernels"]["MatMulInteger (MLAS U8S8 GEMM)"]["evidence"]


@pytest.mark.slow
def test_a_capped_onednn_runs_what_the_cap_allows_in_torch_and_openvino_and_mlas_ignores_it(subprocess_env):
    if "sse4_1" not in this_cpu_flags():
        pytest.skip("an x86 CPU with SSE4.1 is needed")
    env = {**{k: v for k, v in subprocess_env.items() if k not in CAPS}, "ONEDNN_MAX_CPU_ISA": "SSE41"}
    reported = evidence(env)
    assert reported["torch"]["onednn_isa_line"] == "Intel SSE4.1"
    conv = reported["torch"]["kernels"]["quantized conv2d (onednn engine)"]
    assert conv["path"] == "sse_pairs" and all(p.endswith(":sse41") for p in conv["primitives"]), conv
    # The kernel oneDNN picks under the cap differs by CPU (jit_sse42_I8 on the AVX2 EPYC, its GEMM-based jit_gemm_I8 on
    # the AVX-512 one); neither may name a wider ISA than the cap, and the path read from it is SSE's either way.
    ov_conv = reported["openvino"]["kernels"]["Convolution"]
    assert ov_conv["primitive"] in ("jit_sse42_I8", "jit_gemm_I8") and ov_conv["path"] == "sse_pairs", ov_conv
    assert ov_conv["evidence"] == f"execution graph: Convolution runs {ov_conv['primitive']}"
    assert reported["onnxruntime"]["path"] == mlas_path(this_cpu_flags())


@pytest.mark.slow
def test_roofline_is_the_best_engine_and_names_its_path_and_ceiling(monkeypatch):
    # measure_peak switches torch's quantized engine (in the benchmark, inside a process of its own); the tests after
    # this one on the same worker get the engine they had
    monkeypatch.setattr(torch.backends.quantized, "engine", torch.backends.quantized.engine)
    peak = measure_peak(1, 64, 0.02)
    for precision, engines in ENGINES.items():
        if lacking(precision, dict.fromkeys(this_cpu_flags(), True), probe()["isa"]["onednn"]):  # BF16 on the AVX2 EPYC
            assert f"{precision}_gmacs" not in peak
            continue
        measured = peak[f"{precision}_engines_gmacs"]
        assert set(measured) <= set(engines) and len(measured) >= 2 and min(measured.values()) > 0
        assert peak[f"{precision}_gmacs"] == max(measured.values()) and measured[peak[f"{precision}_engine"]] == peak[f"{precision}_gmacs"]
    assert set(peak["int8_engines_path"]) == set(peak["int8_engines_gmacs"]) == set(peak["int8_engines_evidence"])
    assert peak["int8_engine_path"] == peak["int8_engines_path"][peak["int8_engine"]]
    assert peak["int8_engines_path"]["onnxruntime MatMulInteger"] == mlas_path(this_cpu_flags())
    record = probe()
    assert peak["int8_ceiling_path"] == record["isa"]["int8_path"] and peak["clock_mhz"] == record["clock"]["mhz"]
    ceiling = record["isa"]["int8_ceiling"]["gmacs_per_core"]
    assert peak["int8_ceiling_gmacs"] == (pytest.approx(ceiling) if ceiling else None)


@pytest.mark.slow
def test_another_machine_re_runs_only_the_benchmark_and_what_reads_it(clone):
    work, env = clone
    start = time.perf_counter()
    out = sh(["dvc", "repro"], work, env)
    noop_s = time.perf_counter() - start
    print(f"no-op dvc repro with the probe: {noop_s:.2f} s")  # a figure for the README, not a timed assertion
    assert f"Running stage '{ALWAYS_RUN}'" in out and stages_run(out) == set() and is_up_to_date(work, env)
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # as if on an AVX2 CPU
    # Where the suite itself runs under that cap, the clone was measured as the capped machine: the uncapped one is another.
    suite_capped = all(env.get(key) == value for key, value in avx2.items())
    other = {k: v for k, v in env.items() if k not in CAPS} if suite_capped else dict(env, **avx2)
    out = sh(["dvc", "repro"], work, other)
    assert stages_run(out) == {"benchmark", "loadgen", "vendor", "gate", "fleet", "plot"}, out  # every stage that times this CPU
    if not suite_capped:
        machine = json.loads((work / "metrics/benchmark.json").read_text())["machine"]
        assert machine["isa"]["torch_cpu_capability"] == "AVX2" and machine["reported"]["torch_cpu_capability"] == "AVX2"
        assert machine["reported"]["int8_path"]["openvino"]["kernels"]["Convolution"]["path"] == "avx2_pairs"  # what the cap leaves
    assert stages_run(sh(["dvc", "repro"], work, other)) == set()  # the same machine again: nothing
