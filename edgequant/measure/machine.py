"""What the machine is, read without importing any runtime: the CPU, its clock, the INT8 path each kernel library
dispatches to by its own rules, versions.

The probe stage writes this record on every `dvc repro`; the benchmark depends on it, so results are
measured again on another CPU (or under a capped ISA) and not otherwise. It must stay fast (no torch
import: a no-op `dvc repro` pays for it) and byte-identical on the same machine (no timings, no load,
no clock that moves). What the runtimes themselves report is collected by the benchmark stage
(edgequant/measure/evidence.py). This file is also copied into the bench bundle: standard library only.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Mapping
from pathlib import Path

# The features INT8 and FP32 kernels dispatch on, x86 then Arm.
FLAGS = (
    "sse4_1",
    "avx",
    "fma",
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512dq",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "sve",
    "sve2",
    "bf16",
)
RUNTIMES = ("torch", "torchao", "executorch", "onnxruntime", "openvino", "ai-edge-litert")
# The ISA caps the kernel libraries honour: ATen's own kernels, oneDNN (torch and OpenVINO), FBGEMM (torch's
# x86 quantized linear). ONNX Runtime's MLAS and XNNPACK read CPUID only and have none.
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
AVX512_CORE = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
CPUFREQ_MAX = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
CPU_MHZ_STEP = 10  # "cpu MHz" rounded to this: the boot-time calibration varies by a few kHz from boot to boot
MAX_NAME_CHARS = 64
MAX_CPU_WORDS_CHARS = 40

# Per-core INT8 multiply-accumulates per cycle of each path: MACs per instruction × instructions issued per
# cycle. A ceiling for the ISA, not a promise for every core that has it (notes below).
AMX_MACS_PER_CYCLE = 1024
# TDPBUSD: a 16×16 int32 tile += 16×64 u8 · 64×16 s8 = 16,384 MACs, issued once per 16 cycles: "2048 INT8
# operations per cycle" per core on 4th-gen Xeon (Intel 64 and IA-32 Architectures Optimization Reference Manual).
AVX512_VNNI_MACS_PER_CYCLE = 128
# VPDPBUSD zmm: 16 lanes × 4 u8·s8 = 64 MACs, 2 per cycle on cores with two 512-bit FMA ports (Xeon Scalable
# ports 0 and 5: uops.info reciprocal throughput 0.5; Zen 5 likewise). Zen 4 splits zmm in two: half this.
AVX_VNNI_MACS_PER_CYCLE = 64  # VPDPBUSD ymm (VEX): 32 MACs, 2 per cycle (uops.info, Alder Lake-P ports 0 and 1)
AVX512_PAIRS_MACS_PER_CYCLE = 64
# Without VNNI: VPMADDUBSW zmm (64 u8·s8 products, summed in int16 pairs) then VPMADDWD to int32, both on the two
# vector-multiply ports: one 64-MAC step per cycle. Intel's optimization manual: VNNI's VPDPBUSD replaces the
# VPMADDUBSW, VPMADDWD, VPADDD sequence.
AVX2_PAIRS_MACS_PER_CYCLE = 32  # the same sequence on ymm (uops.info: each 0.5 cycles on Skylake and Zen 3)
SSE_PAIRS_MACS_PER_CYCLE = 16  # the same on xmm (PMADDUBSW, SSSE3)
ARM_DOTPROD_MACS_PER_CYCLE = 32
# SDOT (vector, 128-bit): 4 lanes × 4 s8·s8 = 16 MACs, 2 per cycle (Arm Cortex-A76 and Neoverse N1 Software
# Optimization Guides: two ASIMD pipes). Neoverse V1/V2 have four: double.
ARM_I8MM_MACS_PER_CYCLE = 64
# SMMLA: a 2×8 by 8×2 s8 product into a 2×2 int32 tile = 32 MACs, 2 per cycle (Arm Neoverse N2 Software
# Optimization Guide).

# Each INT8 path: how the README and fleet name it, the instruction (`int8_dot`, a key older readers show), whether
# its int16 pair sums saturate, and its per-core ceiling. Widest first within each architecture.
INT8_PATHS: dict[str, dict] = {
    key: {"label": label, "int8_dot": dot, "macs_per_cycle": macs}
    for key, label, dot, macs in (
        ("amx", "AMX tiles", "amx_int8 tdpbusd tiles (no saturation)", AMX_MACS_PER_CYCLE),
        ("avx512_vnni", "AVX-512 VNNI", "avx512_vnni vpdpbusd (no saturation)", AVX512_VNNI_MACS_PER_CYCLE),
        ("avx_vnni", "AVX-VNNI", "avx_vnni vpdpbusd (no saturation)", AVX_VNNI_MACS_PER_CYCLE),
        ("avx512_pairs", "AVX-512 pairs", "avx512bw vpmaddubsw (int16 pairs saturate)", AVX512_PAIRS_MACS_PER_CYCLE),
        ("avx2_pairs", "AVX2 pairs", "avx2 vpmaddubsw (int16 pairs saturate)", AVX2_PAIRS_MACS_PER_CYCLE),
        ("sse_pairs", "SSE pairs", "ssse3 pmaddubsw (int16 pairs saturate)", SSE_PAIRS_MACS_PER_CYCLE),
        ("arm_i8mm", "Arm i8mm", "arm i8mm smmla (no saturation)", ARM_I8MM_MACS_PER_CYCLE),
        ("arm_dotprod", "Arm dot product", "arm dotprod sdot (no saturation)", ARM_DOTPROD_MACS_PER_CYCLE),
        ("no_dot", "no INT8 dot instruction", "scalar (no INT8 dot instruction)", None),
    )
}
PAIR_PATHS = {"avx512_pairs", "avx2_pairs", "sse_pairs"}  # the paths whose u8·s8 pair sums saturate in int16


def read_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (x86 and Arm name them differently)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or (key == "processor" and fields):
            if key == "processor" and fields:
                break
            continue
        fields.setdefault(key, value.strip())
    return fields


def capped(best: str, order: list[str], cap: str | None) -> str:
    """`best`, lowered to `cap` where the cap names a lower entry of `order`; a cap never raises it."""
    if best in order and cap in order and order.index(cap) < order.index(best):
        return cap
    return best


def torch_capability(flags: set[str], env: Mapping[str, str]) -> str:
    """The kernels ATen dispatches to (aten/src/ATen/native/DispatchStub.cpp): AVX512 needs avx512f/bw/vl/dq
    and fma, AVX2 needs avx2 and fma; ATEN_CPU_CAPABILITY can only lower it."""
    if "asimd" in flags:
        best = "SVE256" if "sve" in flags else "DEFAULT"
    elif AVX512_CORE | {"fma"} <= flags:
        best = "AVX512"
    elif {"avx2", "fma"} <= flags:
        best = "AVX2"
    else:
        best = "DEFAULT"
    return capped(best, ["DEFAULT", "AVX2", "AVX512"], (env.get("ATEN_CPU_CAPABILITY") or "").upper())


# oneDNN's x86 ISAs (ONEDNN_MAX_CPU_ISA names), the flags each needs, and the INT8 path its kernels take there.
ONEDNN_ISAS = (
    ("SSE41", {"sse4_1"}, "sse_pairs"),
    ("AVX", {"avx"}, "sse_pairs"),  # oneDNN's INT8 kernels need AVX2; below it they are SSE4.1's
    ("AVX2", {"avx2"}, "avx2_pairs"),
    ("AVX2_VNNI", {"avx2", "avx_vnni"}, "avx_vnni"),
    ("AVX512_CORE", AVX512_CORE, "avx512_pairs"),
    ("AVX512_CORE_VNNI", AVX512_CORE | {"avx512_vnni"}, "avx512_vnni"),
    ("AVX512_CORE_BF16", AVX512_CORE | {"avx512_vnni", "avx512_bf16"}, "avx512_vnni"),
    ("AVX512_CORE_AMX", AVX512_CORE | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}, "amx"),
)


def onednn_isa(flags: set[str], env: Mapping[str, str]) -> str | None:
    """The widest ISA oneDNN (torch's x86 INT8 convolutions, OpenVINO's CPU plugin) uses, capped by ONEDNN_MAX_CPU_ISA."""
    present = [name for name, needed, _ in ONEDNN_ISAS if needed <= flags]
    if not present:
        return None
    return capped(present[-1], [name for name, _, _ in ONEDNN_ISAS], (env.get("ONEDNN_MAX_CPU_ISA") or "").upper())


def onednn_path(isa: str | None) -> str | None:
    return next((path for name, _, path in ONEDNN_ISAS if name == isa), None)


def fbgemm_path(flags: set[str], env: Mapping[str, str]) -> str | None:
    """FBGEMM's INT8 kernels (fbgemmInstructionSet, src/Utils.cc): AVX-512 VNNI, AVX-512, AVX2, else none;
    FBGEMM_ENABLE_INSTRUCTIONS can only lower it (AVX512_E1 is its name for AVX-512 VNNI)."""
    if AVX512_CORE | {"avx512_vnni"} <= flags:
        best = "avx512_vnni"
    elif flags >= AVX512_CORE:
        best = "avx512_pairs"
    elif "avx2" in flags:
        best = "avx2_pairs"
    else:
        return None
    names = {"AVX2": "avx2_pairs", "AVX512": "avx512_pairs", "AVX512_256": "avx512_pairs", "AVX512_E1": "avx512_vnni"}
    names["AVX512_E1_256"] = "avx512_vnni"
    cap = names.get((env.get("FBGEMM_ENABLE_INSTRUCTIONS") or "").upper())
    return capped(best, ["avx2_pairs", "avx512_pairs", "avx512_vnni"], cap)


def mlas_path(flags: set[str]) -> str:
    """The U8S8 GEMM that ONNX Runtime's MLAS selects (onnxruntime/core/mlas/lib/platform.cpp, MLAS_PLATFORM):
    AVX2 pairs, replaced by AVX-VNNI, then by AVX-512 core pairs, then AVX-512 VNNI; the AMX dispatch where the CPU
    has AMX-TILE and AMX-INT8 and Linux grants tile data (MlasInitAMX); on Arm, sdot, then smmla (Linux)."""
    if "asimd" in flags:
        return "arm_i8mm" if "i8mm" in flags else "arm_dotprod" if "asimddp" in flags else "no_dot"
    if {"amx_tile", "amx_int8"} <= flags:
        return "amx"
    if flags >= AVX512_CORE:
        return "avx512_vnni" if "avx512_vnni" in flags else "avx512_pairs"
    if "avx_vnni" in flags:
        return "avx_vnni"
    return "avx2_pairs" if {"avx2", "fma"} <= flags else "sse_pairs"


def widest_path(flags: Mapping[str, bool] | set[str]) -> str:
    """The widest INT8 path this CPU offers any library."""
    has = set(flags) if isinstance(flags, set) else {f for f, on in flags.items() if on}
    order = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2", "i8mm", "asimddp", "ssse3")
    paths = ("amx", "avx512_vnni", "avx_vnni", "avx512_pairs", "avx2_pairs", "arm_i8mm", "arm_dotprod", "sse_pairs")
    return next((path for flag, path in zip(order, paths, strict=True) if flag in has), "no_dot")


def int8_dot(flags: set[str]) -> str:
    """The widest INT8 instruction of the CPU, and whether it saturates.

    Without VNNI, x86 INT8 kernels multiply u8 by s8 with vpmaddubsw, which adds pairs into a saturating
    int16: a full-range 8-bit weight can overflow it (ONNX Runtime's documented reason for reduce_range)."""
    return INT8_PATHS[widest_path(flags)]["int8_dot"]


def read_clock(fields: Mapping[str, str], flags: set[str], max_freq_khz: str | None) -> dict:
    """A clock that reads the same every time, and where it came from.

    In order: cpufreq's cpuinfo_max_freq (the highest clock the driver allows, a constant: the right
    multiplier for a ceiling); the model name's "@ 2.60GHz" (the nominal base clock); the "cpu MHz" line, but
    only where no frequency driver is loaded and the CPU lacks APERF/MPERF (flag aperfmperf): the kernel then
    prints its boot-time calibration (cpu_khz), else the average clock of the last few milliseconds, which
    moves with load and would re-run the benchmark. A base or calibrated clock may be below what the core
    boosts to, so a measured peak can pass a ceiling computed from it."""
    if max_freq_khz and max_freq_khz.strip().isdigit() and int(max_freq_khz) > 0:
        return {"mhz": round(int(max_freq_khz) / 1000), "source": "cpufreq cpuinfo_max_freq"}
    nominal = re.search(r"@\s*(\d+(?:\.\d+)?)\s*GHz", fields.get("model name", ""))
    if nominal:
        return {"mhz": round(float(nominal.group(1)) * 1000), "source": "model name"}
    mhz = fields.get("cpu MHz")
    if mhz and "aperfmperf" not in flags:
        return {"mhz": round(float(mhz) / CPU_MHZ_STEP) * CPU_MHZ_STEP, "source": f"cpu MHz (boot-time calibration, to {CPU_MHZ_STEP} MHz)"}
    return {"mhz": None, "source": None}


def int8_ceiling(path: str, clock_mhz: int | None) -> dict:
    """The ISA's per-core INT8 rate at the probe's clock: how far any engine could go on one core."""
    macs = INT8_PATHS[path]["macs_per_cycle"]
    gmacs = macs * clock_mhz / 1000 if macs and clock_mhz else None
    return {"path": path, "macs_per_cycle": macs, "gmacs_per_core": gmacs}


def versions() -> dict[str, str | None]:
    found = {}
    for name in RUNTIMES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def probe(cpuinfo: str | None = None, env: Mapping[str, str] | None = None, max_freq_khz: str | None = None) -> dict:
    """The machine record: byte-identical for the same CPU, caps and installed runtimes. With `cpuinfo` given
    (another machine's), cpufreq is read only from `max_freq_khz`, never from this machine."""
    env = os.environ if env is None else env
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
        max_freq_khz = CPUFREQ_MAX.read_text() if CPUFREQ_MAX.exists() else None
    fields = read_cpuinfo(cpuinfo)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    clock = read_clock(fields, flags, max_freq_khz)
    onednn = onednn_isa(flags, env)
    record = {
        "cpu": fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "family": fields.get("cpu family") or fields.get("CPU architecture"),
        "model": fields.get("model") or fields.get("CPU part"),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "clock": clock,
        "flags": {f: f in flags for f in FLAGS},
        "isa": {
            "torch_cpu_capability": torch_capability(flags, env),
            "onednn": onednn,
            "int8_dot": int8_dot(flags),
            "int8_path": widest_path(flags),
            # By each library's documented dispatch rule and its cap; the benchmark records what ran (isa_evidence).
            "int8_paths_by_rule": {"onednn": onednn_path(onednn), "fbgemm": fbgemm_path(flags, env), "mlas": mlas_path(flags)},
            "int8_ceiling": int8_ceiling(widest_path(flags), clock["mhz"]),
        },
        "caps": {name: env.get(name) for name in CAPS},
        "versions": versions(),
    }
    record["name"] = slug(record)
    return record


# Marks that name no hardware: trademarks, "CPU", "Processor", "N-Core", the clock after "@".
MARKETING = re.compile(r"\((?:r|tm|c)\)|[®™]|@.*$|\b(?:cpu|processor|\d+-core)\b", re.IGNORECASE)


def plain(text: str) -> str:
    """Lower-case letters and digits joined by single '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_words(cpu: str) -> str:
    """The CPU's brand and model, e.g. 'Intel(R) Xeon(R) CPU E5-2686 v4 @ 2.30GHz' -> intel-xeon-e5-2686-v4."""
    words = plain(MARKETING.sub(" ", cpu))
    if len(words) > MAX_CPU_WORDS_CHARS:
        words = words[: MAX_CPU_WORDS_CHARS + 1].rsplit("-", 1)[0]
    return words


def name_of(cpu: str, flags: Mapping[str, bool], arch: str) -> str:
    """CPU words and the widest INT8 feature, e.g. amd-epyc-avx512-vnni, intel-xeon-amx."""
    features = (
        ("amx_int8", "amx"),
        ("avx512_vnni", "avx512-vnni"),
        ("avx512f", "avx512"),
        ("avx_vnni", "avx-vnni"),
        ("avx2", "avx2"),
        ("i8mm", "i8mm"),
        ("asimddp", "dotprod"),
    )
    widest = next((name for flag, name in features if flags.get(flag)), arch)
    return plain(f"{cpu_words(cpu)}-{widest}")[:MAX_NAME_CHARS].strip("-") or "unknown-cpu"


def slug(record: dict) -> str:
    """A name for the machine's folder, experiment and fleet row; a capped ISA is named apart by what the caps
    leave (ATen's capability, oneDNN's ISA, FBGEMM's setting), e.g. amd-epyc-avx512-vnni-capped-avx2."""
    caps, isa = record.get("caps") or {}, record["isa"]
    effective = {"ATEN_CPU_CAPABILITY": isa.get("torch_cpu_capability"), "ONEDNN_MAX_CPU_ISA": isa.get("onednn")}
    left = [plain(str(effective.get(name) or value)) for name, value in caps.items() if value]
    suffix = "-capped-" + "-".join(dict.fromkeys(left)) if left else ""
    return name_of(str(record["cpu"]), record["flags"], record["arch"])[: MAX_NAME_CHARS - len(suffix)].strip("-") + suffix
