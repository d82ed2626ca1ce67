"""The forgetting benchmark (issue 5's quality target): the demo runs, then one evaluation of them all.

    whp         assets/demo.yaml as shipped: WHP with soft labels and a KL retain term
    whp-paper   the same run with the paper's recipe: hard labels, no retain term
    ga          assets/demo_ga.yaml: gradient ascent with the same KL retain term

Each run reuses the expert of the first (same corpus, same seed) and is skipped when its adapter
already exists under --out. Then `engine.evaluate` measures the baseline, the expert and every run
in one table, every figure next to the baseline measured in the same evaluation, and checks the
target: familiarity (probability) -80% or more, completion familiarity -70% or more, retain
probes and retain perplexity within 10%.

    .venv/bin/python bench/forgetting.py [--out runs/bench-forgetting] [--relearn-steps 10]

Writes OUT/eval.json, OUT/table.md (the README's table) and docs/forgetting.png (familiarity vs
utility, the README's plot; needs kaleido and a Chromium, skipped with a note otherwise).
The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from engine.config import load_config, with_overrides
from engine.evaluation import EvalInputs, EvalSettings, evaluate
from engine.anchors import load_anchors
from engine.io import ASSETS, ROOT
from engine.models import Workbench
from engine.pipeline import execute
from engine.probes import load_probes

TARGETS = {  # metric: (limit on the relative change vs the baseline, "fall" or "hold")
    "familiarity_probability": (-0.80, "fall"),
    "familiarity_completion": (-0.70, "fall"),
    "retain_probability": (0.10, "hold"),
    "retain_perplexity": (0.10, "hold"),
}


def run(name: str, config: Path, out: Path, **over) -> Path:
    """Execute one run into out/name unless its unlearned adapter is already there."""
    run_dir = out / name
    if (run_dir / "adapters" / "unlearned" / "adapter_config.json").exists():
        print(f"{name}: reusing {run_dir}", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = with_overrides(load_config(config), over)  # validated again, overrides included
    t0 = time.time()
    status = execute(cfg, run_dir, queue=False)
    if status.state != "finished":
        raise SystemExit(f"{name}: {status.state}: {status.error}")
    print(f"{name}: finished in {time.time() - t0:.0f} s", flush=True)
    return run_dir


def change(value, base):
    return None if value is None or not base else value / base - 1


def table(result: dict) -> str:
    models = result["models"]
    base = models["baseline"]
    rows = [("familiarity (probability)", "familiarity_probability", 3),
            ("familiarity (completion)", "familiarity_completion", 3),
            ("verbatim ROUGE-L", "verbatim_rougeL", 3),
            ("retain probes", "retain_probability", 3),
            ("retain perplexity", "retain_perplexity", 1),
            ("familiarity, summary in context", "robust_summary", 3),
            ("familiarity, expert preamble", "robust_expert_preamble", 3),
            ("familiarity after relearning", "robust_relearn", 3)]
    names = list(models)
    out = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, digits in rows:
        if all(models[m].get(key) is None for m in names):
            continue
        cells = []
        for m in names:
            v = models[m].get(key)
            c = change(v, base.get(key))
            cells.append("—" if v is None else f"{v:.{digits}f}" + ("" if m == "baseline" or c is None else f" ({c:+.0%})"))
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def check(result: dict, name: str) -> dict:
    base, m = result["models"]["baseline"], result["models"][name]
    verdict = {}
    for key, (limit, kind) in TARGETS.items():
        c = change(m.get(key), base.get(key))
        verdict[key] = {"change": c, "ok": c is not None and (c <= limit if kind == "fall" else abs(c) <= limit)}
    return verdict


def plot(result: dict, path: Path) -> str | None:
    """Familiarity vs utility, one point per model (the paper's trade-off). Returns a note when skipped."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return "plot skipped: plotly missing"
    if not os.environ.get("BROWSER_PATH") and Path("/usr/bin/chromium").exists():
        os.environ["BROWSER_PATH"] = "/usr/bin/chromium"  # kaleido renders through a Chromium
    models = result["models"]
    base = models["baseline"]
    fig = go.Figure()
    # The quality target: familiarity down by 80% or more, retain probes within 10% of the baseline.
    fig.add_shape(type="rect", x0=0.9 * base["retain_probability"], x1=1.1 * base["retain_probability"],
                  y0=0, y1=0.2 * base["familiarity_probability"], fillcolor="seagreen", opacity=0.12, line_width=0)
    fig.add_annotation(x=base["retain_probability"], y=0.2 * base["familiarity_probability"], text="target",
                       showarrow=False, yshift=10, font=dict(color="seagreen"))
    for name, m in models.items():
        fig.add_trace(go.Scatter(x=[m["retain_probability"]], y=[m["familiarity_probability"]], name=name,
                                 mode="markers+text", text=[name], textposition="top center",
                                 marker=dict(size=14)))
    fig.update_layout(title=f"Forgetting vs keeping on {result['model']} (demo corpus)",
                      xaxis_title="retain-probe probability (keep: higher is better)",
                      yaxis_title="familiarity probability (forget: lower is better)",
                      showlegend=False, template="plotly_white", width=760, height=480)
    try:
        fig.write_image(str(path), scale=2)
    except Exception as e:  # noqa: BLE001 - kaleido or its browser missing: the numbers still stand
        return f"plot skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-forgetting"))
    ap.add_argument("--relearn-steps", type=int, default=10)
    ap.add_argument("--plot", default=str(ROOT / "docs" / "forgetting.png"))
    ap.add_argument("--from-eval", action="store_true", help="redraw the table and plot from OUT/eval.json only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_eval:
        result = json.loads((out / "eval.json").read_text())
        print(table(result))
        print(plot(result, Path(args.plot)) or f"plot: {args.plot}")
        return

    t0 = time.time()
    whp = run("whp", ASSETS / "demo.yaml", out)
    expert = str(whp / "adapters" / "expert")
    runs = {"whp": whp,
            "whp-paper": run("whp-paper", ASSETS / "demo.yaml", out,
                             **{"whp.expert": expert, "whp.labels": "hard", "retain.text": None}),
            "ga": run("ga", ASSETS / "demo_ga.yaml", out)}
    train_s = time.time() - t0

    wb = Workbench.load()
    adapters = {"expert": expert, **{n: str(d / "adapters" / "unlearned") for n, d in runs.items()}}
    t1 = time.time()
    inputs = EvalInputs(load_probes(ASSETS / "probes.json"), (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8"),
                        (ASSETS / "retain.txt").read_text(encoding="utf-8"), load_anchors(ASSETS / "demo_anchors.json"))
    result = evaluate(wb, adapters, inputs, EvalSettings(relearn_steps=args.relearn_steps))
    eval_s = time.time() - t1
    (out / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    md = table(result)
    (out / "table.md").write_text(md + "\n")
    print(md)
    note = plot(result, Path(args.plot))
    print(note or f"plot: {args.plot}")
    verdicts = {n: check(result, n) for n in runs}
    for n, v in verdicts.items():
        print(f"{n:10s} " + "  ".join(f"{k} {x['change']:+.0%} {'ok' if x['ok'] else 'MISSED'}"
                                      if x["change"] is not None else f"{k} n/a" for k, x in v.items()))
    print(json.dumps({"train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "verdicts": verdicts,
                      "models": result["models"]}))


if __name__ == "__main__":
    main()
