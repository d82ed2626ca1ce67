"""The duration estimate (engine/estimate.py) next to the measured wall time, in the same process.

    .venv/bin/python bench/estimate_error.py [--model embedded] [--reinforce 4] [--unlearn 6] [--blocks 12]

Runs a shortened demo config (assets/demo.yaml with fewer steps and blocks) as the Runs page does,
`python -m engine run CONFIG --out DIR`, then `python -m engine eval --request FILE --out DIR` on
its two adapters, and prints per phase / in total: estimated s, measured s and measured / estimated.
Phase times come from the job's own log (one-second stamps). The load average is printed too: on a
shared CPU every figure stretches by it. The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from engine.config import ModelConfig, load_config, with_overrides
from engine.estimate import estimate_eval, estimate_run
from engine.evaluation import EvalRequest, EvalSettings
from engine.io import ASSETS, atomic_write_json

ROOT = Path(__file__).resolve().parents[1]


def _job(args: list[str], out: Path, env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "engine", *args, "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"job failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def _stamps(log: Path) -> list[tuple[float, str]]:
    out = []
    for line in log.read_text().splitlines():
        stamp, _, text = line.partition(" ")
        try:
            t = datetime.strptime(stamp, "%H:%M:%S")
        except ValueError:
            continue
        out.append((t.hour * 3600 + t.minute * 60 + t.second, text))
    return out


def phase_seconds(log: Path) -> dict[str, float]:
    """Per phase: from the previous phase's last log line (its first for the first phase) to its own
    last; load = job start to the first phase's first line (plus the interpreter's start, added by
    the caller). A phase such as labels logs only when it is done, so its start is the end of the
    one before."""
    stamps = _stamps(log)
    start = stamps[0][0]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for t, text in stamps:
        for phase in ("reinforce", "labels", "unlearn"):
            if text.startswith(phase):
                first.setdefault(phase, t)
                last[phase] = t
    order = sorted(last, key=last.get)
    out = {"load": first[order[0]] - start if order else stamps[-1][0] - start}
    prev = first[order[0]] if order else start
    for phase in order:
        out[phase] = last[phase] - prev
        prev = last[phase]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--reinforce", type=int, default=4)
    ap.add_argument("--unlearn", type=int, default=6)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--passages", type=int, default=4)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="obliviate-estimate-"))
    env = {**os.environ, "OBLIVIATE_HOME": str(home)}
    load0 = os.getloadavg()[0]

    cfg = with_overrides(load_config(ASSETS / "demo.yaml"), {
        "model.name": args.model, "reinforce.steps": args.reinforce, "unlearn.steps": args.unlearn,
        "data.max_blocks": args.blocks, "probe_every": max(1, args.unlearn // 2)})
    run = home / "run"
    run.mkdir()
    atomic_write_json(run / "config.json", cfg.to_dict())
    est = estimate_run(cfg)
    wall = _job(["run", str(run / "config.json")], run, env)
    measured = phase_seconds(run / "log.txt")
    measured["load"] += wall - sum(measured.values())  # the interpreter and imports before the first log line
    measured["total"] = wall
    rows = [("run · " + k, est.parts.get(k, est.seconds if k == "total" else 0.0), v) for k, v in measured.items()]

    request = EvalRequest.make(model=ModelConfig(args.model), adapters={
        "expert": str(run / "adapters" / "expert"), "unlearned": str(run / "adapters" / "unlearned")},
        settings=EvalSettings.make(verbatim_passages=args.passages, max_new_tokens=10))
    ev = home / "eval"
    ev.mkdir()
    atomic_write_json(ev / "request.json", request.model_dump(mode="json"))
    e_est = estimate_eval(request)
    e_wall = _job(["eval", "--request", str(ev / "request.json")], ev, env)
    rows.append(("eval · total", e_est.seconds, e_wall))

    load1 = os.getloadavg()[0]
    print(f"{'':22s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s}")
    for name, e, m in rows:
        print(f"{name:22s} {e:9.1f} {m:9.1f} {m / e if e else float('nan'):6.2f}")
    print(f"load average (1 min) before {load0:.1f}, after {load1:.1f}; {os.cpu_count()} CPUs")
    print(json.dumps({"rows": [{"part": n, "estimate_s": round(e, 1), "measured_s": round(m, 1),
                                "ratio": round(m / e, 2) if e else None} for n, e, m in rows],
                      "load_before": round(load0, 2), "load_after": round(load1, 2)}))


if __name__ == "__main__":
    main()
