"""metrics/loadgen.json as Markdown, beside the benchmark's own figures for the same method, batch and threads."""

from __future__ import annotations

from edgequant.report.markdown import code, escape


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _verdict(run: dict) -> str:
    return run["result"] if run["result"] == "VALID" else f"**{run['result']}**: {escape('; '.join(run['invalid_reasons']))}"


def _count(value: int | None) -> str:
    """A count LoadGen's detail log gives; "–" where the log held none."""
    return "–" if value is None else f"{value:,}"


def loadgen_table(loadgen: dict, benchmark: dict) -> str:
    """One row per method: SingleStream's p50/p90 and early-stopping p90, Offline's samples/s, each beside the harness's
    p50 and img/s at the same thread count (metrics/benchmark.json), and LoadGen's verdicts."""
    key = f"threads_{loadgen['threads']}"
    head = ["method", "SingleStream", "p50 ms", "p90 ms", "p90 early-stopping ms", "queries", "harness p50 ms",
            "Offline", "samples/s", "harness img/s", "Offline / harness"]  # fmt: skip
    lines = [_row(head), "|" + "---|" * len(head)]
    for method, scenarios in loadgen["methods"].items():
        single, offline = scenarios["SingleStream"], scenarios["Offline"]
        harness = benchmark["methods"].get(method, {}).get(key, {})
        p50, ips = harness.get("latency_ms_p50"), harness.get("throughput_ips")
        stopping = single.get("latency_ms_p90_early_stopping")
        lines.append(
            _row([
                code(method), _verdict(single), f"{single['latency_ms_p50']:.3f}", f"{single['latency_ms_p90']:.3f}",
                "–" if stopping is None else f"{stopping:.3f}", _count(single.get("query_count")), "–" if p50 is None else f"{p50:.3f}",
                _verdict(offline), f"{offline['samples_per_s']:,.0f}", "–" if ips is None else f"{ips:,.0f}",
                "–" if ips is None else f"{offline['samples_per_s'] / ips:.2f}",
            ])
        )  # fmt: skip
    lines += [_row([code(m), escape(why), *[""] * (len(head) - 2)]) for m, why in loadgen["skipped"].items()]
    minimums = ", ".join(
        f"{s} {m['min_duration_ms'] / 1e3:g} s and {m['min_query_count']:,} queries" for s, m in loadgen["minimums"].items()
    )
    batches = {s: r["batch"] for scenarios in loadgen["methods"].values() for s, r in scenarios.items()}
    kind = "MLPerf's own minimums" if loadgen["official"] else "short settings (`loadgen.official: false`), not a run that counts"
    lines += [
        "",
        f"MLPerf LoadGen {escape(str(loadgen['loadgen_version']))}, {loadgen['threads']} thread(s), {kind}: {minimums}."
        f" SingleStream at batch {batches.get('SingleStream', '–')}; Offline as one query of every sample,"
        f" {batches.get('Offline', '–')} a call.",
    ]
    return "\n".join(lines)
