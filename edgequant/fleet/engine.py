"""The fleet's task queue on Celery and Redis: the app's settings, what a job carries, and the names it goes by.

One queue per machine, named by the probe (edgequant.measure.machine.slug): a job for `amd-epyc-avx2` waits
in that queue until a worker whose probe gives that name takes it. A job is a revision and names, checked
like params (`Job.from_payload`); the worker runs the pipeline's own commands on them and nothing else.
Messages and results are JSON only: a pickled message is refused before anything reads it.
"""

from __future__ import annotations

import dataclasses
import re

from edgequant.fleet.records import MAX_NAME_CHARS, is_machine_name
from edgequant.fleet.settings import FleetSettings

TASK = "edgequant.fleet.run_job"
SHA = re.compile(r"[0-9a-f]{40}")
WORKLOAD = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # a folder under workloads/ (edgequant.workloads.FOLDER)
MAX_WORKLOADS = 32
SHORT_SHA = 10  # in experiment names and printed lines
KEY = "edgequant:fleet"  # every key of the fleet's own in the broker's database starts with it
LOCK_TTL_S = 20  # a job's lock outlives its worker by at most this long; the worker renews it every LOCK_TTL_S / 4
RESERVED_QUEUES = ("celery", "unacked", "unacked_index", "unacked_mutex")  # kombu's own keys and queue


class JobError(ValueError):
    """A job that cannot run as given; the message is one line naming the field."""


@dataclasses.dataclass(frozen=True)
class Job:
    revision: str  # a full commit id: a branch name would move between submit and run
    machine: str
    workloads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.revision, str) or not SHA.fullmatch(self.revision):
            raise JobError(f"job: revision must be a full 40-hex commit id, got {ascii(self.revision)[:60]}")
        if not is_machine_name(self.machine) or self.machine in RESERVED_QUEUES:
            raise JobError(
                f"job: machine {ascii(self.machine)[:80]} is not a machine's name"
                f" (lower-case letters and digits joined by '-', at most {MAX_NAME_CHARS} characters)"
            )
        if not isinstance(self.workloads, tuple) or len(self.workloads) > MAX_WORKLOADS:
            raise JobError(f"job: workloads must be a list of at most {MAX_WORKLOADS} names")
        for name in self.workloads:
            if not isinstance(name, str) or not WORKLOAD.fullmatch(name):
                raise JobError(f"job: workload {ascii(name)[:80]} is not a folder name under workloads/ (e.g. fashion_mnist-dwsep_cnn)")
        if len(set(self.workloads)) != len(self.workloads):
            raise JobError(f"job: a workload named twice in {list(self.workloads)}")

    @classmethod
    def from_payload(cls, payload: object) -> Job:
        """A job from a message's JSON: exactly these fields, each checked."""
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(payload, dict) or set(payload) - fields or {"revision", "machine"} - set(payload):
            shown = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
            raise JobError(f"job: expected an object with revision, machine and workloads, got {ascii(shown)[:120]}")
        workloads = payload.get("workloads", [])
        if not isinstance(workloads, list):
            raise JobError(f"job: workloads must be a list of names, got {type(workloads).__name__}")
        return cls(payload["revision"], payload["machine"], tuple(workloads))

    def payload(self) -> dict:
        return {"revision": self.revision, "machine": self.machine, "workloads": list(self.workloads)}

    @property
    def id(self) -> str:
        """The task id: one per machine and revision, so that submitting both again finds the first job."""
        return f"fleet-{self.machine}-{self.revision}"

    @property
    def experiment(self) -> str:
        """The DVC experiment the job saves and pushes: the machine's name and the revision's."""
        return f"{self.machine}-{self.revision[:SHORT_SHA]}"


def experiment_machine(name: str, revision: str) -> str | None:
    """The machine an experiment of `revision` was saved for (Job.experiment read back), or None for any other name."""
    suffix = f"-{revision[:SHORT_SHA]}"
    machine = name.removesuffix(suffix)
    return machine if name.endswith(suffix) and is_machine_name(machine) else None


def job_key(job_id: str) -> str:
    return f"{KEY}:job:{job_id}"


def runs_key(job_id: str) -> str:
    """Every attempt at a job, in order: who started it, and how it ended (JSON lines)."""
    return f"{KEY}:runs:{job_id}"


def lock_key(job_id: str) -> str:
    return f"{KEY}:lock:{job_id}"


JOBS = f"{KEY}:jobs"  # sorted set: job id by submit time


def restore_interval_s(visibility_timeout_s: int) -> int:
    """How often a worker returns abandoned jobs to their queues: a tenth of the visibility timeout, 1 s to 60 s."""
    return max(1, min(60, visibility_timeout_s // 10))


def make_app(settings: FleetSettings):
    """The Celery app of the fleet: Redis as broker and result backend, JSON only, one job per worker at a time."""
    from celery import Celery

    url = settings.url()
    app = Celery("edgequant.fleet", broker=url, backend=url, set_as_current=False)
    timeouts = {"socket_connect_timeout": 5, "socket_timeout": 30, "socket_keepalive": True}
    app.conf.update(
        # JSON only: pickle would run code the message carries.
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A benchmark never shares the CPU: one job at a time, none reserved ahead, acknowledged only once finished
        # (a worker that dies leaves its job unacknowledged; kombu puts it back after the visibility timeout).
        worker_concurrency=1,
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_deduplicate_successful_tasks=True,
        task_track_started=False,  # its STARTED would overwrite a finished job's state when a copy is redelivered
        task_default_queue="celery",  # never consumed by a fleet worker: every job names its machine's queue
        task_create_missing_queues=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": restore_interval_s(settings.visibility_timeout_s),
            "unacked_restore_throttle": 1,
            **timeouts,
        },
        result_backend_transport_options={"retry_policy": {"timeout": 5.0}},
        redis_socket_connect_timeout=5,
        redis_socket_timeout=30,
        redis_socket_keepalive=True,
        # Results and progress ride out a broker restart: the backend retries for about ten minutes.
        result_backend_always_retry=True,
        result_backend_base_sleep_between_retries_ms=100,
        result_backend_max_sleep_between_retries_ms=2000,
        result_backend_max_retries=300,
        result_expires=None,  # a job's outcome stays until deleted: `status` shows it, and a second submit finds it
        result_extended=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker waits out a broker restart of any length
        # A benchmark under way when the broker goes finishes; its acknowledgement may be lost: redelivered, then skipped.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        worker_hijack_root_logger=True,
    )
    return app
