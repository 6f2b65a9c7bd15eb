"""The README's results table, generated from metrics/benchmark.json (never typed by hand).

python -m edgequant.readme             # print it
python -m edgequant.readme README.md   # rewrite the block between the README's results markers
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgequant.io import write_text


def markdown_table(metrics: dict) -> str:
    """The README's results table, straight from metrics/benchmark.json (never typed by hand)."""
    threads = sorted(int(k.removeprefix("threads_")) for k in metrics["peak"])
    head = ["method", "runtime", "size KB", "size vs own FP32", "top-1 %", "agree %"]
    for t in threads:
        head += [f"p50 ms b1 ({t}t)", f"img/s b256 ({t}t)", f"× FP32 eager ({t}t)", f"× own FP32 ({t}t)"]
    head.append(f"% of peak ({threads[0]}t)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics["methods"].items():
        cells = [f"`{name}`", m["runtime"], f"{m['size_bytes'] / 1024:.1f}", f"{m['size_ratio_vs_runtime_fp32'] * 100:.1f} %"]
        cells += [f"{m['accuracy_pct']:.2f}", f"{m['agreement_with_fp32_pct']:.2f}"]
        for t in threads:
            r = m[f"threads_{t}"]
            own = r["throughput_speedup_vs_runtime_fp32"]
            cells += [
                f"{r['latency_ms_p50']:.3f}",
                f"{r['throughput_ips']:.0f}",
                f"{r['throughput_speedup_vs_fp32_eager']:.1f}×",
                f"{own:.1f}×",
            ]
        cells.append(f"{m[f'threads_{threads[0]}']['peak_fraction'] * 100:.0f} % ({m['precision']})")
        lines.append("| " + " | ".join(cells) + " |")
    peak, machine = metrics["peak"], metrics["machine"]
    peaks = "; ".join(
        f"{t} thread(s): FP32 {peak[f'threads_{t}']['fp32_gmacs']:.0f}, INT8 {peak[f'threads_{t}']['int8_gmacs']:.0f} GMAC/s"
        for t in threads
    )
    flags = f"avx512_vnni={machine['flag_avx512_vnni']}, amx_int8={machine['flag_amx_int8']}"
    lines += ["", f"Measured peaks: {peaks}. Machine: {machine['cpu']}, {flags}, torch {machine['torch']}."]
    return "\n".join(lines)


BEGIN, END = "<!-- results:begin (python -m edgequant.readme README.md) -->", "<!-- results:end -->"


def replace_block(text: str, table: str) -> str:
    """`text` with the part between the results markers replaced by `table`."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no results markers in the README; add the two lines {BEGIN!r} and {END!r}")
    head, rest = text.split(BEGIN, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{rest.split(END, 1)[1]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the results table, or write it into a README between its markers.")
    parser.add_argument("readme", nargs="?", help="rewrite this file's results block in place")
    parser.add_argument("--metrics", default="metrics/benchmark.json")
    args = parser.parse_args(argv)
    table = markdown_table(json.loads(Path(args.metrics).read_text()))
    if args.readme:
        write_text(args.readme, replace_block(Path(args.readme).read_text(), table))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
