"""One fleet job on a worker: a revision measured on this machine, in a scratch worktree, saved and pushed.

fetch (git clone of the remote, the revision checked out) -> pull (`dvc pull --with-deps` of the benchmark:
data, models, quantized artifacts from the team's DVC remote) -> check (`dvc status`: nothing upstream of the
benchmark may run here, or this CPU would train and quantize another model) -> probe, benchmark, gate (`dvc
repro` of the gate of the reference and of each workload; every stage that ran is checked again) -> save
(machines/<name>/, as `make machine` does) -> fleet -> experiment (`dvc exp save`, named after the machine and
the revision) -> push (`dvc exp push`: git refs to the git remote, outputs to the DVC remote).

Every command is fixed here; the job supplies a commit id and names checked by edgequant.fleet.engine.Job.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from edgequant.data.urls import redact
from edgequant.deps import PROBE, PROBE_STAGE
from edgequant.fleet.engine import Job

# What a worker may run: the machine probe and what reads it. The rest was measured where the revision was made;
# dvc.lock of the revision names those outputs and `dvc pull` brings them.
MAY_RUN = ("validate", "probe", "benchmark", "gate", "fleet")
TAIL_CHARS = 4000
RUNNING = re.compile(r"Running stage '([^']+)'")


class Failed(RuntimeError):
    """The job cannot complete as submitted; one line saying why and what to do."""


class Unreachable(Failed):
    """The git remote or the DVC remote did not answer: the job is worth another attempt later."""


def stage_name(dvc_name: str) -> str:
    """`workloads/w/dvc.yaml:benchmark` -> benchmark; `quantize@fp32` -> quantize."""
    return dvc_name.rsplit(":", 1)[-1].split("@", 1)[0]


def probe_target(work: Path) -> str:
    """The machine probe's DVC name in the revision checked out at `work`: `probe/dvc.yaml:probe`, or plain `probe` in a
    revision made while the probe still sat in dvc.yaml (a job may name any commit)."""
    return PROBE_STAGE if (work / PROBE).is_file() else "probe"


def last_line(output: str) -> str:
    """The line of a command's output that says what went wrong: DVC's ERROR line, else the last one."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return redact((errors or lines or ["no output"])[-1])[:300]


def job_env(machine: str) -> dict[str, str]:
    """The worker's environment (its ISA caps included) for the pipeline's commands: this interpreter's tools first,
    the revision's own code imported (no PYTHONPATH), no prompts, a git identity for the experiment's commit."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["GIT_TERMINAL_PROMPT"] = "0"
    if not subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, env=env).stdout.strip():
        env.setdefault("GIT_AUTHOR_NAME", f"edgequant fleet ({machine})")
        env.setdefault("GIT_AUTHOR_EMAIL", f"fleet@{machine}.invalid")
        env.setdefault("GIT_COMMITTER_NAME", env["GIT_AUTHOR_NAME"])
        env.setdefault("GIT_COMMITTER_EMAIL", env["GIT_AUTHOR_EMAIL"])
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float, on_line: Callable[[str], None] | None = None) -> tuple[int, str]:
    """Run a command in the job's process group (a worker killed whole takes it along); its exit code and output."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line)
        if on_line:
            on_line(line)
        if time.monotonic() > deadline:
            proc.kill()  # each stage watches its parent and stops once dvc is gone (edgequant.stage.watch_parent)
            proc.wait()
            raise Failed(f"{cmd[0]} {cmd[1]}: still running after {timeout_s:.0f} s (job_timeout_s); stopped")
    proc.wait()
    return proc.returncode, "".join(lines)


class Workspace:
    """The job's scratch worktree and the worker's DVC cache, under the worker's scratch folder."""

    def __init__(self, job: Job, scratch: Path, home: Path, remote_url: str, timeout_s: float):
        self.job, self.home, self.remote_url, self.timeout_s = job, home, remote_url, timeout_s
        self.jobs = scratch / job.machine / "jobs"
        self.cache = scratch / job.machine / "cache"
        self.work = self.jobs / job.id
        self.marker = self.jobs / f"{job.id}.saved.json"
        self.env = job_env(job.machine)
        self.ran: list[str] = []

    def sh(self, stage: str, cmd: list[str], cwd: Path | None = None, unreachable: bool = False, on_line=None) -> str:
        code, out = run(cmd, cwd or self.work, self.env, self.timeout_s, on_line)
        if code != 0:
            message = f"{stage}: `{' '.join(cmd[:3])}` failed: {last_line(out)}"
            raise Unreachable(message) if unreachable else Failed(message)
        return out

    def targets(self, stage: str) -> list[str]:
        return [stage, *(f"workloads/{w}/dvc.yaml:{stage}" for w in self.job.workloads)]

    def saved(self) -> dict | None:
        """What an earlier attempt of this job saved and did not push (an experiment in this worktree), if anything."""
        if not (self.marker.is_file() and self.work.is_dir()):
            return None
        saved = json.loads(self.marker.read_text())
        return saved if saved.get("job") == self.job.id else None

    def fetch(self) -> None:
        """A fresh clone of the git remote at the revision, borrowing the worker's checkout's objects; the worker's
        DVC credentials (.dvc/config.local) and its cache shared by every job."""
        self.jobs.mkdir(parents=True, exist_ok=True)
        for old in self.jobs.iterdir():  # one job per machine at a time: whatever is here was abandoned
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()
        clone = ["git", "clone", "--quiet", "--no-checkout", "--reference-if-able", str(self.home), self.remote_url, str(self.work)]
        self.sh("fetch", clone, cwd=self.jobs, unreachable=True)
        if run(["git", "cat-file", "-e", f"{self.job.revision}^{{commit}}"], self.work, self.env, 60)[0] != 0:
            self.sh("fetch", ["git", "fetch", "--quiet", "origin", self.job.revision], unreachable=True)
        self.sh("fetch", ["git", "checkout", "--quiet", "--detach", self.job.revision])
        for w in self.job.workloads:
            if not (self.work / "workloads" / w / "dvc.yaml").is_file():
                raise Failed(f"fetch: revision {self.job.revision[:10]} has no workloads/{w}/dvc.yaml")
        local = self.home / ".dvc" / "config.local"
        if local.is_file():
            shutil.copy(local, self.work / ".dvc" / "config.local")
        self.cache.mkdir(parents=True, exist_ok=True)
        self.sh("fetch", ["dvc", "cache", "dir", "--local", str(self.cache)])

    def pull(self) -> None:
        self.sh("pull", ["dvc", "pull", "--with-deps", *self.targets("benchmark")], unreachable=True)

    def check(self) -> None:
        """Refuse before anything runs if a stage upstream of the benchmark would: its outputs are not those dvc.lock names."""
        status = json.loads(self.sh("check", ["dvc", "status", "--json", "--with-deps", *self.targets("gate"), "fleet"]) or "{}")
        upstream = {name: changes for name, changes in status.items() if stage_name(name) not in MAY_RUN}
        if upstream:
            name, changes = next(iter(upstream.items()))
            raise Failed(
                f"check: stage {name} would run on this machine ({json.dumps(changes)[:160]}), "
                f"and {len(upstream)} stage(s) upstream of the benchmark in all; run and `dvc push` them where "
                f"{self.job.revision[:10]} was made, then submit again"
            )

    def repro(self, stage: str, targets: list[str], report: Callable[[str], None]) -> tuple[int, str]:
        def on_line(line: str) -> None:
            if match := RUNNING.search(line):
                report(stage_name(match[1]))

        code, out = run(["dvc", "repro", *targets], self.work, self.env, self.timeout_s, on_line)
        ran = RUNNING.findall(out)
        self.ran += ran
        stray = [name for name in ran if stage_name(name) not in MAY_RUN]
        if stray:  # `check` makes this unreachable; should DVC ever disagree, nothing of it is saved
            raise Failed(f"{stage}: dvc ran {', '.join(stray)}, upstream of the benchmark; nothing of this run is saved")
        return code, out

    def measure(self, report: Callable[[str], None]) -> dict[str, dict]:
        """Probe, benchmark and gate of the reference and each workload; the gate's verdict of each. A gate that fails
        is a result (the fleet judges each machine anew), not a failed job."""
        code, out = self.repro("measure", self.targets("gate"), report)
        verdicts = {}
        for name, folder in [("reference", self.work), *((w, self.work / "workloads" / w) for w in self.job.workloads)]:
            path = folder / "metrics" / "gate.json"
            verdict = json.loads(path.read_text()) if path.is_file() else {}
            verdicts[name] = {"passed": verdict.get("passed"), "failures": verdict.get("failures")}
        gate_failed = any(v["passed"] is False for v in verdicts.values()) and "check(s) failed" in out
        if code != 0 and not gate_failed:
            raise Failed(f"measure: `dvc repro` failed: {last_line(out)}")
        return verdicts

    def save(self) -> None:
        """machines/<name>/ as `make machine` keeps it; the probe must name the machine this queue is for."""
        name = self.sh("save", [sys.executable, "-m", "edgequant.fleet.table", "save", "--out", "machines"]).strip().splitlines()[-1]
        if name != self.job.machine:
            raise Failed(
                f"save: the probe names this machine {name}, the job is for {self.job.machine}; restart the worker (`make worker`)"
            )

    def experiment(self, report: Callable[[str], None], verdicts: dict) -> None:
        code, out = self.repro("fleet", ["fleet"], report)
        if code != 0:
            raise Failed(f"fleet: `dvc repro fleet` failed: {last_line(out)}")
        report("experiment")
        stages = [probe_target(self.work), "benchmark", "gate", "fleet", *(t for s in ("benchmark", "gate") for t in self.targets(s)[1:])]
        self.sh("experiment", ["dvc", "exp", "save", "--force", "--include-untracked", f"machines/{self.job.machine}",
                               "-n", self.job.experiment, *stages])  # fmt: skip
        self.marker.write_text(json.dumps({"job": self.job.id, "gate": verdicts, "ran": self.ran}))

    def push(self) -> None:
        self.sh("push", ["dvc", "exp", "push", "--force", "origin", self.job.experiment], unreachable=True)

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        self.marker.unlink(missing_ok=True)


def execute(job: Job, scratch: Path, home: Path, remote_url: str, timeout_s: float, report: Callable[[str], None]) -> dict:
    """Run the job; its outcome (experiment, gate verdicts, stages run, seconds per step). Raises Failed or Unreachable."""
    ws = Workspace(job, scratch, home, remote_url, timeout_s)
    seconds: dict[str, float] = {}

    def step(name: str, action: Callable[[], object]) -> object:
        report(name)
        start = time.monotonic()
        result = action()
        seconds[name] = round(time.monotonic() - start, 2)
        return result

    saved = ws.saved()
    if saved is None:
        step("fetch", ws.fetch)
        step("pull", ws.pull)
        step("check", ws.check)
        verdicts = step("measure", lambda: ws.measure(report))
        step("save", ws.save)
        step("experiment", lambda: ws.experiment(report, verdicts))
        saved = ws.saved()
    step("push", ws.push)
    ws.remove()
    return {**job.payload(), "experiment": job.experiment, "gate": saved["gate"], "ran": saved["ran"], "seconds": seconds}
