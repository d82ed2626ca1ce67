"""The forgetting benchmark: every method's demo run, then the same evaluations of them all.

    whp         assets/demo.yaml as shipped: WHP, soft labels, KL retain term
    whp-paper   the same run with the paper's recipe: hard labels, no retain term (the same expert)
    ga npo simnpo rmu undial elm    assets/demo_<method>.yaml: the same data, LoRA and retain text
    <best>+sam  the method that meets the quality target with the smallest relearning give-back
                (else the one that forgets most within the retain limits), again with SAM (--sam-rho)

Each run is skipped when its adapter already exists under --out. Then two evaluations, each with
the baseline measured in the same evaluation:
    shipped     assets/probes.json (the probes the demos were tuned on): familiarity, retain probes and
                perplexity, verbatim memorisation, the summary / preamble in context, 10 relearning steps
    held-out    assets/heldout_probes.json (written independently, never tuned on): the probability of
                the whole answer, completions naming a Harry Potter entity the prompt did not, and
                neighbouring-fiction questions (nats per answer)
and the quality target: familiarity (probability) -80% or more, retain probes and retain perplexity
within 10%, and less of the drop given back after relearning than WHP as shipped.

    .venv/bin/python bench/forgetting.py [--out runs/bench-forgetting] [--relearn-steps 10] [--sam-rho 0.05]

Writes OUT/eval.json, OUT/heldout.json, OUT/table.md (docs/results.md's tables) and docs/forgetting.png.
The last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from engine.anchors import load_anchors
from engine.config import load_config, with_overrides
from engine.evaluation import EvalInputs, EvalSettings, evaluate
from engine.io import ASSETS, ROOT
from engine.models import Workbench
from engine.pipeline import execute
from engine.probes import load_probes

METHOD_CONFIGS = {"ga": "demo_ga.yaml", "npo": "demo_npo.yaml", "simnpo": "demo_simnpo.yaml", "rmu": "demo_rmu.yaml",
                  "undial": "demo_undial.yaml", "elm": "demo_elm.yaml"}


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
    (run_dir / "seconds.txt").write_text(f"{time.time() - t0:.0f}\n")
    return run_dir


def change(value, base):
    return None if value is None or base in (None, 0) else value / base - 1


def give_back(m: dict, base: dict) -> float | None:
    """Share of the familiarity drop that 10 relearning steps give back: (relearned - m) / (baseline - m)."""
    if m.get("robust_relearn") is None or base["familiarity_probability"] - m["familiarity_probability"] < \
            0.1 * base["familiarity_probability"]:
        return None  # under a tenth of the familiarity gone: no drop to speak of, the ratio is noise
    return (m["robust_relearn"] - m["familiarity_probability"]) / (base["familiarity_probability"] -
                                                                   m["familiarity_probability"])


SHIPPED_ROWS = [("familiarity (probability)", "familiarity_probability", 3),
                ("familiarity (completion)", "familiarity_completion", 3),
                ("verbatim ROUGE-L", "verbatim_rougeL", 3),
                ("retain probes", "retain_probability", 3),
                ("retain perplexity", "retain_perplexity", 1),
                ("familiarity, summary in context", "robust_summary", 3),
                ("familiarity, expert preamble", "robust_expert_preamble", 3),
                ("familiarity after relearning", "robust_relearn", 3)]
HELDOUT_ROWS = [("held-out: P(whole answer)", "familiarity_probability_full", 4),
                ("held-out: completions naming HP", "familiarity_completion", 3),
                ("held-out: other fiction, nats/answer", "retain_answer_nll", 2)]


def cell(models: dict, name: str, key: str, digits: int) -> str:
    """One model's value, with its change against the baseline of the same evaluation (nats: a difference)."""
    v, base = models[name].get(key), models["baseline"].get(key)
    if v is None:
        return "—"
    text = f"{v:.{digits}f}"
    if name != "baseline" and base is not None:
        text += f" ({v - base:+.2f})" if key.endswith("_nll") else f" ({change(v, base):+.0%})" if base else ""
    return text


def markdown(shipped: dict, heldout: dict) -> str:
    """One row per model (docs/results.md's table): the shipped probes' metrics, the relearning give-back,
    then the held-out set's."""
    rows = [(r, shipped) for r in SHIPPED_ROWS if any(m.get(r[1]) is not None for m in shipped["models"].values())]
    held = [(r, heldout) for r in HELDOUT_ROWS if any(m.get(r[1]) is not None for m in heldout["models"].values())]
    head = [label for (label, _, _), _ in rows] + ["relearning gives back"] + [label for (label, _, _), _ in held]
    lines = ["| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    base = shipped["models"]["baseline"]
    for name in shipped["models"]:
        cells = [cell(res["models"], name, key, digits) for (_, key, digits), res in rows]
        g = give_back(shipped["models"][name], base)
        cells.append("—" if g is None or name == "baseline" else f"{g:.0%}")
        cells += [cell(res["models"], name, key, digits) if name in res["models"] else "—"
                  for (_, key, digits), res in held]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(shipped: dict, name: str, whp_back: float | None) -> dict:
    base, m = shipped["models"]["baseline"], shipped["models"][name]
    fam = change(m["familiarity_probability"], base["familiarity_probability"])
    ret = change(m["retain_probability"], base["retain_probability"])
    ppl = change(m["retain_perplexity"], base["retain_perplexity"])
    back = give_back(m, base)
    ok = fam <= -0.8 and abs(ret) <= 0.1 and abs(ppl) <= 0.1
    return {"familiarity": fam, "retain": ret, "perplexity": ppl, "gives_back": back, "meets_forget_keep": ok,
            "beats_whp_relearning": ok and back is not None and whp_back is not None and back < whp_back}


def plot(shipped: dict, path: Path) -> str | None:
    """Familiarity vs retain probes, one point per model, the target box shaded. A note when skipped."""
    try:
        import plotly.graph_objects as go
    except ImportError:
        return "plot skipped: plotly missing"
    if not os.environ.get("BROWSER_PATH") and Path("/usr/bin/chromium").exists():
        os.environ["BROWSER_PATH"] = "/usr/bin/chromium"  # kaleido renders through a Chromium
    models = shipped["models"]
    base = models["baseline"]
    fig = go.Figure()
    fig.add_shape(type="rect", x0=0.9 * base["retain_probability"], x1=1.1 * base["retain_probability"],
                  y0=0, y1=0.2 * base["familiarity_probability"], fillcolor="seagreen", opacity=0.12, line_width=0)
    fig.add_annotation(x=base["retain_probability"], y=0.2 * base["familiarity_probability"], text="target",
                       showarrow=False, yshift=10, font=dict(color="seagreen"))
    # A legend, not text labels: several methods land on the same point (whp and whp+sam, baseline and
    # the methods that did not move) and their labels would overprint.
    symbols = ["circle", "square", "diamond", "cross", "x", "triangle-up", "triangle-down", "star", "hexagon",
               "pentagon", "hourglass", "bowtie"]
    for k, (name, m) in enumerate(models.items()):
        fig.add_trace(go.Scatter(x=[m["retain_probability"]], y=[m["familiarity_probability"]], name=name,
                                 mode="markers", marker=dict(size=13, symbol=symbols[k % len(symbols)], opacity=0.85)))
    top = max(m["familiarity_probability"] for m in models.values())
    fig.update_layout(title=f"Forgetting vs keeping on {shipped['model']} (demo corpus, shipped probes)",
                      xaxis_title="retain-probe probability (keep: higher is better)",
                      yaxis_title="familiarity probability (forget: lower is better)",
                      xaxis_range=[0, 1.15 * max(m["retain_probability"] for m in models.values())],
                      yaxis_range=[-0.02 * top, 1.1 * top], showlegend=True, template="plotly_white", width=860, height=540)
    try:
        fig.write_image(str(path), scale=2)
    except Exception as e:  # noqa: BLE001 - kaleido or its browser missing: the numbers still stand
        return f"plot skipped: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-forgetting"))
    ap.add_argument("--relearn-steps", type=int, default=10)
    ap.add_argument("--sam-rho", type=float, default=0.05)
    ap.add_argument("--plot", default=str(ROOT / "docs" / "forgetting.png"))
    ap.add_argument("--from-eval", action="store_true", help="redraw the tables and plot from OUT's JSON only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_eval:
        shipped, heldout = (json.loads((out / f).read_text()) for f in ("eval.json", "heldout.json"))
        md = markdown(shipped, heldout)
        (out / "table.md").write_text(md + "\n")
        print(md)
        print(plot(shipped, Path(args.plot)) or f"plot: {args.plot}")
        return

    t0 = time.time()
    whp = run("whp", ASSETS / "demo.yaml", out)
    expert = str(whp / "adapters" / "expert")
    runs = {"whp": whp, "whp-paper": run("whp-paper", ASSETS / "demo.yaml", out,
                                         **{"whp.expert": expert, "whp.labels": "hard", "retain.text": None})}
    runs.update({name: run(name, ASSETS / cfg, out) for name, cfg in METHOD_CONFIGS.items()})
    train_s = time.time() - t0

    wb = Workbench.load()
    anchors = load_anchors(ASSETS / "demo_anchors.json")
    corpus = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")

    def evaluate_all(runs: dict, with_expert: bool = True) -> tuple[dict, dict]:
        adapters = {"expert": expert} if with_expert else {}
        adapters.update({n: str(d / "adapters" / "unlearned") for n, d in runs.items()})
        shipped = evaluate(wb, adapters, EvalInputs(load_probes(ASSETS / "probes.json"), corpus,
                                                    (ASSETS / "retain.txt").read_text(encoding="utf-8"), anchors),
                           EvalSettings(relearn_steps=args.relearn_steps))
        heldout = evaluate(wb, adapters, EvalInputs(load_probes(ASSETS / "heldout_probes.json"), corpus, "", anchors),
                           EvalSettings(verbatim_passages=0, retain_max_tokens=0, robustness=False))
        return shipped, heldout

    t1 = time.time()
    shipped, heldout = evaluate_all(runs)
    whp_back = give_back(shipped["models"]["whp"], shipped["models"]["baseline"])
    verdicts = {n: verdict(shipped, n, whp_back) for n in runs}
    meets = [n for n, v in verdicts.items() if v["meets_forget_keep"]]
    best = min(meets, key=lambda n: verdicts[n]["gives_back"] if verdicts[n]["gives_back"] is not None else 9) \
        if meets else min(verdicts, key=lambda n: verdicts[n]["familiarity"] + (9 if abs(verdicts[n]["retain"]) > 0.1 else 0))
    if best == "whp-paper":
        best_cfg, over = ASSETS / "demo.yaml", {"whp.expert": expert, "whp.labels": "hard", "retain.text": None}
    else:
        best_cfg, over = ASSETS / METHOD_CONFIGS.get(best, "demo.yaml"), {}
    sam = f"{best}+sam"
    runs[sam] = run(sam, best_cfg, out, **over, **{"unlearn.sam_rho": args.sam_rho})
    # The SAM run alone, with the baseline measured again: evaluation is deterministic (fixed seeds), so the
    # baseline should come out the same (a warning says if not); the SAM row joins the first table.
    more = evaluate_all({sam: runs[sam]}, with_expert=False)
    for first, again in zip((shipped, heldout), more):
        drift = {k: (v, again["models"]["baseline"].get(k)) for k, v in first["models"]["baseline"].items()
                 if isinstance(v, float) and abs(v - (again["models"]["baseline"].get(k) or 0)) > 1e-4 * max(1, abs(v))}
        if drift:
            print(f"warning: the baseline moved between the two evaluations: {drift}", flush=True)
        first["models"][sam] = again["models"][sam]
    eval_s = time.time() - t1
    whp_back = give_back(shipped["models"]["whp"], shipped["models"]["baseline"])
    verdicts = {n: verdict(shipped, n, whp_back) for n in runs}
    (out / "eval.json").write_text(json.dumps(shipped, indent=2, ensure_ascii=False))
    (out / "heldout.json").write_text(json.dumps(heldout, indent=2, ensure_ascii=False))
    md = markdown(shipped, heldout)
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(plot(shipped, Path(args.plot)) or f"plot: {args.plot}")
    for n, v in verdicts.items():
        print(f"{n:12s} familiarity {v['familiarity']:+.0%} retain {v['retain']:+.0%} perplexity {v['perplexity']:+.0%} "
              f"gives back {'—' if v['gives_back'] is None else format(v['gives_back'], '.0%')}"
              f"{'  MEETS forget/keep' if v['meets_forget_keep'] else ''}"
              f"{' and beats WHP on relearning' if v['beats_whp_relearning'] else ''}")
    seconds = {n: float((d / "seconds.txt").read_text()) for n, d in runs.items() if (d / "seconds.txt").exists()}
    print(json.dumps({"train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "run_seconds": seconds,
                      "best": best, "verdicts": verdicts, "models": shipped["models"],
                      "heldout": heldout["models"]}))


if __name__ == "__main__":
    main()
