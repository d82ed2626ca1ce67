"""Controlling jobs from outside (cancel, delete) and from inside (JobWriter, the one job slot, and
the one failure ladder that turns what a job raised into its status)."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..errors import UserError, as_user_error, first_line
from ..io import obliviate_home
from ..secrets import scrub
from .status import Status, _read, _write, append_file, is_job_dir, job_roots, mark, now, pid_alive, read_status

# -- job side -----------------------------------------------------------------------------------
class Cancelled(Exception):
    """The job was asked to stop."""


def cancel(out: str | os.PathLike) -> Status:
    """Ask a job to stop: a stop file (checked between steps) and SIGTERM to its own process."""
    out = Path(out)
    status = read_status(out)
    if not status.active:
        raise UserError(f"{out} is not running (state: {status.state or 'unknown'})")
    (out / "stop").write_text(now())
    if pid_alive(status.pid) and is_job_process(status.pid, out):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(status.pid, signal.SIGTERM)
    return status


def is_job_process(pid: int | None, out: str | os.PathLike) -> bool:
    """Is `pid` this engine's job for `out`? Its command line is `python -m engine ... <out> ...`,
    with `out` resolved against the process's own working directory. A recycled pid, a pid typed
    into status.json, or a process we cannot inspect is not signalled (the stop file still works)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if "-m" not in argv or "engine" not in argv[argv.index("-m") + 1: argv.index("-m") + 2]:
        return False
    target = Path(out).resolve()
    return any(a and (cwd / a).resolve() == target for a in argv)


def delete(out: str | os.PathLike, confirmed: bool = False) -> None:
    """Remove a finished job directory. Only this engine's job directories, and outside the job
    roots only when `confirmed` (`runs delete DIR --yes`)."""
    out = Path(out)
    if not out.is_dir() or not (out / "status.json").exists() or not is_job_dir(out):
        raise UserError(f"{out} is not an Obliviate job directory: nothing deleted")
    if not confirmed and not any(out.resolve().is_relative_to(r) for r in job_roots()):
        raise UserError(f"{out} is outside {', '.join(map(str, job_roots()))}: add --yes to delete it")
    if read_status(out).active:
        raise UserError(f"{out} is still active: cancel it first")
    shutil.rmtree(out)


class JobWriter:
    """Everything a job process writes into its directory. `enabled=False` (non-zero ranks) writes nothing."""

    def __init__(self, out: str | os.PathLike, kind: str, enabled: bool = True):
        self.out = Path(out)
        self.kind = kind
        self.enabled = enabled
        self.stop_file = self.out / "stop"
        self.signalled = False
        if enabled:
            self.out.mkdir(parents=True, exist_ok=True)
            mark(self.out)
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signalled = True  # checked between steps: the loop saves a checkpoint and stops

    def should_stop(self) -> bool:
        return self.signalled or self.stop_file.exists()

    def status(self, **changes) -> None:
        if self.enabled:
            current = _read(self.out).to_dict()
            current.update(changes, kind=self.kind, updated=now())
            _write(self.out, Status.from_dict(current, str(self.out)))

    def start(self, **changes) -> None:
        self.status(state="running", pid=os.getpid(), host=socket.gethostname(), error=None, finished=None,
                    created=_read(self.out).created or now(), started=now(), **changes)

    def finish(self, **changes) -> None:
        if self.enabled:
            self.stop_file.unlink(missing_ok=True)
        self.status(state="finished", finished=now(), **changes)

    def fail(self, error: str) -> None:
        self.status(state="failed", error=scrub(error, limit=1000), finished=now())

    def cancelled(self, **changes) -> None:
        if self.enabled:
            self.stop_file.unlink(missing_ok=True)
        self.status(state="cancelled", finished=now(), **changes)

    def log(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {scrub(message, limit=2000)}"
        print(line, file=sys.stderr, flush=True)
        if self.enabled:
            with append_file(self.out / "log.txt") as f:
                f.write((line + "\n").encode("utf-8"))

    def metric(self, row: dict) -> None:
        if self.enabled:
            from ..io import dumps

            with append_file(self.out / "metrics.jsonl") as f:
                f.write((dumps(row) + "\n").encode("utf-8"))


@contextlib.contextmanager
def queue_slot(job: JobWriter, poll_s: float = 0.5):
    """Hold the one job slot of this OBLIVIATE_HOME; wait (state queued) while another job holds it.

    A dead holder's lock is released by the kernel, so a crash never blocks the queue.
    """
    if not job.enabled:
        yield
        return
    f = open(obliviate_home() / "queue.lock", "a+")
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    job.status(state="queued", phase="queued", pid=os.getpid(), host=socket.gethostname())
                    job.log("waiting for the running job to finish (one job at a time)")
                    waiting = True
                if job.should_stop():
                    raise Cancelled("cancelled while queued")
                time.sleep(poll_s)
        yield
    finally:
        f.close()  # releases the lock


@contextlib.contextmanager
def failures(job: JobWriter, doing: Callable[[], str]):
    """The one failure ladder of a job process (runs and evaluations alike): a UserError, or an
    out-of-memory said as one (`doing()` names what ran out), fails the job with that line and is
    re-raised as a UserError (exit 2); anything else fails it with its type and first line and is
    re-raised with its traceback. A cancel and Ctrl-C pass through: each caller says what they mean."""
    try:
        yield
    except (Cancelled, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised
        err = as_user_error(e, doing())
        if err is None:
            job.log(f"failed: {type(e).__name__}: {e}")
            job.fail(f"{type(e).__name__}: {first_line(e, 1000)}")
            raise
        job.log(f"error: {err}")
        job.fail(str(err))
        if err is e:
            raise
        raise err from None
