"""The job-directory layout and the status record: where jobs live, how each of their files reads.

    DIR/status.json    Status: state (queued / running / finished / failed / cancelled), phase, step,
                       total, ETA, error, pid...; written atomically, read back as a safe record
        metrics.jsonl  one JSON object per logged step          log.txt   progress lines
        stderr.txt     the process's own output                 stop      present = please stop
        .obliviate-job the mark that makes DIR deletable by `runs delete`
    a run:  config.json, adapters/<expert|unlearned>/, checkpoints/, labels.json  (engine/pipeline.py)
    an evaluation:  request.json (what to evaluate), eval.json (the result)       (engine/evaluation/)

Every one of them is read through `job_file`: a name whose real path leaves the job directory (a
copied run's log.txt linked to /etc/shadow), anything but a regular file (a FIFO would hang the
page) and anything over its size bound is "unreadable", never followed; the readers below turn
what is left into typed records, so one garbage file cannot break a page.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..io import ROOT, atomic_write_json, atomic_write_text, obliviate_home, parse_json
from ..legacy import phase_name, summary_of

ACTIVE = ("queued", "running")
INTERRUPTED = "failed (interrupted)"
STATES = (*ACTIVE, "finished", "failed", "cancelled", INTERRUPTED)
MARK = ".obliviate-job"  # written into every job directory: `delete` removes nothing without it
MAX_STATUS_BYTES = 4 << 20
PID_MAX = 1 << 22  # Linux's largest pid_max
MAX_JOB_JSON_BYTES = 64 << 20  # eval.json of a big evaluation (examples) stays far below
MAX_METRICS_BYTES = 64 << 20
LOG_TAIL_BYTES = 1 << 20  # a page shows the last lines of a log: read at most its last MiB
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
        if kw.get("pid") is not None and not 0 < kw["pid"] < PID_MAX:
            del kw["pid"]  # 0 or -1 would signal a process group, or every process; 10**20 overflows os.kill
        if kw.get("state") is not None and kw["state"] not in STATES:
            kw["state"] = "unreadable"
        kw["dir"] = dir
        return cls(**kw)

    def to_dict(self) -> dict:
        return asdict(self)


class Unreadable(Exception):
    """A job file that is not one: outside the job directory, not a regular file, or too large."""


def job_file(out: str | os.PathLike, name: str, limit: int, tail: bool = False) -> bytes | None:
    """The bytes of DIR/name (None when it does not exist), read only when its real path stays inside
    DIR and it is a regular file of at most `limit` bytes (tail=True: its last `limit` bytes).
    Raises Unreadable otherwise."""
    base = Path(out).resolve()
    try:
        real = (Path(out) / name).resolve(strict=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError):  # a symlink loop
        raise Unreadable(f"{name} cannot be resolved") from None
    if not real.is_relative_to(base):
        raise Unreadable(f"{name} points outside the job directory")
    try:  # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Unreadable(f"{name}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(f"{name} is not a regular file")
        if info.st_size > limit:
            if not tail:
                raise Unreadable(f"{name} is larger than {limit >> 20} MiB")
            f.seek(info.st_size - limit)
        return f.read(limit)


def append_file(path: Path):
    """A job file opened for appending (binary), never through a link: a copied run's log.txt linked
    to /etc/... or a FIFO in its place is replaced by a fresh regular file."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IsADirectoryError(path)
    except OSError:
        path.unlink(missing_ok=True)
        fd = os.open(path, flags, 0o644)
    return os.fdopen(fd, "ab")


def _read(out: Path) -> Status:
    """status.json as a safe record (state None when there is none)."""
    try:
        data = job_file(out, "status.json", MAX_STATUS_BYTES)
        if data is None:
            return Status(dir=str(out))
        raw = json.loads(data.decode("utf-8"))
    except Unreadable as e:
        return Status(dir=str(out), state="unreadable", error=str(e))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return Status(dir=str(out), state="unreadable", error="status.json is not valid JSON")
    return Status.from_dict(raw, str(out))


def _write(out: Path, status: Status) -> None:
    atomic_write_json(Path(out) / "status.json", status.to_dict())


def pid_alive(pid: int | None) -> bool:
    """Alive and not a zombie (a finished child its launcher has not reaped yet)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < PID_MAX:
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


def corpora_root() -> Path:
    return obliviate_home() / "corpora"


def run_roots() -> list[Path]:
    """Where run directories live: OBLIVIATE_HOME/runs and ./runs of the checkout (`make demo`)."""
    return list(dict.fromkeys(r.resolve() for r in (runs_root(), ROOT / "runs") if r.is_dir()))


def job_roots() -> list[Path]:
    """Where jobs live: OBLIVIATE_HOME/runs, OBLIVIATE_HOME/evals, OBLIVIATE_HOME/corpora and ./runs."""
    return [runs_root().resolve(), evals_root().resolve(), corpora_root().resolve(), (ROOT / "runs").resolve()]


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


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metric_row(raw) -> dict | None:
    """One metrics.jsonl row as a typed record, or None: a non-negative int step, a phase name (legacy
    names renamed: "gradient_ascent" -> "unlearn"), finite numbers, and `probes` as
    {name: finite number}. Anything else in a row is dropped, never passed to a chart."""
    if not isinstance(raw, dict):
        return None
    step = raw.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 1 << 40:
        return None
    row = {"phase": phase_name(raw["phase"]) if isinstance(raw.get("phase"), str) else "", "step": step}
    for k, v in raw.items():
        if k in row or len(k) > 200:
            continue
        if _number(v):
            row[k] = v
        elif k == "probes" and isinstance(v, dict):
            row[k] = {n: p for n, p in v.items() if len(n) <= 500 and _number(p)}
    return row


def read_metrics(out: str | os.PathLike) -> list[dict]:
    """metrics.jsonl as typed rows (metric_row), one per (phase, step): a resumed run logs the steps
    after its last checkpoint again, and the later row is the one that counts. Unreadable: []."""
    try:
        data = job_file(out, "metrics.jsonl", MAX_METRICS_BYTES)
    except Unreadable:
        return []
    rows: dict[tuple[str, int], dict] = {}
    for line in (data or b"").decode("utf-8", errors="replace").splitlines():
        try:
            row = metric_row(json.loads(line))
        except (ValueError, RecursionError):  # a line being written right now, or garbage
            continue
        if row is not None:
            rows.pop((row["phase"], row["step"]), None)
            rows[(row["phase"], row["step"])] = row
    return list(rows.values())


def read_log(out: str | os.PathLike, lines: int = 200) -> str:
    """The last `lines` lines of DIR/log.txt ('' when there is none, a note when it is unreadable)."""
    try:
        data = job_file(out, "log.txt", LOG_TAIL_BYTES, tail=True)
    except Unreadable as e:
        return f"(log unreadable: {e})"
    return "\n".join((data or b"").decode("utf-8", errors="replace").splitlines()[-lines:])


def read_json(out: str | os.PathLike, name: str) -> dict | None:
    """A job's own JSON object (config.json, request.json, eval.json, labels.json), or None when it
    is missing or unreadable (job_file's rules, then strict JSON)."""
    try:
        data = job_file(out, name, MAX_JOB_JSON_BYTES)
        obj = parse_json(data.decode("utf-8"), name) if data is not None else None
    except (Unreadable, UserError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def cost_card(raw) -> dict | None:
    """A cost card (engine/cost.py: a run's summary["cost"], an evaluation's "cost") as a typed record,
    or None: device a string, numbers finite or None, parts {name: {wall_s, tokens, tokens_per_s}}."""
    if not isinstance(raw, dict):
        return None
    num = lambda v: v if _number(v) else None  # noqa: E731
    parts = raw.get("parts") if isinstance(raw.get("parts"), dict) else {}
    return {"device": raw["device"] if isinstance(raw.get("device"), str) else "?",
            "wall_s": num(raw.get("wall_s")), "peak_memory_mib": num(raw.get("peak_memory_mib")),
            "cuda_peak_mib": num(raw.get("cuda_peak_mib")),
            "parts": {str(n)[:64]: {k: num(p.get(k)) for k in ("wall_s", "tokens", "tokens_per_s")}
                      for n, p in list(parts.items())[:32] if isinstance(p, dict)}}


def read_eval(out: str | os.PathLike) -> dict | None:
    """A finished evaluation's result (eval.json) with the shape every page relies on: `models` a
    {name: {metric: value}} mapping, `model` a string, `notes` strings, `examples` and `settings`
    mappings, `seconds` a number; None when it has no models."""
    raw = read_json(out, "eval.json")
    if raw is None or not isinstance(raw.get("models"), dict):
        return None
    models = {n: m for n, m in raw["models"].items() if isinstance(m, dict)}
    if not models:
        return None
    typed = lambda key, kind, default: raw.get(key) if isinstance(raw.get(key), kind) else default  # noqa: E731
    return {**raw, "models": models, "model": typed("model", str, "?"),
            "notes": [n for n in typed("notes", list, []) if isinstance(n, str)],
            "examples": typed("examples", dict, {}), "settings": typed("settings", dict, {}),
            "seconds": raw["seconds"] if _number(raw.get("seconds")) else None, "cost": cost_card(raw.get("cost"))}


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
    """Seconds left: the job's own estimate (runs), else the pace up to the last progress report times
    what is left, less the time since that report (evaluations). It counts down while a long stage
    runs between reports; elapsed / done alone grew with every second the stage took."""
    if not status.active or not status.total:
        return None
    if status.eta_s is not None:
        return status.eta_s
    if not status.started or status.step <= 0:
        return None
    try:
        started = datetime.fromisoformat(status.started)
        reported = datetime.fromisoformat(status.updated) if status.updated else datetime.now(timezone.utc)
    except ValueError:
        return None
    pace = max((reported - started).total_seconds(), 0.0) / status.step
    since = max((datetime.now(timezone.utc) - reported).total_seconds(), 0.0)
    return max(pace * (status.total - status.step) - since, 0.0)


# -- launching and controlling -------------------------------------------------------------------------
def mark(out: Path) -> None:
    if not (out / MARK).is_file() or (out / MARK).is_symlink():  # atomic: replaces a link, never writes through it
        atomic_write_text(out / MARK, "made by Obliviate's engine: a job directory `runs delete` may remove\n")


def is_job_dir(out: str | os.PathLike) -> bool:
    """A directory this engine made: it holds the job mark (jobs made before the mark existed count
    when their status names a known kind and they sit under a job root)."""
    out = Path(out)
    if (out / MARK).is_file():
        return True
    under_root = any(out.resolve().is_relative_to(r) for r in job_roots())
    return under_root and _read(out).kind in ("run", "eval", "corpus")
