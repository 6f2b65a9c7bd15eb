"""metrics/vendor.json as Markdown (plots/vendor.md): the harness beside each runtime's tool, cold start per method, and
the harness's dispatch overhead over each runtime's own clock."""

from __future__ import annotations

from edgequant.report.markdown import code, escape


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def ratio_table(vendor: dict) -> str:
    head = ["method", "batch", "threads", "harness img/s", "tool img/s", "harness / tool [95 % CI]", "within 5 %", "why"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for method, cells in vendor["ratios"].items():
        for r in sorted(cells.values(), key=lambda r: (-r["batch"], r["threads"])):
            ratio = f"{r['ratio']:.3f} [{r['ratio_ci95_low']:.3f}, {r['ratio_ci95_high']:.3f}]"
            why = escape(r["why"]) if r["why"] else ""
            lines.append(_row([code(method), str(r["batch"]), str(r["threads"]), f"{r['harness_ips']:,.0f}", f"{r['tool_ips']:,.0f}",
                               ratio, "yes" if r["agrees_within_5pct"] else "no", why]))  # fmt: skip
    for method, cells in vendor.get("unresolved", {}).items():
        for key, reason in cells.items():
            batch, threads = key.removeprefix("batch_").split("_threads_")
            lines.append(_row([code(method), batch, threads, "", "", "", "not compared", escape(reason)]))
    for method, reason in vendor["skipped"].items():
        lines.append(_row([code(method), "", "", "", "", "", "skipped", escape(reason)]))
    s = vendor["settings"]
    lines += [
        "",
        f"{s['pairs']} alternating pairs per row, each run a fresh process. Harness: {escape(s['harness_statistic'])}.",
    ]
    lines += [
        f"Tool {code(rt)}: {escape(stat)} ({escape(vendor['tools'][rt] or 'not installed')})." for rt, stat in s["tool_statistic"].items()
    ]
    return "\n".join(lines)


def _span(record: dict, key: str, digits: int = 0) -> str:
    if f"{key}_median" not in record:
        return ""
    return f"{record[f'{key}_median']:,.{digits}f} [{record[f'{key}_min']:,.{digits}f}, {record[f'{key}_max']:,.{digits}f}]"


def cold_start_table(vendor: dict) -> str:
    cold = vendor["cold_start"]
    head = ["method", "import ms", "load ms", "first inference ms", "second inference ms", "cold start ms", "peak RSS over python MiB"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for method, r in cold["methods"].items():
        cells = [_span(r, k) for k in ("import_ms", "load_ms", "first_inference_ms")]
        cells += [_span(r, "second_inference_ms", 2), _span(r, "cold_start_ms"), _span(r, "peak_rss_mib_over_python")]
        lines.append(_row([code(method), *cells]))
    base = cold["python_baseline"]
    lines += ["", f"Medians [min, max] of {base['repeats']} fresh processes each, batch {cold['batch']}, {cold['threads']} thread(s)."]
    lines += [f"The numpy-only baseline process: {_span(base, 'process_wall_ms')} ms, peak RSS {_span(base, 'peak_rss_mib')} MiB."]
    lines += [f"Skipped: {code(m)}: {escape(why)}." for m, why in cold.get("skipped", {}).items()]
    lines += ["How each loads: " + "; ".join(f"{code(m)}: {escape(r['loads_with'])}" for m, r in cold["methods"].items()) + "."]
    return "\n".join(lines)


def _ci(record: dict, key: str) -> str:
    low, high = record.get(f"{key}_ci95_low"), record.get(f"{key}_ci95_high")
    text = f"{record[key]:.3f}"
    return text if low is None else f"{text} [{low:.3f}, {high:.3f}]"


def dispatch_table(vendor: dict) -> str:
    dispatch = vendor.get("dispatch")
    if not dispatch:
        return "No dispatch record: metrics/vendor.json was written before the stage read the runtimes' own clocks."
    head = ["method", "harness ms p50", "runtime's own ms p50", "overhead ms p50 [95 % CI]", "overhead % of harness", "runtime's clock"]
    lines = [_row(head), "|" + "---|" * len(head)]
    for method, r in dispatch["methods"].items():
        cells = [_ci(r, "harness_ms_p50"), _ci(r, "internal_ms_p50"), _ci(r, "overhead_ms_p50"), f"{r['overhead_pct_of_harness']:.1f}"]
        lines.append(_row([code(method), *cells, escape(r["clock"])]))
    calls = {r["calls"] for r in dispatch["methods"].values()}
    lines += [
        "",
        f"Batch {dispatch['batch']}, {dispatch['threads']} thread(s): each of {'/'.join(map(str, sorted(calls))) or 'no'} calls timed"
        f" by perf_counter around the harness's runner and by the runtime itself, after {dispatch['warmup_calls']} left out; the"
        " overhead is the median of the per-call differences (Python binding, input and output conversion).",
    ]
    if dispatch["without_clock"]:
        lines.append("No own per-call clock read: " + ", ".join(code(m) for m in dispatch["without_clock"]) + ".")
    lines += [f"Skipped: {code(m)}: {escape(why)}." for m, why in dispatch.get("skipped", {}).items()]
    return "\n".join(lines)


def vendor_tables(vendor: dict) -> str:
    """The three tables, for a generated block of docs/machines.md."""
    return "\n\n".join([ratio_table(vendor), cold_start_table(vendor), dispatch_table(vendor)])


def vendor_markdown(vendor: dict) -> str:
    return "\n".join(
        [
            "## Beside the runtimes' own tools",
            "",
            ratio_table(vendor),
            "",
            "## Cold start and memory",
            "",
            cold_start_table(vendor),
            "",
            "## Dispatch overhead over the runtime's own clock",
            "",
            dispatch_table(vendor),
            "",
        ]
    )
