"""What the machine is, read without importing any runtime: the CPU, the ISA each runtime's kernels dispatch on, versions.

The probe stage writes this record on every `dvc repro`; the benchmark depends on it, so results are
measured again on another CPU (or under a capped ISA) and not otherwise. It must stay fast (no torch
import: a no-op `dvc repro` pays for it) and byte-identical on the same machine (no timings, no load).
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
CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")  # the ISA caps torch and oneDNN honour


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


def torch_capability(flags: set[str], env: Mapping[str, str]) -> str:
    """The kernels ATen dispatches to (aten/src/ATen/native/DispatchStub.cpp): AVX512 needs avx512f/bw/vl/dq
    and fma, AVX2 needs avx2 and fma; ATEN_CPU_CAPABILITY can only lower it."""
    if "asimd" in flags:
        best = "SVE256" if "sve" in flags else "DEFAULT"
    elif {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= flags:
        best = "AVX512"
    elif {"avx2", "fma"} <= flags:
        best = "AVX2"
    else:
        best = "DEFAULT"
    order = ["DEFAULT", "AVX2", "AVX512"]
    cap = env.get("ATEN_CPU_CAPABILITY", "").upper()
    if best in order and cap in order and order.index(cap) < order.index(best):
        return cap
    return best


def onednn_isa(flags: set[str], env: Mapping[str, str]) -> str | None:
    """The widest ISA oneDNN (torch's x86 INT8 and FP32 convolutions) uses, capped by ONEDNN_MAX_CPU_ISA."""
    order = [
        ("AVX2", {"avx2"}),
        ("AVX2_VNNI", {"avx2", "avx_vnni"}),
        ("AVX512_CORE", {"avx512f", "avx512bw", "avx512vl", "avx512dq"}),
        ("AVX512_CORE_VNNI", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}),
        ("AVX512_CORE_BF16", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"}),
        ("AVX512_CORE_AMX", {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"}),
    ]
    names = [name for name, _ in order]
    present = [name for name, needed in order if needed <= flags]
    if not present:
        return None
    best = present[-1]
    cap = env.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap in names and names.index(cap) < names.index(best):
        return cap
    return best


def int8_dot(flags: set[str]) -> str:
    """The instruction INT8 dot products (ONNX Runtime's MLAS, XNNPACK, oneDNN) run on, and whether it saturates.

    Without VNNI, x86 INT8 kernels multiply u8 by s8 with vpmaddubsw, which adds pairs into a saturating
    int16: a full-range 8-bit weight can overflow it (ONNX Runtime's documented reason for reduce_range)."""
    if "avx512_vnni" in flags:
        return "avx512_vnni vpdpbusd (no saturation)"
    if "avx_vnni" in flags:
        return "avx_vnni vpdpbusd (no saturation)"
    if "avx2" in flags:
        return "avx2 vpmaddubsw (int16 pairs saturate)"
    if "i8mm" in flags:
        return "arm i8mm smmla (no saturation)"
    if "asimddp" in flags:
        return "arm dotprod sdot (no saturation)"
    return "scalar or sse"


def versions() -> dict[str, str | None]:
    found = {}
    for name in RUNTIMES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def probe(cpuinfo: str | None = None, env: Mapping[str, str] | None = None) -> dict:
    """The machine record: byte-identical for the same CPU, caps and installed runtimes."""
    env = os.environ if env is None else env
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    fields = read_cpuinfo(cpuinfo)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    record = {
        "cpu": fields.get("model name") or fields.get("Hardware") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id") or fields.get("CPU implementer"),
        "family": fields.get("cpu family") or fields.get("CPU architecture"),
        "model": fields.get("model") or fields.get("CPU part"),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in FLAGS},
        "isa": {
            "torch_cpu_capability": torch_capability(flags, env),
            "onednn": onednn_isa(flags, env),
            "int8_dot": int8_dot(flags),
        },
        "caps": {name: env.get(name) for name in CAPS},
        "versions": versions(),
    }
    record["name"] = slug(record)
    return record


# The widest INT8 feature of a CPU, named for the machine's slug: first match wins.
INT8_FEATURES = (
    ("amx_int8", "amx"),
    ("avx512_vnni", "avx512-vnni"),
    ("avx512f", "avx512"),
    ("avx_vnni", "avx-vnni"),
    ("avx2", "avx2"),
    ("i8mm", "i8mm"),
    ("asimddp", "dotprod"),
)


def widest_int8(flags: Mapping[str, bool], arch: str) -> str:
    return next((name for flag, name in INT8_FEATURES if flags.get(flag)), arch)


def name_of(cpu: str, flags: Mapping[str, bool], arch: str) -> str:
    """CPU words and the widest INT8 feature, e.g. amd-epyc-avx512-vnni."""
    words = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")
    return f"{words}-{widest_int8(flags, arch)}"


def slug(record: dict) -> str:
    """A name for the machine's folder, experiment and fleet row; a capped ISA is named apart."""
    capped = "-capped-" + str(record["isa"]["torch_cpu_capability"]).lower() if any(record["caps"].values()) else ""
    return name_of(str(record["cpu"]), record["flags"], record["arch"]) + capped
