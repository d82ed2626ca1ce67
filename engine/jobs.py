"""Jobs: long work as a detached `python -m engine <verb> ... --out DIR` process, seen through DIR.

This module owns the job-directory layout; pages and the CLI list, launch, follow and read jobs
through it and never open a job file themselves.

    DIR/status.json    Status: state (queued / running / finished / failed / cancelled), phase, step,
                       total, ETA, error, pid...; written atomically, read back as a safe record
        metrics.jsonl  one JSON object per logged step          log.txt   progress lines
        stderr.txt     the process's own output                 stop      present = please stop
        .obliviate-job the mark that makes DIR deletable by `runs delete`
    a run:  config.json, adapters/<expert|unlearned>/, checkpoints/, labels.json  (engine/pipeline.py)
    an evaluation:  request.json (what to evaluate), eval.json (the result)       (engine/evaluation/)

One job runs at a time per OBLIVIATE_HOME: `queue_slot` holds an exclusive file lock for the job's
life, later jobs wait in state "queued". This module imports neither torch nor streamlit.
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
import re
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from .errors import UserError
from .legacy import phase_name, summary_of
from .io import ASSETS, ROOT, atomic_write_json, check_out_dir, obliviate_home
from .secrets import scrub

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


def run_method(out: str | os.PathLike) -> str:
    """The method of a run directory ('' when its config is unreadable)."""
    cfg = read_json(out, "config.json") or {}
    return cfg.get("method", "") if isinstance(cfg.get("method", ""), str) else ""


def run_adapters(out: str | os.PathLike) -> dict[str, str]:
    """The adapters a run saved: {"expert": dir, "unlearned": dir} as far as they exist."""
    found = {}
    for kind in ("expert", "unlearned"):
        d = Path(out) / "adapters" / kind
        if (d / "adapter_config.json").exists() or (d / "config.json").exists():
            found[kind] = str(d)
    return found


def headline(status: Status) -> dict:
    """Familiarity before and after the unlearning phase of a run, from its summary (empty if none)."""
    s = status.summary or {}
    before = summary_of(s, "unlearn_before") or {}
    after = summary_of(s, "unlearn_after") or {}
    return {"before": before, "after": after} if isinstance(before, dict) and isinstance(after, dict) else {}


# -- launching and controlling -------------------------------------------------------------------------
def mark(out: Path) -> None:
    if not (out / MARK).exists():
        (out / MARK).write_text("made by Obliviate's engine: a job directory `runs delete` may remove\n")


def launch(args: list[str], out: str | os.PathLike, kind: str, env: dict | None = None) -> Status:
    """Start `python -m engine *args --out OUT` detached (own session: survives the UI's reruns).

    Returns the initial status. Refuses an OUT that holds an active job.
    """
    out = check_out_dir(out, "job directory").resolve()
    old = read_status(out) if (out / "status.json").exists() else Status(dir=str(out))
    if old.active:
        raise UserError(f"{out} already has an active job")
    out.mkdir(parents=True, exist_ok=True)
    mark(out)
    (out / "stop").unlink(missing_ok=True)
    status = Status(**{**old.to_dict(), "dir": str(out), "state": "queued", "kind": kind, "args": list(args),
                       "created": old.created or now(), "updated": now(), "host": socket.gethostname(),
                       "pid": None, "phase": "queued", "error": None})
    _write(out, status)
    err = open(out / "stderr.txt", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args, "--out", str(out)], cwd=ROOT, stdout=err, stderr=err,
        stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **(env or {})})
    err.close()
    # The launcher (a Streamlit server, for hours) must wait() for its child, or every finished job
    # stays a zombie in the process table: one daemon thread per job waits for it.
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
    current = _read(out)
    if current.state in ACTIVE:
        current.pid = current.pid or proc.pid
        _write(out, current)
    status.pid = proc.pid
    return status


def run_dir(name: str | None, method: str) -> Path:
    """OBLIVIATE_HOME/runs/<name>, or <time>-<method> without a name; a name is letters, digits, . _ -."""
    if not name or not name.strip():
        return runs_root() / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}"
    name = name.strip()
    if not RUN_NAME.match(name):
        raise UserError(f"run name {name!r}: use letters, digits, '.', '_' and '-' (at most 80, no leading dot)")
    if (runs_root() / name).exists():
        raise UserError(f"a run called {name!r} already exists: pick another name")
    return runs_root() / name


def launch_run(config, out: str | os.PathLike | None = None, name: str | None = None) -> Status:
    """Validate a run config (a RunConfig or a dict), write RUN_DIR/config.json and start
    `python -m engine run` detached (queued behind a running job). RUN_DIR: `out`, else
    OBLIVIATE_HOME/runs/<name> (else <time>-<method>)."""
    from .config import RunConfig, run_config

    cfg = config if isinstance(config, RunConfig) else run_config(config)
    out = Path(out) if out else run_dir(name, cfg.method)
    check_out_dir(out, "run directory")
    if (out / "status.json").exists():
        raise UserError(f"{out} already holds a run")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", cfg.to_dict())
    return launch(["run", str(out / "config.json")], out, kind="run")


def run_command(config_path: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
    """The shell command that runs a config as the Runs page does (copy, paste, same run)."""
    import shlex

    tail = f" --out {shlex.quote(str(out))}" if out else ""
    return f"python -m engine run {shlex.quote(str(config_path))}{tail}"


def config_yaml(cfg) -> str:
    """A run config as the YAML file `python -m engine run` reads (every field, paths absolute)."""
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True, width=100)


def config_from_bytes(data: bytes, name: str, base_dir: str | os.PathLike = ASSETS):
    """An uploaded YAML / JSON config, validated; its relative paths resolve against base_dir
    (assets/ by default, where the demo config's files are)."""
    from .config import run_config
    from .io import parse_json, parse_yaml

    if len(data) > 1 << 20:
        raise UserError(f"{name} is over 1 MiB: not a run config")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{name} is not UTF-8 text") from None
    parsed = parse_json(text, name) if name.lower().endswith(".json") else parse_yaml(text, name)
    return run_config(parsed or {}, base_dir)


def run_model(out: str | os.PathLike) -> str:
    """The model name in a run's config ('' when unreadable)."""
    model = (read_json(out, "config.json") or {}).get("model")
    name = model.get("name") if isinstance(model, dict) else model
    return name if isinstance(name, str) else ""


# -- the demo adapters --------------------------------------------------------------------------------
def demo_config(model: str = "embedded", overrides: dict | None = None):
    """assets/demo.yaml for `model` (its adapters are that model's), with dotted overrides."""
    from .config import load_config, with_overrides

    return with_overrides(load_config(ASSETS / "demo.yaml"), {"model.name": model, **(overrides or {})})


def find_demo(model: str = "embedded") -> Status | None:
    """The demo run of this model (OBLIVIATE_HOME/runs/demo or ./runs/demo from `make demo`),
    finished ones first; None when there is none."""
    found = []
    for root in run_roots():
        d = root / DEMO
        if (d / "status.json").is_file() and run_model(d) == model:
            found.append(read_status(d))
    found.sort(key=lambda s: (s.state != "finished", not s.active))
    return found[0] if found else None


def launch_demo(model: str = "embedded", overrides: dict | None = None) -> Status:
    """Build the demo's expert and unlearned adapters once, as a normal run job into
    OBLIVIATE_HOME/runs/demo; an existing demo of the model (running or finished) is returned as is,
    a failed or cancelled one is started again."""
    existing = find_demo(model)
    if existing and (existing.active or existing.state == "finished"):
        return existing
    out = runs_root() / DEMO
    if (out / "status.json").exists():
        if read_status(out).active:
            raise UserError(f"{out} is running a demo for another model: wait for it, or cancel it on the Runs page")
        delete(out)
    return launch_run(demo_config(model, overrides), out)


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


def resume_run(out: str | os.PathLike) -> Status:
    status = read_status(out)
    if status.active:
        raise UserError(f"{out} is still {status.state}")
    if status.state == "finished":
        raise UserError(f"{out} already finished")
    return launch(["run", "--resume"], out, kind="run")


def launch_eval(request, out: str | os.PathLike | None = None, env: dict | None = None) -> Status:
    """Write an evaluation request (engine.evaluation.EvalRequest) as DIR/request.json and start
    `python -m engine eval --request DIR/request.json --out DIR` detached. env: extra environment
    for the job (a judge key from a page's key field: never in a file or on a command line)."""
    out = Path(out) if out else evals_root() / datetime.now().strftime("%Y%m%d-%H%M%S")
    check_out_dir(out, "evaluation directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "request.json", request.model_dump(mode="json"))
    return launch(["eval", "--request", str(out / "request.json")], out, kind="eval", env=env)


def read_eval(out: str | os.PathLike) -> dict | None:
    """A finished evaluation's result (eval.json), or None."""
    return read_json(out, "eval.json")


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


def is_job_dir(out: str | os.PathLike) -> bool:
    """A directory this engine made: it holds the job mark (jobs made before the mark existed count
    when their status names a known kind and they sit under a job root)."""
    out = Path(out)
    if (out / MARK).is_file():
        return True
    under_root = any(out.resolve().is_relative_to(r) for r in job_roots())
    return under_root and _read(out).kind in ("run", "eval")


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
            with open(self.out / "log.txt", "a") as f:
                f.write(line + "\n")

    def metric(self, row: dict) -> None:
        if self.enabled:
            from .io import dumps

            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(dumps(row) + "\n")


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
