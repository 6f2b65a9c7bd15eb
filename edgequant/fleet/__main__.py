"""The fleet on a task queue (docs/fleet-queue.md):

    python -m edgequant.fleet worker                       # `make worker`: this machine's queue, one job at a time
    python -m edgequant.fleet submit <rev> [--machines a,b] [--workloads w1,w2]
    python -m edgequant.fleet status [--revision <rev>] [--json]
    python -m edgequant.fleet collect <rev> [--machines a,b]

(`python -m edgequant.fleet.table` imports and saves machines' folders by hand.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgequant.fleet import client, settings
from edgequant.fleet.engine import JobError
from edgequant.fleet.records import RecordError


def names(text: str | None) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()] if text else []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edgequant.fleet", description="Benchmark a revision on every machine of the fleet.")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="consume this machine's queue (the probe names it), one job at a time")
    w.add_argument("--loglevel", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    s = sub.add_parser("submit", help="one job per machine: measure <rev> there, save and push its experiment")
    s.add_argument("rev", help="a branch, tag or commit pushed to the git remote")
    s.add_argument("--machines", help="comma-separated machine names (default: every machine with a live worker)")
    s.add_argument("--workloads", help="comma-separated folders under workloads/ to measure beside the reference")
    t = sub.add_parser("status", help="per machine: live workers, and each job queued, running (stage), done or failed")
    t.add_argument("--revision", help="only the jobs of this revision")
    t.add_argument("--json", action="store_true", help="machine-readable")
    c = sub.add_parser("collect", help="every machine's experiment of <rev> into machines/, then the fleet stage")
    c.add_argument("rev")
    c.add_argument("--machines", help="comma-separated machine names (default: every machine that pushed one)")
    c.add_argument("--remote", default="origin", help="the git remote the workers push to (origin)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    cwd = Path.cwd()
    try:
        if args.command == "worker":
            from edgequant.fleet import worker

            return worker.start(args.loglevel)
        if args.command == "collect":
            done = client.collect(args.rev, args.remote, names(args.machines), cwd)
            print(f"collected {len(done)} machine(s) into machines/: {', '.join(done)}; fleet table: plots/fleet.md")
            return 0
        fleet = settings.load(cwd)
        settings.check_broker(fleet)
        if args.command == "submit":
            print("\n".join(client.submit(fleet, args.rev, names(args.machines), names(args.workloads), cwd)))
        else:
            report = client.status(fleet, args.revision, cwd)
            print(json.dumps(report, indent=2, default=str) if args.json else client.show(report))
    except (settings.SettingsError, client.ClientError, JobError, RecordError, OSError) as exc:
        print(f"fleet: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
