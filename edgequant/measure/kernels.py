"""What kernel names and results say about the INT8 path: oneDNN's verbose lines, OpenVINO's primitive types, and the
saturation fingerprint. Text in, path out (the paths of edgequant/measure/machine.py); edgequant/measure/evidence.py runs the
kernels.

The fingerprint: u8 255 times s8 127, summed over K. VPMADDUBSW adds each pair of products into a saturating
int16 (2 * 255 * 127 = 64,770 > 32,767), so a pair kernel returns K/2 * 32,767; VNNI, AMX, sdot and smmla
accumulate in int32 and return the exact K * 32,385.
"""

from __future__ import annotations

import re

from edgequant.measure.machine import PAIR_PATHS

K = 64  # the fingerprint's reduction length: even, so pairs never straddle a block edge
EXACT = K * 255 * 127  # 2,072,640
SATURATED = K // 2 * 32767  # 1,048,544
QUANT_STEPS = 200  # a quantized output's scale puts EXACT at this step; the saturated sum lands near 101
MATCH_TOLERANCE = 0.01  # relative: one output step of QUANT_STEPS is 0.5 %


def fingerprint(value: float, exact: float = EXACT, saturated: float = SATURATED) -> str:
    """'exact' (int32 accumulation), 'saturated' (int16 pair sums clipped), or the value itself."""
    if abs(value - exact) <= MATCH_TOLERANCE * abs(exact):
        return "exact"
    if abs(value - saturated) <= MATCH_TOLERANCE * abs(saturated):
        return "saturated"
    return f"{value:g} (exact {exact:g})"


def checked(path: str | None, seen: str, how: str) -> dict:
    """A kernel's path where the fingerprint agrees with it; None, saying why, where it does not."""
    agrees = seen == ("saturated" if path in PAIR_PATHS else "exact")
    evidence = f"{how}; fingerprint: {seen}"
    if path is None or not agrees:
        return {"path": None, "evidence": evidence + (f" - disagrees with {path}" if path else "")}
    return {"path": path, "evidence": evidence}


def onednn_isa_line(lines: list[str]) -> str | None:
    """oneDNN's ISA line, e.g. 'Intel AVX2' (printed once per process, with its first verbose output)."""
    return next((line.split("isa:", 1)[1] for line in lines if ",isa:" in line), None)


def onednn_int8_primitives(lines: list[str]) -> list[str]:
    """The implementations of the INT8 compute primitives that ran, e.g. 'convolution brg_conv_fwd:avx512_core_amx'."""
    found = []
    for line in lines:
        parts = line.split(",")
        if "exec" not in parts:
            continue
        i = parts.index("exec")
        kind, impl, descriptors = parts[i + 2], parts[i + 3], parts[i + 5] if len(parts) > i + 5 else ""
        if kind in ("convolution", "matmul", "inner_product") and re.search(r"src:[us]8", descriptors):
            found.append(f"{kind} {impl}")
    return list(dict.fromkeys(found))


def isa_line_path(text: str) -> str | None:
    """The INT8 path oneDNN's ISA line allows: e.g. '... Intel AMX with bfloat16 and 8-bit integer support' is AMX."""
    t = text.lower()
    if "amx" in t and "8-bit" in t:
        return "amx"
    wide = "avx-512" in t or "avx512" in t or "avx10" in t
    if "dl boost" in t or "vnni" in t:
        return "avx512_vnni" if wide else "avx_vnni"
    if wide:
        return "avx512_pairs"
    return "avx2_pairs" if "avx2" in t else "sse_pairs" if "sse4" in t or "avx" in t else None


def kernel_name_path(name: str, widest: str | None) -> str | None:
    """The INT8 path of a oneDNN or OpenVINO implementation name. Names give the vector width, not always VNNI:
    oneDNN's avx512_core and avx2 INT8 kernels use vpdpbusd wherever the ISA it runs at (`widest`) has it."""
    n = name.lower()
    if "amx" in n:
        return "amx"
    if re.search(r"avx512_core_(vnni|bf16|fp16)|avx10", n):
        return "avx512_vnni"
    if "avx2_vnni" in n:
        return "avx_vnni"
    if "avx512" in n:
        return "avx512_vnni" if widest in ("avx512_vnni", "amx") else "avx512_pairs"
    if "avx2" in n:
        return "avx_vnni" if widest in ("avx_vnni", "avx512_vnni", "amx") else "avx2_pairs"
    if "sse4" in n:
        return "sse_pairs"
    if re.search(r"\bref\b|^ref|:ref", n):
        return "no_dot"
    return widest  # e.g. gemm:jit names no ISA: it runs at oneDNN's widest
