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
import math
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
from .secrets import scrub

ROOT = Path(__file__).resolve().parents[1]
ACTIVE = ("queued", "running")
INTERRUPTED = "failed (interrupted)"
STATES = (*ACTIVE, "finished", "failed", "cancelled", INTERRUPTED)
MARK = ".obliviate-job"  # written into every job directory: `delete` removes nothing without it
MAX_STATUS_BYTES = 4 << 20
# The fields a controller acts on, and the type each must have; anything else in status.json is
# passed through for display only. A field of the wrong type is dropped, never trusted.
_TYPED = {"state": str, "kind": str, "phase": str, "error": str, "created": str, "updated": str, "started": str,
          "finished": str, "host": str, "method": str, "dir": str, "pid": int, "step": int, "total": int,
          "phase_step": int, "phase_total": int, "world_size": int, "eta_s": float, "loss": float,
          "tokens_per_s": float, "memory_mib": float, "summary": dict, "done_phases": list, "phases": list,
          "args": list}
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
    mark(out)
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


def mark(out: Path) -> None:
    if not (out / MARK).exists():
        (out / MARK).write_text("made by Obliviate's engine: a job directory `runs delete` may remove\n")


def _read(out: Path) -> dict:
    """status.json as a safe record: {} when missing; a record with state 'unreadable' for anything
    that is not a JSON object of sane size; every controller field of the right type or absent."""
    path = Path(out) / "status.json"
    try:
        if path.stat().st_size > MAX_STATUS_BYTES:
            return {"state": "unreadable", "error": "status.json is too large"}
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {"state": "unreadable", "error": "status.json is not valid JSON"}
    if not isinstance(raw, dict):
        return {"state": "unreadable", "error": "status.json is not a JSON object"}
    out_: dict = {}
    for k, v in raw.items():
        want = _TYPED.get(k)
        if want is None:
            out_[k] = v
        elif want is float and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out_[k] = float(v)
        elif isinstance(v, want) and not isinstance(v, bool):
            out_[k] = v
    if "pid" in out_ and out_["pid"] <= 0:
        del out_["pid"]  # 0 or -1 would signal a process group or every process the user may signal
    if out_.get("state") is not None and out_["state"] not in STATES:
        out_["state"] = "unreadable"
    for k in ("done_phases", "phases", "args"):
        if k in out_:
            out_[k] = [x for x in out_[k] if isinstance(x, str)]
    return out_


def _merge(out: Path, fields: dict) -> None:
    status = _read(out)
    if status.get("state") in ACTIVE or "state" not in fields:
        atomic_write_json(out / "status.json", {**status, **fields})


def pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (a finished child the launcher has not reaped yet)."""
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # os.kill(0 or -1, ...) would reach a whole process group, or every process
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
    if pid_alive(pid) and is_job_process(pid, out):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    return status


def is_job_process(pid: int, out: str | os.PathLike) -> bool:
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


def job_roots() -> list[Path]:
    """Where jobs live: OBLIVIATE_HOME/runs, OBLIVIATE_HOME/evals and ./runs of the checkout."""
    return [runs_root().resolve(), (obliviate_home() / "evals").resolve(), (ROOT / "runs").resolve()]


def is_job_dir(out: str | os.PathLike) -> bool:
    """A directory this engine made: it holds the job mark (jobs made before the mark existed count
    when their status names a known kind and they sit under a job root)."""
    out = Path(out)
    if (out / MARK).is_file():
        return True
    under_root = any(out.resolve().is_relative_to(r) for r in job_roots())
    return under_root and _read(out).get("kind") in ("run", "eval")


def delete(out: str | os.PathLike, confirmed: bool = False) -> None:
    """Remove a finished job directory. Only this engine's job directories, and outside the job
    roots only when `confirmed` (`runs delete DIR --yes`)."""
    out = Path(out)
    if not out.is_dir() or not (out / "status.json").exists() or not is_job_dir(out):
        raise UserError(f"{out} is not an Obliviate job directory: nothing deleted")
    if not confirmed and not any(out.resolve().is_relative_to(r) for r in job_roots()):
        raise UserError(f"{out} is outside {', '.join(map(str, job_roots()))}: add --yes to delete it")
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
            mark(self.out)
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
        self.status(state="failed", error=scrub(error, limit=1000), finished=now())

    def cancelled(self, **fields) -> None:
        if self.enabled:
            self.stop_file.unlink(missing_ok=True)
        self.status(state="cancelled", finished=now(), **fields)

    def log(self, message: str) -> None:
        line = f"{datetime.now().strftime('%H:%M:%S')} {scrub(message, limit=2000)}"
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
