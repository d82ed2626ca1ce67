"""Forgetting that generalises (issue 22): the shipped demo against the levers, on prompts it never saw.

    shipped        assets/demo.yaml as shipped (the reference, in the same evaluation)
    generated      the same recipe on a corpus sampled from what the model knows (engine/corpus.py:
                   the baseline and the shipped expert on prompts about every anchored term), alone
    mixed          the generated corpus followed by the shipped one (240 blocks, 60 unlearn steps)
    all-layers     the shipped corpus with LoRA on every block (lora.layers none)
    steps-60       the shipped corpus, 60 unlearn steps instead of 30 (the shipped expert and labels)

Measured on assets/heldout_probes.json (written independently, never tuned on): P(whole answer),
completions naming a Harry Potter entity the prompt did not, neighbouring fiction (nats per answer);
and on the shipped retain probes. The issue's goal for the shipped demo: completions -80%, P(whole
answer) -90%, neighbouring fiction within 0.3 nats, retain probes within 10%, about 6 minutes.

    .venv/bin/python bench/generalise.py [--out runs/bench-generalise] [--reference runs/bench-depth/whp]
    .venv/bin/python bench/generalise.py --model embedded:gemma3-270m --variants shipped --out runs/bench-gemma
        (issue 23: the SmolLM2 demo config unchanged on Gemma 3 270M: does the recipe transfer?)

Writes OUT/corpus/corpus.txt, OUT/eval.json, OUT/heldout.json and OUT/table.md; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from engine.anchors import load_anchors
from engine.config import load_config, with_overrides
from engine.corpus import generate_corpus
from engine.evaluation import EvalInputs, EvalSettings, evaluate
from engine.io import ASSETS, ROOT, atomic_write_text
from engine.jobs import cost_card, read_status
from engine.models import ModelConfig, Workbench
from engine.pipeline import execute
from engine.probes import load_probes


MODEL = {"model.name": "embedded"}  # --model sets it for every run


def run(name: str, out: Path, **over) -> Path:
    run_dir = out / name
    if (run_dir / "adapters" / "unlearned" / "adapter_config.json").exists():
        print(f"{name}: reusing {run_dir}", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    status = execute(with_overrides(load_config(ASSETS / "demo.yaml"), {**MODEL, **over}), run_dir, queue=False)
    if status.state != "finished":
        raise SystemExit(f"{name}: {status.state}: {status.error}")
    print(f"{name}: {status.summary.get('cost', {}).get('wall_s', 0):.0f} s", flush=True)
    return run_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-generalise"))
    ap.add_argument("--reference", default=str(ROOT / "runs" / "bench-depth" / "whp"),
                    help="a finished run of assets/demo.yaml to reuse as the shipped row (else run it)")
    ap.add_argument("--prompts", type=int, default=240)
    ap.add_argument("--model", default="embedded", help="the base model of every run (the configs otherwise as shipped)")
    ap.add_argument("--variants", default="shipped,generated,mixed,all-layers,steps-60")
    args = ap.parse_args()
    MODEL["model.name"] = args.model
    variants = args.variants.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ref = Path(args.reference)
    reusable = (ref / "adapters" / "unlearned" / "adapter_config.json").exists() and args.model == "embedded"
    shipped = ref if reusable else run("shipped", out)
    expert = str(shipped / "adapters" / "expert")
    anchors = load_anchors(ASSETS / "demo_anchors.json")

    gen = out / "corpus" / "corpus.txt"  # not out / "generated": that is the run directory of the "generated" row
    t0 = time.time()
    if not gen.exists() and {"generated", "mixed"} & set(variants):
        wb = Workbench.load(ModelConfig(args.model))
        wb.add_adapter("expert", expert)
        g = generate_corpus(wb, anchors, "expert", n_prompts=args.prompts, samples=2, max_new_tokens=64)
        gen.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(gen, g.text)
        (gen.parent / "corpus.json").write_text(json.dumps(g.stats(), indent=2))
        print(f"generated: {g.stats()} in {time.time() - t0:.0f} s", flush=True)
        del wb
    mixed = out / "corpus" / "mixed.txt"
    if gen.exists() and not mixed.exists():
        atomic_write_text(mixed, gen.read_text() + "\n\n" + (ASSETS / "demo_corpus.txt").read_text())
    levers = {"generated": lambda: run("generated", out, corpus=str(gen)),
              "mixed": lambda: run("mixed", out, **{"corpus": str(mixed), "data.max_blocks": 240, "unlearn.steps": 60}),
              "all-layers": lambda: run("all-layers", out, **{"whp.expert": expert, "lora.layers": None}),
              "steps-60": lambda: run("steps-60", out, **{"whp.expert": expert, "unlearn.steps": 60})}
    runs = {"shipped": shipped, **{n: levers[n]() for n in variants if n in levers}}

    wb = Workbench.load(ModelConfig(args.model))
    adapters = {n: str(d / "adapters" / "unlearned") for n, d in runs.items()}
    corpus = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")
    t1 = time.time()
    ship = evaluate(wb, adapters, EvalInputs(load_probes(ASSETS / "probes.json"), corpus,
                                             (ASSETS / "retain.txt").read_text(encoding="utf-8"), anchors),
                    EvalSettings(verbatim_passages=0, robustness=False, linear_probe=False))
    held = evaluate(wb, adapters, EvalInputs(load_probes(ASSETS / "heldout_probes.json"), corpus, "", anchors),
                    EvalSettings(verbatim_passages=0, retain_max_tokens=0, robustness=False, linear_probe=False))
    (out / "eval.json").write_text(json.dumps(ship, indent=2, ensure_ascii=False))
    (out / "heldout.json").write_text(json.dumps(held, indent=2, ensure_ascii=False))
    sb, hb = ship["models"]["baseline"], held["models"]["baseline"]

    def rel(v, b):
        return None if v is None or not b else v / b - 1

    def pct(x):
        return "—" if x is None else f"{x:+.0%}"

    lines = ["| run | completions naming HP (held-out) | P(whole answer) (held-out) | other fiction, nats | "
             "familiarity (shipped probes) | retain probes | retain ppl | run s |", "|---" * 8 + "|"]
    rows = {}
    for name, d in runs.items():
        s, h = ship["models"][name], held["models"][name]
        card = cost_card(read_status(d).summary.get("cost")) or {}
        row = {"completions": rel(h.get("familiarity_completion"), hb.get("familiarity_completion")),
               "full_answer": rel(h.get("familiarity_probability_full"), hb.get("familiarity_probability_full")),
               "fiction_nats": None if h.get("retain_answer_nll") is None else h["retain_answer_nll"] - hb["retain_answer_nll"],
               "familiarity": rel(s.get("familiarity_probability"), sb.get("familiarity_probability")),
               "retain": rel(s.get("retain_probability"), sb.get("retain_probability")),
               "perplexity": rel(s.get("retain_perplexity"), sb.get("retain_perplexity")),
               "run_s": card.get("wall_s")}
        row["meets_goal"] = (row["completions"] is not None and row["completions"] <= -0.8 and row["full_answer"] is not None
                             and row["full_answer"] <= -0.9 and row["fiction_nats"] is not None
                             and abs(row["fiction_nats"]) <= 0.3 and row["retain"] is not None and abs(row["retain"]) <= 0.1)
        rows[name] = row
        lines.append(f"| {name} | {pct(row['completions'])} | {pct(row['full_answer'])} | "
                     f"{'—' if row['fiction_nats'] is None else format(row['fiction_nats'], '+.2f')} | "
                     f"{pct(row['familiarity'])} | {pct(row['retain'])} | {pct(row['perplexity'])} | "
                     f"{row['run_s'] or 0:.0f} |")
    md = "\n".join(lines)
    (out / "table.md").write_text(md + "\n")
    print(md)
    print(json.dumps({"eval_s": round(time.time() - t1, 1), "rows": rows,
                      "generated": json.loads((gen.parent / "corpus.json").read_text())
                      if (gen.parent / "corpus.json").exists() else None}))


if __name__ == "__main__":
    main()
