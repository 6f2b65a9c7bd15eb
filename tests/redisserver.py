"""A password-protected redis-server on 127.0.0.1 for tests: a free port, its data under a given directory, restartable."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .s3server import HOST, free_ports, spawn

PASSWORD = "edgequant-test-broker-0001"  # a throwaway password known only to the server a test starts


def redis_binary() -> str | None:
    return shutil.which("redis-server") or next((p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None)


class RedisServer:
    """`redis-server` bound to 127.0.0.1 with a password; every write to the append-only file is synced, so a
    restart (even after SIGKILL) keeps every queued job."""

    def __init__(self, root: Path, password: str | None = PASSWORD):
        self.root, self.password = root, password
        self.port = free_ports(1)[0]
        self.log = root / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The broker's URL as the fleet takes it: without the password."""
        return f"redis://{HOST}:{self.port}/0"

    def command(self) -> list[str]:
        binary = redis_binary()
        if binary is None:
            raise FileNotFoundError("no redis-server: apt-get install redis-server")
        auth = ["--requirepass", self.password] if self.password else []
        return [
            binary,
            "--bind", HOST, "--port", str(self.port), "--dir", str(self.root), "--protected-mode", "yes",
            "--appendonly", "yes", "--appendfsync", "always", "--save", "",
            "--daemonize", "no", "--logfile", "", *auth,
        ]  # fmt: skip

    def start(self, timeout_s: float = 20.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = spawn(self.command(), self.root, self.log)
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on {self.url} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def client(self):
        import redis

        return redis.Redis(host=HOST, port=self.port, password=self.password, socket_timeout=5, decode_responses=True)

    def ready(self) -> bool:
        import redis

        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def stop(self, term_timeout_s: float = 10.0) -> None:
        """SIGTERM (redis-server syncs and exits), then SIGKILL for the whole group."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=term_timeout_s)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""
