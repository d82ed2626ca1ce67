"""Long jobs as detached `python -m engine <verb> ... --out DIR` processes, seen through DIR.

A job directory holds:
    status.json    state (queued / running / finished / failed / cancelled), phase, step, total,
                   timestamps, error, pid; written atomically
    metrics.jsonl  one JSON object per logged step
    log.txt        human-readable progress lines
    stderr.txt     the process's own stdout/stderr (warnings, a traceback if it crashed)
    stop           present = please stop (the job checks it between steps)

Controllers (the UI, `runs list/cancel`) use launch / read_status / cancel / delete / list_jobs.
The job process itself uses JobWriter. One job runs at a time per OBLIVIATE_HOME: `queue_slot`
holds an exclusive file lock for the job's life, later jobs wait in state "queued".
This module imports neither torch nor streamlit, so pages can use it cheaply.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .io import atomic_write_json, obliviate_home

ROOT = Path(__file__).resolve().parents[1]
ACTIVE = ("queued", "running")
INTERRUPTED = "failed (interrupted)"
_children: list[subprocess.Popen] = []  # reaped on every look, so finished children never linger as zombies


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def runs_root() -> Path:
    return obliviate_home() / "runs"


# -- controller side ----------------------------------------------------------------------------
def launch(args: list[str], out: str | os.PathLike, kind: str, env: dict | None = None) -> dict:
    """Start `python -m engine *args --out OUT` detached (own session: survives the UI's reruns).

    Returns the initial status. Refuses an OUT that holds an active job.
    """
    out = Path(out).resolve()
    if out.exists() and read_status(out).get("state") in ACTIVE:
        raise UserError(f"{out} already has an active job")
    out.mkdir(parents=True, exist_ok=True)
    (out / "stop").unlink(missing_ok=True)
    status = {"state": "queued", "kind": kind, "args": list(args), "created": now(), "updated": now(),
              "host": socket.gethostname(), "pid": None, "step": 0, "total": 0, "phase": "queued"}
    old = _read(out)
    if old:
        status = {**old, **{k: status[k] for k in ("state", "args", "updated", "host", "pid", "phase")},
                  "error": None}
    atomic_write_json(out / "status.json", status)
    err = open(out / "stderr.txt", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--out", str(out)], cwd=ROOT, stdout=err, stderr=err,
        stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
    err.close()
    _children.append(proc)
    status.update(pid=proc.pid, dir=str(out))
    _merge(out, {"pid": proc.pid})
    return status


def _read(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _merge(out: Path, fields: dict) -> None:
    status = _read(out)
    if status.get("state") in ACTIVE or "state" not in fields:
        atomic_write_json(out / "status.json", {**status, **fields})


def pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (a finished child the launcher has not reaped yet)."""
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def read_status(out: str | os.PathLike) -> dict:
    """status.json, with a dead process's active job turned into 'failed (interrupted)' (persisted)."""
    out = Path(out)
    status = _read(out)
    if status.get("state") in ACTIVE and status.get("host") in (None, socket.gethostname()):
        if not pid_alive(status.get("pid")):
            # A launch writes 'queued' just before the child exists; give it a moment.
            if status.get("pid") is None and time.time() - (out / "status.json").stat().st_mtime < 10:
                return status
            if (out / "stop").exists():  # asked to stop, and it did (perhaps before it could say so)
                status.update(state="cancelled", finished=now())
                (out / "stop").unlink(missing_ok=True)
            else:
                status.update(state=INTERRUPTED, finished=now(),
                              error=status.get("error") or "the process died (killed or machine restarted)")
            atomic_write_json(out / "status.json", status)
    status.setdefault("dir", str(out))
    status["dir"] = str(out)
    return status


def cancel(out: str | os.PathLike) -> dict:
    """Ask a job to stop: a stop file (checked between steps) and SIGTERM to its process."""
    out = Path(out)
    status = read_status(out)
    if status.get("state") not in ACTIVE:
        raise UserError(f"{out} is not running (state: {status.get('state', 'unknown')})")
    (out / "stop").write_text(now())
    pid = status.get("pid")
    if pid_alive(pid) and _is_engine(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return status


def _is_engine(pid: int) -> bool:
    """Guard against a recycled pid: only signal a `python -m engine` process."""
    try:
        return b"engine" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the recorded pid


def delete(out: str | os.PathLike) -> None:
    out = Path(out)
    if not (out / "status.json").exists():
        raise UserError(f"{out} is not a job directory")
    if read_status(out).get("state") in ACTIVE:
        raise UserError(f"{out} is still active: cancel it first")
    shutil.rmtree(out)


def list_jobs(root: str | os.PathLike | None = None, kind: str | None = None) -> list[dict]:
    """Status of every job directory under root (default OBLIVIATE_HOME/runs), newest first."""
    root = Path(root) if root else runs_root()
    if not root.exists():
        return []
    out = []
    for d in root.iterdir():
        if (d / "status.json").exists():
            s = read_status(d)
            if kind is None or s.get("kind") == kind:
                out.append(s)
    return sorted(out, key=lambda s: s.get("created", ""), reverse=True)


def read_metrics(out: str | os.PathLike) -> list[dict]:
    rows = []
    try:
        with open(Path(out) / "metrics.jsonl") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                    rows.append(json.loads(line))
    except FileNotFoundError:
        pass
    return rows


def read_log(out: str | os.PathLike, lines: int = 200) -> str:
    try:
        return "\n".join(Path(out, "log.txt").read_text().splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# -- job side -----------------------------------------------------------------------------------
class Cancelled(Exception):
    """The job was asked to stop."""


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
        with contextlib.suppress(ValueError):  # ValueError: not the main thread
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.signalled = True  # checked between steps: the loop saves a checkpoint and stops

    def should_stop(self) -> bool:
        return self.signalled or self.stop_file.exists()

    def status(self, **fields) -> None:
        if self.enabled:
            status = {**_read(self.out), "kind": self.kind, **fields, "updated": now(), "dir": str(self.out)}
            atomic_write_json(self.out / "status.json", status)

    def start(self, **fields) -> None:
        s = _read(self.out)
        self.status(state="running", pid=os.getpid(), host=socket.gethostname(), error=None, finished=None,
                    created=s.get("created") or now(), started=now(), **fields)

    def finish(self, **fields) -> None:
        self.stop_file.unlink(missing_ok=True) if self.enabled else None
        self.status(state="finished", finished=now(), **fields)

    def fail(self, error: str) -> None:
        self.status(state="failed", error=error, finished=now())

    def cancelled(self, **fields) -> None:
        if self.enabled:
            self.stop_file.unlink(missing_ok=True)
        self.status(state="cancelled", finished=now(), **fields)

    def log(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {message}"
        print(line, file=sys.stderr, flush=True)
        if self.enabled:
            with open(self.out / "log.txt", "a") as f:
                f.write(line + "\n")

    def metric(self, row: dict) -> None:
        if self.enabled:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


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
