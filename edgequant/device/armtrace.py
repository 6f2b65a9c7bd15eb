"""Which Arm kernels ran: the INT8 and FP instructions qemu translated while an artifact ran.

qemu's `-d in_asm` log lists each block of guest code once, when it is first translated, i.e. when it
first runs: an instruction in that log was executed. The instructions below only appear in GEMM and
convolution kernels, so the set seen says which of a runtime's kernel paths served the artifact.
"""

from __future__ import annotations

import re
from pathlib import Path

# address: encoding  mnemonic  first-operand
LINE = re.compile(r"^0x([0-9a-f]+):\s+[0-9a-f]{8}\s+([a-z0-9]+)\s*([a-z]*)")
# The INT8 multiply-accumulate instructions, by the CPU feature (kernel path) they need; widest first.
INT8_PATHS = {
    "sme": ("smopa", "umopa", "sumopa", "usmopa"),  # SME outer products into the ZA tile
    "i8mm": ("smmla", "ummla", "usmmla", "usdot", "sudot"),  # 8-bit matrix multiply (FEAT_I8MM)
    "dotprod": ("sdot", "udot"),  # 4-way 8-bit dot products (FEAT_DotProd)
    "neon": ("smlal", "smlal2", "smull", "smull2", "umlal", "umlal2", "umull", "umull2", "sadalp", "uadalp"),  # widening, no dot product
}
FP_INSTRUCTIONS = ("fmopa", "bfmopa", "bfmmla", "fmmla", "fmla")
WATCHED = {m for ms in INT8_PATHS.values() for m in ms} | set(FP_INSTRUCTIONS)


def register_file(operand: str) -> str:
    """Where the first operand lives: the SME tile, SVE's scalable registers or NEON's 128-bit ones."""
    if operand.startswith("za"):
        return "sme"
    return "sve" if operand.startswith("z") else "neon"


def read_in_asm(log: Path) -> dict[str, int]:
    """Distinct watched instructions executed, keyed `mnemonic (register file)`, e.g. {'smmla (neon)': 16}."""
    seen: dict[str, set[str]] = {}
    with open(log, errors="replace") as lines:
        for line in lines:
            match = LINE.match(line)
            if match and match[2] in WATCHED:
                seen.setdefault(f"{match[2]} ({register_file(match[3])})", set()).add(match[1])
    return {key: len(addresses) for key, addresses in sorted(seen.items())}


def int8_path(kernels: dict[str, int]) -> str:
    """The widest INT8 path the instructions show, with the instructions that show it."""
    for path, mnemonics in INT8_PATHS.items():
        hits = sorted(key for key in kernels if key.split()[0] in mnemonics)
        if hits:
            return f"{path}: {', '.join(hits)}"
    return "none seen"
