"""Submit a revision to the fleet, watch its jobs, and collect every machine's results into machines/.

submit: one job per machine, each in its machine's queue; a machine and revision already submitted (queued,
running, retrying or done) is not submitted again; a failed one is. status: per machine, its live workers and
each job's state (queued, running with its stage, retrying, done, failed). collect: every machine's
experiment of a revision from the git remote, its machines/<name>/ checked and copied, the fleet stage re-run.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

from edgequant.fleet import engine, records
from edgequant.fleet.engine import Job
from edgequant.fleet.settings import FleetSettings, client

INSPECT_TIMEOUT_S = 1.5  # how long `status` and `submit` wait for workers to answer
MAX_REV_CHARS = 200
STATES = {"PENDING": "queued", "PROGRESS": "running", "RETRY": "retrying", "SUCCESS": "done", "FAILURE": "failed", "REVOKED": "revoked"}


class ClientError(ValueError):
    """One line: what the fleet cannot do as asked, and the fix."""


def git(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def resolve(rev: str, cwd: Path) -> str:
    """A revision as a full commit id (a branch moves; a job names what it measures)."""
    if not rev or rev.startswith("-") or len(rev) > MAX_REV_CHARS or not rev.isprintable():
        raise ClientError(f"revision {ascii(rev)[:60]}: name a branch, tag or commit id")
    out = git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd)
    if out.returncode != 0:
        raise ClientError(f"revision {rev!r}: not a commit in {cwd}; fetch it, or name a branch, tag or commit id")
    return out.stdout.strip()


def live_workers(app) -> dict[str, list[str]]:
    """Each answering worker's node name and the queues it consumes."""
    replies = app.control.inspect(timeout=INSPECT_TIMEOUT_S).active_queues() or {}
    return {node: sorted(q["name"] for q in queues) for node, queues in replies.items()}


def submit(settings: FleetSettings, rev: str, machines: list[str], workloads: list[str], cwd: Path) -> list[str]:
    """One job per machine (default: every machine with a live worker); one line per machine saying what happened."""
    import redis

    from edgequant.fleet.worker import register

    sha = resolve(rev, cwd)
    if not git(["for-each-ref", "--contains", sha, "--format=%(refname)", f"refs/remotes/{settings.git_remote}/"], cwd).stdout.strip():
        raise ClientError(
            f"commit {sha[:10]} is on no branch of {settings.git_remote} (as last fetched); push it first: workers fetch it there"
        )
    for w in workloads:
        if git(["cat-file", "-e", f"{sha}:workloads/{w}/dvc.yaml"], cwd).returncode != 0:
            raise ClientError(f"workload {w!r}: revision {sha[:10]} has no workloads/{w}/dvc.yaml")
    app = engine.make_app(settings)
    run_job = register(app)
    live = live_workers(app)
    if not machines:
        machines = sorted({q for queues in live.values() for q in queues})
        if not machines:
            raise ClientError("no live worker; name the machines with --machines a,b (their jobs wait for a worker)")
    jobs = [Job(sha, m, tuple(workloads)) for m in machines]  # every name checked before anything is queued
    broker = client(settings)
    lines = []
    for job in jobs:
        key = engine.job_key(job.id)
        with broker.pipeline() as pipe:
            try:
                pipe.watch(key)
                state = STATES.get(app.AsyncResult(job.id).state, "unknown") if pipe.exists(key) else None
                if state not in (None, "failed"):
                    lines.append(f"{job.machine}: {sha[:10]} already {state} (job {job.id}); not submitted again")
                    continue
                pipe.multi()
                pipe.set(key, json.dumps({**job.payload(), "submitted_at": time.time()}))
                pipe.zadd(engine.JOBS, {job.id: time.time()})
                pipe.execute()
            except redis.WatchError:
                lines.append(f"{job.machine}: {sha[:10]} submitted by someone else just now (job {job.id})")
                continue
        if state == "failed":
            app.backend.forget(job.id)  # before the message: a worker skips a job whose outcome is stored
        run_job.apply_async(kwargs={"job": job.payload()}, task_id=job.id, queue=job.machine)
        waiting = "" if any(job.machine in queues for queues in live.values()) else " (no live worker on that queue: it waits)"
        lines.append(f"{job.machine}: {sha[:10]} queued{' again' if state else ''} (job {job.id}){waiting}")
    return lines


def status(settings: FleetSettings, rev: str | None, cwd: Path) -> dict:
    """Machines, their live workers, and their jobs (of `rev`, or all), newest last."""
    app = engine.make_app(settings)
    broker = client(settings)
    sha = resolve(rev, cwd) if rev else None
    live = live_workers(app)
    ids = [i for i in broker.zrange(engine.JOBS, 0, -1) if sha is None or i.endswith(f"-{sha}")]
    machines: dict[str, dict] = {}
    for queues in live.values():
        for q in queues:
            machines.setdefault(q, {"workers": [], "jobs": []})
    for node, queues in live.items():
        for q in queues:
            machines[q]["workers"].append(node)
    for job_id, raw in zip(ids, broker.mget([engine.job_key(i) for i in ids]) if ids else [], strict=True):
        if raw is None:
            continue
        record = json.loads(raw)
        meta = app.backend.get_task_meta(job_id)
        runs = [json.loads(e) for e in broker.lrange(engine.runs_key(job_id), 0, -1)]
        state = STATES.get(meta["status"], meta["status"].lower())
        entry = {**record, "job": job_id, "state": state, "attempts": sum(r["event"] == "start" for r in runs)}
        # A retry starts a few seconds after its attempt failed: the reason stays visible while the next one runs.
        entry["last_failure"] = next((r.get("message") for r in reversed(runs) if r["event"] in ("retry", "failed")), None)
        result = meta.get("result")
        if entry["state"] == "running":
            entry |= {k: result.get(k) for k in ("stage", "worker", "since")}
            entry["worker_live"] = result.get("worker") in live
        elif entry["state"] == "done":
            entry |= {k: result.get(k) for k in ("experiment", "gate", "worker", "seconds")}
        elif entry["state"] in ("failed", "retrying"):
            entry["message"] = str(result)
        machines.setdefault(record["machine"], {"workers": [], "jobs": []})["jobs"].append(entry)
    return {"workers": live, "machines": machines}


def describe(entry: dict) -> str:
    head = f"  {entry['revision'][:10]}  {entry['state']:<8}"
    if entry["state"] == "running":
        elapsed = f", {time.time() - entry['since']:.0f} s" if entry.get("since") else ""
        line = f"{head}  {entry['stage']} on {entry['worker']}{elapsed}"
        if not entry["worker_live"]:
            line += "; that worker does not answer: the job returns to the queue after the visibility timeout"
        if entry.get("last_failure"):
            line += f"; attempt {entry['attempts']}, the one before failed: {entry['last_failure']}"
        return line
    if entry["state"] == "done":
        gate = entry.get("gate") or {}
        verdict = "; ".join(f"gate {'passed' if v.get('passed') else 'failed'} ({name})" for name, v in gate.items())
        return f"{head}  experiment {entry['experiment']} on {entry['worker']}; {verdict}; {entry['attempts']} attempt(s)"
    if entry["state"] in ("failed", "retrying"):
        return f"{head}  {entry['message']}"
    return head


def show(report: dict) -> str:
    lines = []
    for machine, info in sorted(report["machines"].items()):
        workers = ", ".join(info["workers"]) if info["workers"] else "no live worker (its jobs wait in the queue)"
        lines.append(f"{machine}: {workers}")
        lines += [describe(e) for e in info["jobs"]]
    return "\n".join(lines) if lines else "no jobs and no live worker"


def collect(rev: str, remote: str, only: list[str], cwd: Path) -> list[str]:
    """Every machine's experiment of `rev` from the git remote into machines/<name>/ (each checked), then the fleet stage."""
    from edgequant.fleet import table

    sha = resolve(rev, cwd)
    prefix = f"refs/exps/{sha[:2]}/{sha[2:]}/"
    listed = git(["ls-remote", remote, f"{prefix}*"], cwd)
    if listed.returncode != 0:
        raise ClientError(f"git ls-remote {remote}: {(listed.stderr.strip().splitlines() or ['failed'])[-1]}")
    found = {}
    for line in listed.stdout.splitlines():
        name = line.split("\t", 1)[1].removeprefix(prefix)
        machine = engine.experiment_machine(name, sha)
        if machine and (not only or machine in only):
            found[name] = machine
    if not found:
        raise ClientError(f"no machine's experiment of {sha[:10]} on {remote} yet; see `python -m edgequant.fleet status`")
    pulled = subprocess.run(["dvc", "exp", "pull", "--no-cache", remote, *found], cwd=cwd, capture_output=True, text=True)
    if pulled.returncode != 0:
        raise ClientError(f"dvc exp pull {remote}: {((pulled.stdout + pulled.stderr).strip().splitlines() or ['failed'])[-1]}")
    collected = []
    for name, machine in sorted(found.items()):
        with tempfile.TemporaryDirectory() as tmp:
            files = read_folder(f"{prefix}{name}", f"machines/{machine}", Path(tmp), cwd)
            target = table.import_files(files, cwd / "machines", replace=True)
        if target.name != machine:
            raise ClientError(f"experiment {name}: machines/{machine}/ holds the record of {target.name}")
        collected.append(machine)
    fleet = subprocess.run(["dvc", "repro", "--single-item", "fleet"], cwd=cwd, capture_output=True, text=True)
    if fleet.returncode != 0:
        raise ClientError(f"dvc repro fleet: {((fleet.stdout + fleet.stderr).strip().splitlines() or ['failed'])[-1]}")
    return collected


def read_folder(ref: str, folder: str, into: Path, cwd: Path) -> list[Path]:
    """A machine's folder from a commit, as plain files of bounded size (records.read_files checks them again)."""
    listed = git(["ls-tree", "-l", "-z", ref, f"{folder}/"], cwd)
    entries = [e for e in listed.stdout.split("\0") if e]
    if listed.returncode != 0 or not entries or len(entries) > records.MAX_FILES:
        raise ClientError(f"{ref}: {folder}/ holds {len(entries)} entries; a machine's folder holds 1 to {records.MAX_FILES} files")
    files = []
    for entry in entries:
        meta, path = entry.split("\t", 1)
        mode, kind, obj, size = meta.split()
        name = path.removeprefix(f"{folder}/")
        if mode != "100644" or kind != "blob" or not records.FILE_NAME.fullmatch(name) or int(size) > records.MAX_FILE_BYTES:
            raise ClientError(f"{ref}: {path} is not a record file (a plain file of at most {records.MAX_FILE_BYTES:,} bytes)")
        (into / name).write_bytes(subprocess.run(["git", "cat-file", "blob", obj], cwd=cwd, capture_output=True, check=True).stdout)
        files.append(into / name)
    return files
