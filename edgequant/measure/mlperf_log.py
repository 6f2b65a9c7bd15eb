"""Read LoadGen's own logs (mlperf_log_summary.txt, mlperf_log_detail.txt) into the figures the loadgen stage records.

The summary is what an MLPerf reviewer reads, so the verdict, the percentiles, the throughput and the settings LoadGen
applied are taken from it; the detail log (one `:::MLLOG {json}` per line) adds what the summary only prints inside
prose: the query count and the errors behind an INVALID verdict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

SUMMARY = "mlperf_log_summary.txt"
DETAIL = "mlperf_log_detail.txt"
DETAIL_PREFIX = ":::MLLOG "
NS_PER_MS = 1e6
# "  Min duration satisfied : NO": each check LoadGen made, and whether it passed
CHECK = re.compile(r"^\s+(Min duration|Min queries|Early stopping) satisfied\s*:\s*(\S+)", re.MULTILINE)
FIELD = re.compile(r"^([^:\n*]+?)\s*:\s*(\S.*?)\s*$", re.MULTILINE)  # "name : value" at the start of a line
EARLY_STOPPING = re.compile(r"Early stopping ([\d.]+)th percentile estimate: (\d+)")
RECOMMENDATIONS = re.compile(r"^Recommendations:\n((?: \* .*\n?)+)", re.MULTILINE)


class LogError(ValueError):
    """A LoadGen log that lacks what every run writes: LoadGen was interrupted, or another tool wrote the file."""


def read_fields(text: str) -> dict[str, str]:
    """Every `name : value` line of a summary, first occurrence kept (the results come before the parameters)."""
    fields: dict[str, str] = {}
    for name, value in FIELD.findall(text):
        fields.setdefault(name.strip(), value)
    return fields


def parse_summary(text: str, where: str = SUMMARY) -> dict:
    """The verdict, the reasons for an INVALID one, the scenario's figure and the settings LoadGen applied."""
    fields = read_fields(text)
    for needed in ("Scenario", "Result is", "min_duration (ms)", "min_query_count"):
        if needed not in fields:
            raise LogError(f"{where}: no '{needed} :' line; not a complete LoadGen summary (was the run interrupted?)")
    result = fields["Result is"]
    if result not in ("VALID", "INVALID"):
        raise LogError(f"{where}: 'Result is : {result}' is neither VALID nor INVALID")
    failed = [f"{check} not satisfied" for check, answer in CHECK.findall(text) if answer.lower() != "yes"]
    advice = RECOMMENDATIONS.search(text)
    reasons = failed + ([line.strip().removeprefix("* ") for line in advice.group(1).splitlines()] if advice else [])
    parsed: dict = {
        "scenario": fields["Scenario"],
        "result": result,
        "invalid_reasons": reasons if result == "INVALID" else [],
        "min_duration_ms": int(fields["min_duration (ms)"]),
        "min_query_count": int(fields["min_query_count"]),
        "samples_per_query": int(fields["samples_per_query"]) if "samples_per_query" in fields else None,
        "target_qps": float(fields["target_qps"]) if "target_qps" in fields else None,
    }
    if parsed["scenario"] == "SingleStream":
        p90 = fields.get("90.0th percentile latency (ns)")
        if p90 is None:
            raise LogError(f"{where}: a SingleStream summary without its '90.0th percentile latency (ns)' line")
        estimate = next((int(ns) for pct, ns in EARLY_STOPPING.findall(text) if float(pct) == 90.0), None)
        parsed["latency_ms_p90"] = int(p90) / NS_PER_MS
        # None where too few queries ran for LoadGen to estimate it (it needs 64 for the 90th percentile)
        parsed["latency_ms_p90_early_stopping"] = estimate / NS_PER_MS if estimate is not None else None
        parsed["latency_ms_p50"] = int(fields["50.00 percentile latency (ns)"]) / NS_PER_MS
        parsed["latency_ms_mean"] = int(fields["Mean latency (ns)"]) / NS_PER_MS
    elif parsed["scenario"] == "Offline":
        if "Samples per second" not in fields:
            raise LogError(f"{where}: an Offline summary without its 'Samples per second' line")
        parsed["samples_per_s"] = float(fields["Samples per second"])
    return parsed


def parse_detail(text: str) -> dict:
    """The query count and LoadGen's error messages, from the detail log's `:::MLLOG {json}` lines."""
    count, errors = None, []
    for line in text.splitlines():
        if not line.startswith(DETAIL_PREFIX):
            continue
        try:
            entry = json.loads(line[len(DETAIL_PREFIX) :])
        except ValueError:  # a line cut by an interrupted write; the summary has the verdict
            continue
        if entry.get("key") == "result_query_count":
            count = int(entry["value"])
        elif (entry.get("metadata") or {}).get("is_error"):
            errors.append(str(entry.get("value")))
    return {"query_count": count, "errors": errors}


def read_logs(outdir: Path) -> dict:
    """One scenario's figures from the logs LoadGen wrote in `outdir`."""
    summary, detail = Path(outdir) / SUMMARY, Path(outdir) / DETAIL
    if not summary.is_file():
        raise LogError(f"{summary}: LoadGen wrote no summary (was the run interrupted?)")
    parsed = parse_summary(summary.read_text(), str(summary))
    extra = parse_detail(detail.read_text()) if detail.is_file() else {"query_count": None, "errors": []}
    parsed["query_count"] = extra["query_count"]
    if parsed["result"] == "INVALID":
        parsed["invalid_reasons"] += [e for e in extra["errors"] if e not in parsed["invalid_reasons"]]
    return parsed
