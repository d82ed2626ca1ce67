"""The job-directory layout and the status record: where jobs live, how each of their files reads.

    DIR/status.json    Status: state (queued / running / finished / failed / cancelled), phase, step,
                       total, ETA, error, pid...; written atomically, read back as a safe record
        metrics.jsonl  one JSON object per logged step          log.txt   progress lines
        stderr.txt     the process's own output                 stop      present = please stop
        .obliviate-job the mark that makes DIR deletable by `runs delete`
    a run:  config.json, adapters/<expert|unlearned>/, checkpoints/, labels.json  (engine/pipeline.py)
    an evaluation:  request.json (what to evaluate), eval.json (the result)       (engine/evaluation/)
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from ..io import ROOT, atomic_write_json, obliviate_home
from ..legacy import phase_name, summary_of

ACTIVE = ("queued", "running")
INTERRUPTED = "failed (interrupted)"
STATES = (*ACTIVE, "finished", "failed", "cancelled", INTERRUPTED)
MARK = ".obliviate-job"  # written into every job directory: `delete` removes nothing without it
MAX_STATUS_BYTES = 4 << 20
DEMO = "demo"  # OBLIVIATE_HOME/runs/demo: the demo config's adapters, built once (launch_demo)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- the status record ------------------------------------------------------------------------------
@dataclass
class Status:
    """A job's status.json as a typed, safe record: a field of the wrong type is dropped, never trusted."""

    dir: str = ""
    state: str | None = None  # None: no status.json yet; "unreadable": not a JSON object of sane size
    kind: str | None = None  # run | eval
    method: str | None = None
    phase: str = ""
    phase_step: int = 0
    phase_total: int = 0
    step: int = 0  # over all phases
    total: int = 0
    eta_s: float | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    memory_mib: float | None = None
    error: str | None = None
    created: str = ""
    updated: str = ""
    started: str | None = None
    finished: str | None = None
    host: str | None = None
    pid: int | None = None
    world_size: int = 1
    done_phases: list[str] = field(default_factory=list)
    phases: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def name(self) -> str:
        return Path(self.dir).name

    @classmethod
    def from_dict(cls, raw, dir: str = "") -> "Status":
        if not isinstance(raw, dict):
            return cls(dir=dir, state="unreadable", error="status.json is not a JSON object")
        kw: dict = {"dir": dir}
        for f in fields(cls):
            v = raw.get(f.name)
            want = {"int": int, "float": float, "str": str, "list[str]": list, "dict": dict}.get(
                str(f.type).split(" | ")[0])
            if v is None or want is None or isinstance(v, bool):
                continue
            if want is float and isinstance(v, (int, float)) and math.isfinite(v):
                kw[f.name] = float(v)
            elif want is list and isinstance(v, list):
                kw[f.name] = [x for x in v if isinstance(x, str)]
            elif isinstance(v, want):
                kw[f.name] = v
        if kw.get("pid") is not None and kw["pid"] <= 0:
            del kw["pid"]  # 0 or -1 would signal a process group, or every process the user may signal
        if kw.get("state") is not None and kw["state"] not in STATES:
            kw["state"] = "unreadable"
        kw["dir"] = dir
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


def _read(out: Path) -> Status:
    """status.json as a safe record (state None when there is none)."""
    path = Path(out) / "status.json"
    try:
        if path.stat().st_size > MAX_STATUS_BYTES:
            return Status(dir=str(out), state="unreadable", error="status.json is too large")
        raw = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return Status(dir=str(out))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return Status(dir=str(out), state="unreadable", error="status.json is not valid JSON")
    return Status.from_dict(raw, str(out))


def _write(out: Path, status: Status) -> None:
    atomic_write_json(Path(out) / "status.json", status.to_dict())


def pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (a finished child its launcher has not reaped yet)."""
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


def read_status(out: str | os.PathLike) -> Status:
    """The job's Status, with a dead process's active job turned into 'failed (interrupted)' (persisted)."""
    out = Path(out)
    status = _read(out)
    if status.active and status.host in (None, socket.gethostname()) and not pid_alive(status.pid):
        # A launch writes 'queued' just before the child exists; give it a moment.
        if status.pid is None and time.time() - (out / "status.json").stat().st_mtime < 10:
            return status
        if (out / "stop").exists():  # asked to stop, and it did (perhaps before it could say so)
            status.state, status.finished = "cancelled", now()
            (out / "stop").unlink(missing_ok=True)
        else:
            status.state, status.finished = INTERRUPTED, now()
            status.error = status.error or "the process died (killed or machine restarted)"
        _write(out, status)
    return status


# -- where jobs live ----------------------------------------------------------------------------------
def runs_root() -> Path:
    return obliviate_home() / "runs"


def evals_root() -> Path:
    return obliviate_home() / "evals"


def run_roots() -> list[Path]:
    """Where run directories live: OBLIVIATE_HOME/runs and ./runs of the checkout (`make demo`)."""
    return list(dict.fromkeys(r.resolve() for r in (runs_root(), ROOT / "runs") if r.is_dir()))


def job_roots() -> list[Path]:
    """Where jobs live: OBLIVIATE_HOME/runs, OBLIVIATE_HOME/evals and ./runs of the checkout."""
    return [runs_root().resolve(), evals_root().resolve(), (ROOT / "runs").resolve()]


def list_jobs(root: str | os.PathLike | None = None, kind: str | None = None) -> list[Status]:
    """Status of every job directory under root (default OBLIVIATE_HOME/runs), newest first."""
    root = Path(root) if root else runs_root()
    if not root.is_dir():
        return []
    out = [read_status(d) for d in root.iterdir() if (d / "status.json").is_file()]
    return sorted((s for s in out if kind is None or s.kind == kind), key=lambda s: s.created, reverse=True)


def list_runs() -> list[Status]:
    """Every run under the run roots, newest first."""
    return sorted((s for root in run_roots() for s in list_jobs(root, "run")), key=lambda s: s.created, reverse=True)


def list_evals() -> list[Status]:
    """Every evaluation under OBLIVIATE_HOME/evals, newest first."""
    return list_jobs(evals_root(), "eval")


def read_metrics(out: str | os.PathLike) -> list[dict]:
    """metrics.jsonl rows, the legacy phase names of older runs renamed ("gradient_ascent" -> "unlearn")."""
    rows = []
    try:
        with open(Path(out) / "metrics.jsonl") as f:
            for line in f:
                with contextlib.suppress(json.JSONDecodeError):  # a line being written right now
                    row = json.loads(line)
                    if isinstance(row, dict):
                        row["phase"] = phase_name(str(row.get("phase", "")))
                        rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def read_log(out: str | os.PathLike, lines: int = 200) -> str:
    try:
        return "\n".join(Path(out, "log.txt").read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def read_json(out: str | os.PathLike, name: str) -> dict | None:
    """A job's own JSON file (config.json, request.json, eval.json, labels.json), or None."""
    try:
        data = json.loads(Path(out, name).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_eval(out: str | os.PathLike) -> dict | None:
    """A finished evaluation's result (eval.json), or None."""
    return read_json(out, "eval.json")


def run_method(out: str | os.PathLike) -> str:
    """The method of a run directory ('' when its config is unreadable)."""
    cfg = read_json(out, "config.json") or {}
    return cfg.get("method", "") if isinstance(cfg.get("method", ""), str) else ""


def run_model(out: str | os.PathLike) -> str:
    """The model name in a run's config ('' when unreadable)."""
    model = (read_json(out, "config.json") or {}).get("model")
    name = model.get("name") if isinstance(model, dict) else model
    return name if isinstance(name, str) else ""


def run_adapters(out: str | os.PathLike) -> dict[str, str]:
    """The adapters a run saved: {"expert": dir, "unlearned": dir} as far as they exist."""
    found = {}
    for kind in ("expert", "unlearned"):
        d = Path(out) / "adapters" / kind
        if (d / "adapter_config.json").exists() or (d / "config.json").exists():
            found[kind] = str(d)
    return found


def unlearn_change(status: Status) -> dict:
    """Familiarity before and after the unlearning phase of a run, from its summary (empty if none)."""
    s = status.summary or {}
    before = summary_of(s, "unlearn_before") or {}
    after = summary_of(s, "unlearn_after") or {}
    return {"before": before, "after": after} if isinstance(before, dict) and isinstance(after, dict) else {}


def eta_s(status: Status) -> float | None:
    """Seconds left: the job's own estimate (runs), else elapsed / done x left (evaluations)."""
    if not status.active or not status.total:
        return None
    if status.eta_s is not None:
        return status.eta_s
    if not status.started or status.step <= 0:
        return None
    try:
        started = datetime.fromisoformat(status.started)
    except ValueError:
        return None
    elapsed = (datetime.now(timezone.utc) - started).total_seconds()
    return max(elapsed / status.step * (status.total - status.step), 0.0)


# -- launching and controlling -------------------------------------------------------------------------
def mark(out: Path) -> None:
    if not (out / MARK).exists():
        (out / MARK).write_text("made by Obliviate's engine: a job directory `runs delete` may remove\n")


def is_job_dir(out: str | os.PathLike) -> bool:
    """A directory this engine made: it holds the job mark (jobs made before the mark existed count
    when their status names a known kind and they sit under a job root)."""
    out = Path(out)
    if (out / MARK).is_file():
        return True
    under_root = any(out.resolve().is_relative_to(r) for r in job_roots())
    return under_root and _read(out).kind in ("run", "eval")
