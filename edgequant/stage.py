"""What every stage entry point shares: one-line errors, a watch on its parent, quiet upstream noise."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Refusals a user can act on: bad params or inputs (ValueError), a failed download or measurement
# (StageError), a full disk or a read-only checkout (OSError). Anything else is a bug and keeps its traceback.


class StageError(RuntimeError):
    """A stage cannot go on; its message names the problem and the fix."""


def quiet_known_upstream_noise() -> None:
    """Silence harmless upstream messages that buried real warnings in the stage logs.

    torchao logs a failure for each CUDA-only kernel library it cannot load on a CPU build, and for an
    Enum it registers with pytree; the ONNX exporter logs that torchvision (deliberately not installed)
    is missing; torch's pytree warns dozens of times per ExecuTorch export about its own LeafSpec check;
    inductor's INT8 conv lowering copy-constructs a tensor. None is actionable by a user of this
    pipeline. Everything else, the quantizers' own warnings included, still prints.
    """
    for name in ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="To copy construct from a tensor", module=r"torch\._inductor\.mkldnn_lowerings")


def describe(exc: BaseException) -> str:
    """One line: OSErrors name the file and what to do; others keep their own (first) line."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        fix = "free disk space or make the checkout writable, then re-run"
        if exc.errno == errno.ENOSPC and "DVC_STAGE" in os.environ:  # DVC rewrites its lock files after the stage
            fix += "; if dvc then cannot read .dvc/tmp/rwlock: `python -m edgequant.team.dvclock --repair`"
        return f"cannot access{where}: {exc.strerror} ({fix})"
    text = str(exc).strip() or type(exc).__name__
    # A StageError may list one reason per line (every mirror tried); others keep their first line.
    return text if isinstance(exc, StageError) else text.splitlines()[0]


def run(name: str, body: Callable[[], str]) -> int:
    """Run a stage's body; an actionable failure becomes one line on stderr and exit code 1.

    Every output in dvc.yaml is `persist: true`: DVC leaves a stage's earlier outputs in place while it runs, so
    a stage that refuses a param or an input before its atomic writers replace anything loses nothing, also
    under `dvc repro -s <stage>`, which runs no validate stage first."""
    watch_parent()
    stop_promptly_on_interrupt()
    quiet_known_upstream_noise()
    try:
        message = body()
    except (ValueError, OSError, StageError) as exc:
        print(f"{name}: {describe(exc)}", file=sys.stderr)
        return 1
    print(f"{name}: {message}")
    return 0


def stop_promptly_on_interrupt(grace_s: float = 10.0) -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt as usual, which unwinds through the atomic writers and
    removes their temporaries (about a second in train); if the process is still alive `grace_s` later,
    it exits. In one of some 270 test runs under load a SIGINT in the middle of train's epoch logging
    left the stage alive past 30 s; a stage must stop when asked, and anything it left half-written is a
    hidden `.*.tmp` that the next run sweeps. The timer is armed by the signal itself: the C-level handler
    writes it to a wakeup pipe even while the main thread is stuck in C code and cannot run Python."""
    if threading.current_thread() is not threading.main_thread():  # the wakeup fd can only be set there
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while signal.SIGINT not in os.read(read_fd, 64):
            pass
        time.sleep(grace_s)
        os._exit(128 + signal.SIGINT)

    threading.Thread(target=watch, name="interrupt-grace", daemon=True).start()


# Shells that may stand between DVC and a stage: DVC runs each cmd as `$SHELL -c cmd` (`/bin/sh` when SHELL is
# unset, as under many CI runners), and dash stays alive as the stage's parent where bash would exec the command.
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh", "busybox"})


def read_stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a live process from /proc, or None where it is gone (or there is no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after its last ")"
    head, tail = text.rsplit(")", 1)
    return head.split("(", 1)[1], int(tail.split()[1])


def launch_chain() -> list[tuple[int, int]]:
    """(pid, parent pid) for this process and, under DVC (which sets DVC_STAGE), each shell between it and
    DVC. When DVC dies, the process just below it is re-parented at once (zombie or not), so a changed parent
    anywhere in the chain means DVC is gone. Outside DVC only the process's own parent counts: a shell
    further up (the terminal that started `nohup bash run.sh`) may end while the stage is meant to go on."""
    chain = [(os.getpid(), os.getppid())]
    while "DVC_STAGE" in os.environ and chain[-1][1] > 1 and (stat := read_stat(chain[-1][1])) and stat[0] in SHELLS:
        chain.append((chain[-1][1], stat[1]))
    return chain


def broken_link(chain: list[tuple[int, int]]) -> tuple[int, int] | None:
    """The first (pid, parent) of the chain whose process has lost that parent, or None while all hold."""
    for pid, parent in chain:
        now = os.getppid() if pid == os.getpid() else (read_stat(pid) or ("", -1))[1]
        if now != parent:
            return pid, parent
    return None


def watch_parent(poll_s: float = 0.5, grace_s: float = 30.0) -> None:
    """Stop this process when whatever started it dies (e.g. `dvc` killed on its own, leaving the stage
    behind the `sh -c` that ran it), so an orphaned stage never writes outputs after DVC is gone: the main
    thread gets KeyboardInterrupt, which unwinds through the atomic writers and removes their temporaries;
    if it cannot within `grace_s`, the process exits (a stage's own interrupt timer,
    `stop_promptly_on_interrupt`, ends it sooner; benchmark workers have only this one)."""
    chain = launch_chain()
    if chain[0][1] <= 1:  # already an orphan (started by init, a container's entry point): nothing to watch
        return

    def watch() -> None:
        while (link := broken_link(chain)) is None:
            time.sleep(poll_s)
        pid, parent = link
        print(f"{os.path.basename(sys.argv[0])}: process {parent}, parent of {pid}, died; stopping", file=sys.stderr)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the main thread, so a blocking call returns
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
