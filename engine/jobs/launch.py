"""Starting jobs: a detached `python -m engine <verb> ... --out DIR` process per job, and the
run configs, evaluation requests and demo it starts from."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from ..errors import UserError
from ..io import ASSETS, ROOT, atomic_write_json, check_out_dir
from .control import delete
from .status import (ACTIVE, DEMO, RUN_NAME, Status, _read, _write, append_file, corpora_root, evals_root, mark, now,
                     read_status, run_model, run_roots, runs_root)

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
    err = append_file(out / "stderr.txt")
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
    from ..config import RunConfig, run_config

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


def config_from_bytes(data: bytes, name: str, base_dir: str | os.PathLike = ASSETS, gate=None):
    """An uploaded YAML / JSON config, validated; its relative paths resolve against base_dir
    (assets/ by default, where the demo config's files are). gate(path, field): the browser's rule
    (engine.boundary.browser_path), applied to every path before anything looks at the file."""
    from ..config import run_config
    from ..io import parse_json, parse_yaml

    if len(data) > 1 << 20:
        raise UserError(f"{name} is over 1 MiB: not a run config")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{name} is not UTF-8 text") from None
    parsed = parse_json(text, name) if name.lower().endswith(".json") else parse_yaml(text, name)
    return run_config(parsed or {}, base_dir, gate)


# -- the demo adapters --------------------------------------------------------------------------------
def demo_config(model: str = "embedded", overrides: dict | None = None):
    """assets/demo.yaml for `model` (its adapters are that model's), with dotted overrides."""
    from ..config import load_config, with_overrides

    return with_overrides(load_config(ASSETS / "demo.yaml"), {"model.name": model, **(overrides or {})})


def demo_name(model: str) -> str:
    """The demo run's directory name for a model: `demo` for the embedded one, `demo-<name>-<hash>`
    for any other, so that building one model's demo never touches another's."""
    if model == "embedded":
        return DEMO
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or "model").strip("-.")[:40] or "model"
    return f"{DEMO}-{slug}-{hashlib.sha1(model.encode()).hexdigest()[:6]}"


def is_demo(run_dir: str | os.PathLike) -> bool:
    name = Path(run_dir).name
    return name == DEMO or name.startswith(f"{DEMO}-")


def find_demo(model: str = "embedded") -> Status | None:
    """The demo run of this model (OBLIVIATE_HOME/runs/<demo_name>, ./runs/demo from `make demo`, or
    the `demo` of earlier versions), finished ones first; None when there is none."""
    found = []
    for root in run_roots():
        for d in dict.fromkeys((root / demo_name(model), root / DEMO)):
            if (d / "status.json").is_file() and run_model(d) == model:
                found.append(read_status(d))
    found.sort(key=lambda s: (s.state != "finished", not s.active))
    return found[0] if found else None


def launch_demo(model: str = "embedded", overrides: dict | None = None) -> Status:
    """Build the demo's expert and unlearned adapters once, as a normal run job into
    OBLIVIATE_HOME/runs/<demo_name(model)>; an existing demo of the model (running or finished) is
    returned as is, a failed or cancelled one of the same model is started again. Another model's
    demo is never replaced."""
    existing = find_demo(model)
    if existing and (existing.active or existing.state == "finished"):
        return existing
    out = runs_root() / demo_name(model)
    if (out / "status.json").exists():
        if read_status(out).active:
            raise UserError(f"{out} is running a demo: wait for it, or cancel it on the Runs page")
        if run_model(out) not in ("", model):
            raise UserError(f"{out} holds the demo of {run_model(out)!r}: delete it on the Runs page first")
        delete(out)
    return launch_run(demo_config(model, overrides), out)


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
    if (out / "eval.json").exists() or read_status(out).state is not None:
        raise UserError(f"{out} already holds an evaluation: choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "request.json", request.model_dump(mode="json"))
    return launch(["eval", "--request", str(out / "request.json")], out, kind="eval", env=env)


def launch_corpus(anchors: str | os.PathLike, model, expert: str | None = None, settings: dict | None = None,
                  out: str | os.PathLike | None = None) -> Status:
    """Start `python -m engine corpus generate` detached (engine/corpus.py): a forget corpus sampled from
    `model` (a ModelConfig) and the expert, about the dictionary's terms, into OUT/corpus.txt (default
    OBLIVIATE_HOME/corpora/<time>). settings: the verb's flags by their names (prompts, samples, tokens,
    temperature, min_rise, max_chars, seed)."""
    out = Path(out) if out else corpora_root() / datetime.now().strftime("%Y%m%d-%H%M%S")
    check_out_dir(out, "corpus directory")
    if (out / "corpus.txt").exists() or read_status(out).state is not None:
        raise UserError(f"{out} already holds a corpus job: choose another directory")
    args = ["corpus", "generate", "--anchors", str(anchors), "--model", model.name, "--precision", model.precision,
            "--device", model.device]
    if expert:
        args += ["--expert", str(expert)]
    for key, value in (settings or {}).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return launch(args, out, kind="corpus")


def list_corpora() -> list[Status]:
    """Every corpus job under OBLIVIATE_HOME/corpora, newest first."""
    from .status import list_jobs

    return list_jobs(corpora_root(), kind="corpus")
