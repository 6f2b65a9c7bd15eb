"""`make worker`: a Celery worker on the queue this machine's probe names, one job at a time, and the task it runs.

Delivery is at least once: a job is acknowledged when it has ended, so a worker that dies mid-job leaves it to
return to its queue (after the visibility timeout) and run again. The task therefore skips a job that has
already ended (its result is in the backend), and takes a lock in the broker, renewed while the job runs, so
that a second copy never runs beside the first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgequant.fleet import engine
from edgequant.fleet import settings as fleet_settings
from edgequant.fleet.engine import Job, JobError
from edgequant.fleet.job import Failed, Unreachable, execute


@dataclasses.dataclass(frozen=True)
class Context:
    settings: fleet_settings.FleetSettings
    home: Path  # the worker's checkout: its git remote, its DVC credentials
    machine: str
    remote_url: str
    node: str  # the Celery node name, machine@host


CONTEXT: Context | None = None  # set by `start` before the pool forks its child


def log_run(client, job_id: str, event: str, **fields) -> int:
    """Append to the job's history; the attempt number for a start. A broker that is away does not stop the job."""
    import redis

    entry = {"event": event, "worker": CONTEXT.node, "pid": os.getpid(), "at": round(time.time(), 3), **fields}
    try:
        client.rpush(engine.runs_key(job_id), json.dumps(entry))
        return sum(json.loads(e)["event"] == "start" for e in client.lrange(engine.runs_key(job_id), 0, -1))
    except redis.RedisError as exc:
        print(f"fleet: job {job_id}: could not record {event!r} in the broker ({exc})", file=sys.stderr)
        return 0


class Renewed:
    """A lock in the broker held while a job runs: it expires LOCK_TTL_S after its holder dies."""

    def __init__(self, client, job_id: str):
        self.lock = client.lock(engine.lock_key(job_id), timeout=engine.LOCK_TTL_S, blocking=False, thread_local=False)
        self.stop = threading.Event()

    def acquire(self) -> bool:
        if not self.lock.acquire():
            return False
        threading.Thread(target=self.renew, name="fleet-lock", daemon=True).start()
        return True

    def renew(self) -> None:
        import redis

        while not self.stop.wait(engine.LOCK_TTL_S / 4):
            # The broker restarting: the next renewal reaches it (the key outlives a short outage).
            with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):
                self.lock.reacquire()

    def release(self) -> None:
        import redis

        self.stop.set()
        with contextlib.suppress(redis.RedisError, redis.exceptions.LockError):  # expired, or the broker away: it lapses
            self.lock.release()


def run_task(task, payload: object, failures: int) -> dict:
    """The body of the fleet's task; Celery stores what it returns, or the Failed it raises, as the job's outcome."""
    import redis
    from celery import states
    from celery.exceptions import Ignore

    ctx = CONTEXT
    job = Job.from_payload(payload)
    if job.machine != ctx.machine:
        raise JobError(f"job for {job.machine} reached the worker of {ctx.machine}; submit it to its machine's queue")
    broker = fleet_settings.client(ctx.settings, timeout_s=10, retries=20)
    lock = Renewed(broker, job.id)
    if not lock.acquire():  # a copy of this job runs elsewhere: come back once it has had time to end
        log_run(broker, job.id, "busy")
        again = {"job": job.payload(), "failures": failures}
        task.apply_async(kwargs=again, task_id=job.id, queue=job.machine, countdown=ctx.settings.retry_delay_s)
        raise Ignore()
    try:
        if task.AsyncResult(job.id).state in (states.SUCCESS, states.FAILURE):
            log_run(broker, job.id, "duplicate")  # a redelivered copy of a job that has ended
            raise Ignore()
        attempt = log_run(broker, job.id, "start")
        since = time.time()

        def report(stage: str) -> None:
            meta = {**job.payload(), "stage": stage, "worker": ctx.node, "attempt": attempt, "since": since}
            try:
                task.update_state(state="PROGRESS", meta=meta)
            except (redis.RedisError, OSError) as exc:  # progress is for people; the job goes on
                print(f"fleet: job {job.id}: progress {stage!r} not recorded ({exc})", file=sys.stderr)

        try:
            result = execute(job, ctx.settings.scratch_dir, ctx.home, ctx.remote_url, ctx.settings.job_timeout_s, report)
        except Unreachable as exc:
            if failures + 1 >= ctx.settings.max_attempts:
                log_run(broker, job.id, "failed", message=str(exc))
                raise Failed(f"{exc} (attempt {failures + 1} of {ctx.settings.max_attempts}; giving up)") from exc
            log_run(broker, job.id, "retry", message=str(exc))
            retry = Unreachable(f"{exc} (attempt {failures + 1} of {ctx.settings.max_attempts}; again in {ctx.settings.retry_delay_s} s)")
            again = {"job": job.payload(), "failures": failures + 1}
            raise task.retry(exc=retry, countdown=ctx.settings.retry_delay_s, kwargs=again) from exc
        except Failed as exc:
            log_run(broker, job.id, "failed", message=str(exc))
            raise
        log_run(broker, job.id, "done", experiment=job.experiment)
        return {**result, "worker": ctx.node, "attempt": attempt}
    finally:
        lock.release()


def register(app):
    """The fleet's one task on `app`: a job's payload and the count of its failed attempts, both JSON."""

    @app.task(bind=True, name=engine.TASK, max_retries=None, acks_late=True, reject_on_worker_lost=True)
    def run_job(self, job: dict, failures: int = 0) -> dict:
        return run_task(self, job, failures)

    return run_job


def git_root(start: Path) -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=start, capture_output=True, text=True)
    if out.returncode != 0:
        raise fleet_settings.SettingsError(f"{start}: not in a git checkout; start the worker in edgequant's checkout")
    return Path(out.stdout.strip())


def remote_url(home: Path, name: str) -> str:
    out = subprocess.run(["git", "remote", "get-url", name], cwd=home, capture_output=True, text=True)
    if out.returncode != 0:
        raise fleet_settings.SettingsError(f"{home}: no git remote {name!r} (git_remote); jobs fetch revisions from it and push to it")
    return out.stdout.strip()


def start(loglevel: str = "INFO") -> int:
    """Check everything a job needs, then hand over to Celery's worker on this machine's queue."""
    global CONTEXT
    from edgequant.measure.machine import probe

    home = git_root(Path.cwd())
    settings = fleet_settings.load(home)
    fleet_settings.check_broker(settings)
    machine = probe()["name"]  # what the probe stage records in metrics/machine.json under this environment
    Job(revision="0" * 40, machine=machine)  # the queue's name is checked as a job's machine is
    CONTEXT = Context(settings, home, machine, remote_url(home, settings.git_remote), f"{machine}@{socket.gethostname()}")
    settings.scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    app = engine.make_app(settings)
    register(app)
    print(f"fleet: worker {CONTEXT.node} on queue {machine}, one job at a time; broker {settings.broker}", flush=True)
    argv = ["worker", "--queues", machine, "--hostname", CONTEXT.node, "--concurrency", "1", "--prefetch-multiplier", "1"]
    app.worker_main([*argv, "--without-mingle", "--without-gossip", "-O", "fair", "--loglevel", loglevel])
    return 0
