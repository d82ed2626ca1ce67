"""Gone or hidden? Where the demo's forgetting sits, layer by layer, and one experiment the LoRA
placement makes possible (issue 21). On the embedded model, 2 CPU cores: about 45 minutes.

1. The demo's whp, npo and rmu runs (assets/demo*.yaml as shipped; reused when already under --out).
2. The logit lens of baseline, expert, whp, npo and rmu on Inspect's example prompts (assets/probes.json's
   first four probability probes): per adapter, the block from which it suppresses the answer
   (engine.inspection.lens_split), and the block where the baseline's answer rises (its lens probability
   first reaches half its highest).
3. The linear probe at every block (--probe-layer all) for the baseline and the three adapters.
4. Placement: whp and rmu with LoRA on all blocks, on the MLPs only, and on the blocks the lens points at
   (the six blocks up to the baseline's median rise block; RMU steered at that block), against the shipped
   placement (whp: the top 10 blocks; rmu: blocks 5-7, steered at 7) measured in the same evaluation:
   familiarity, retain, the held-out set, and the worst-case relearning curve (relearn_sweep: the most any
   of three learning rates gives back after 10 steps, over forget, related and unrelated text).

    .venv/bin/python bench/depth.py [--out runs/bench-depth]

Writes OUT/lens.json, OUT/eval.json, OUT/heldout.json and OUT/table.md; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from engine.anchors import load_anchors
from engine.config import load_config, with_overrides
from engine.evaluation import EvalInputs, EvalSettings, evaluate
from engine.inspection import inspect, lens_split
from engine.io import ASSETS, ROOT
from engine.jobs import cost_card, read_status
from engine.models import Workbench
from engine.pipeline import execute
from engine.probes import load_probes


def run(name: str, config: Path, out: Path, **over) -> Path:
    """Execute one run into out/name unless its unlearned adapter is already there."""
    run_dir = out / name
    if (run_dir / "adapters" / "unlearned" / "adapter_config.json").exists():
        print(f"{name}: reusing {run_dir}", flush=True)
        return run_dir
    shutil.rmtree(run_dir, ignore_errors=True)
    status = execute(with_overrides(load_config(config), over), run_dir, queue=False)
    if status.state != "finished":
        raise SystemExit(f"{name}: {status.state}: {status.error}")
    print(f"{name}: {status.summary.get('cost', {}).get('wall_s', 0):.0f} s", flush=True)
    return run_dir


def rise_block(probs: list[float]) -> int:
    """The first block (1-based) where a lens curve reaches half its highest value."""
    top = max(probs)
    return next(b for b, p in enumerate(probs, 1) if p >= 0.5 * top)


def lens_study(wb: Workbench, adapters: dict[str, str], prompts: list[tuple[str, str]]) -> dict:
    """Per prompt: the baseline's rise block and, per adapter, where it suppresses the answer."""
    names = [wb.add_adapter(n, p) for n, p in adapters.items()]
    out = {}
    for prompt, target in prompts:
        per = {}
        for name in names:
            r = inspect(wb, prompt, None, unlearned=name, track=[target], lens=True)
            lens = r.lens(len(r.ids) - 1, 5.0)
            split = lens_split(lens, target)
            per[name] = {"split": split["split"], "final": split["model"][-1], "curve": split["model"]}
            per["baseline"] = {"curve": split["reference"], "final": split["reference"][-1]}
        per["rise"] = rise_block(per["baseline"]["curve"])
        out[prompt] = per
    for name in names:
        wb.remove_adapter(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-depth"))
    ap.add_argument("--steps", default="0,5,10", help="relearning curve steps")
    ap.add_argument("--from-eval", action="store_true", help="redo the tables from OUT's JSON only")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.from_eval:
        saved = json.loads((out / "lens.json").read_text())
        runs = {d.name: d for d in sorted(out.iterdir()) if (d / "adapters" / "unlearned").is_dir()}
        order = ["whp", "npo", "rmu", "whp-all", "whp-mlp", "whp-lens", "rmu-all", "rmu-mlp", "rmu-lens"]
        runs = {n: runs[n] for n in order if n in runs}
        examples = [(p["prompt"], p["target"]) for p in load_probes(ASSETS / "probes.json").probability[:4]]
        report(out, runs, json.loads((out / "eval.json").read_text()), json.loads((out / "heldout.json").read_text()),
               saved["prompts"], examples, {"rise": saved["rise"], "window": saved["window"]})
        return
    steps = [int(s) for s in args.steps.split(",")]
    t0 = time.time()

    runs = {"whp": run("whp", ASSETS / "demo.yaml", out), "npo": run("npo", ASSETS / "demo_npo.yaml", out),
            "rmu": run("rmu", ASSETS / "demo_rmu.yaml", out)}
    expert = str(runs["whp"] / "adapters" / "expert")

    wb = Workbench.load()
    probes = load_probes(ASSETS / "probes.json")
    examples = [(p["prompt"], p["target"]) for p in probes.probability[:4]]
    lens = lens_study(wb, {"expert": expert, **{n: str(d / "adapters" / "unlearned") for n, d in runs.items()}},
                      examples)
    rise = int(statistics.median(v["rise"] for v in lens.values()))
    window = f"{max(0, rise - 6)}-{max(0, rise - 1)}"  # 0-based blocks whose outputs are lens blocks rise-5..rise
    (out / "lens.json").write_text(json.dumps({"rise": rise, "window": window, "prompts": lens}, indent=2))
    print(f"lens: the baseline's answers rise at block {rise} (median of {len(lens)} prompts); placing on {window}",
          flush=True)

    whp_over = {"whp.expert": expert}
    runs.update({
        "whp-all": run("whp-all", ASSETS / "demo.yaml", out, **whp_over, **{"lora.layers": None}),
        "whp-mlp": run("whp-mlp", ASSETS / "demo.yaml", out, **whp_over, **{"lora.layers": None, "lora.modules": "mlp"}),
        "whp-lens": run("whp-lens", ASSETS / "demo.yaml", out, **whp_over, **{"lora.layers": window}),
        "rmu-all": run("rmu-all", ASSETS / "demo_rmu.yaml", out, **{"lora.layers": "0-7"}),
        "rmu-mlp": run("rmu-mlp", ASSETS / "demo_rmu.yaml", out, **{"lora.modules": "mlp"}),
        "rmu-lens": run("rmu-lens", ASSETS / "demo_rmu.yaml", out, **{"rmu.layer": max(1, rise - 1)}),
    })
    train_s = time.time() - t0

    anchors = load_anchors(ASSETS / "demo_anchors.json")
    corpus = (ASSETS / "demo_corpus.txt").read_text(encoding="utf-8")
    adapters = {n: str(d / "adapters" / "unlearned") for n, d in runs.items()}
    t1 = time.time()
    shipped = evaluate(wb, adapters, EvalInputs(
        load_probes(ASSETS / "probes.json"), corpus, (ASSETS / "retain.txt").read_text(encoding="utf-8"), anchors,
        related=(ASSETS / "relearn_related.txt").read_text(encoding="utf-8"),
        unrelated=(ASSETS / "relearn_unrelated.txt").read_text(encoding="utf-8")),
        EvalSettings(verbatim_passages=0, robustness=False, probe_layer="all", relearn_curve=steps, relearn_sweep=True))
    heldout = evaluate(wb, adapters, EvalInputs(load_probes(ASSETS / "heldout_probes.json"), corpus, "", anchors),
                       EvalSettings(verbatim_passages=0, retain_max_tokens=0, robustness=False, linear_probe=False))
    eval_s = time.time() - t1
    (out / "eval.json").write_text(json.dumps(shipped, indent=2, ensure_ascii=False))
    (out / "heldout.json").write_text(json.dumps(heldout, indent=2, ensure_ascii=False))

    report(out, runs, shipped, heldout, lens, examples, {"train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
                                                         "rise": rise, "window": window})


def report(out: Path, runs: dict[str, Path], shipped: dict, heldout: dict, lens: dict, examples: list,
           extra: dict) -> None:
    """OUT/table.md and the last line's JSON from the evaluations (--from-eval redoes only this)."""
    base, hbase = shipped["models"]["baseline"], heldout["models"]["baseline"]

    def rel(v, b):
        return None if v is None or not b else v / b - 1

    def pct(x):
        return "—" if x is None else f"{x:+.0%}"

    lines = ["| run | placement | familiarity | retain probes | retain ppl | held-out P(answer) | held-out completions "
             "| other fiction (nats) | worst-case given back | unlearn s | peak MiB |", "|---" * 11 + "|"]
    rows = {}
    for name, d in runs.items():
        m, h = shipped["models"][name], heldout["models"][name]
        card = cost_card(read_status(d).summary.get("cost")) or {}
        parts = card.get("parts", {})
        cfg = json.loads((d / "config.json").read_text())
        place = f"{cfg['lora'].get('layers') or 'all'} / {cfg['lora'].get('modules', 'all')}"
        if cfg["method"] == "rmu":
            place += f" (layer {cfg['rmu']['layer']})"
        row = {"familiarity": rel(m.get("familiarity_probability"), base.get("familiarity_probability")),
               "retain": rel(m.get("retain_probability"), base.get("retain_probability")),
               "perplexity": rel(m.get("retain_perplexity"), base.get("retain_perplexity")),
               "heldout_full": rel(h.get("familiarity_probability_full"), hbase.get("familiarity_probability_full")),
               "heldout_completion": rel(h.get("familiarity_completion"), hbase.get("familiarity_completion")),
               "fiction_nats": None if h.get("retain_answer_nll") is None else h["retain_answer_nll"] - hbase["retain_answer_nll"],
               "worst_given_back": m.get("relearn_worst_recovered"),
               "unlearn_s": (parts.get("unlearn") or {}).get("wall_s"), "peak_mib": card.get("peak_memory_mib"),
               "placement": place}
        rows[name] = row
        lines.append(f"| {name} | {place} | {pct(row['familiarity'])} | {pct(row['retain'])} | {pct(row['perplexity'])} | "
                     f"{pct(row['heldout_full'])} | {pct(row['heldout_completion'])} | "
                     f"{'—' if row['fiction_nats'] is None else format(row['fiction_nats'], '+.2f')} | "
                     f"{'—' if row['worst_given_back'] is None else format(row['worst_given_back'], '.0%')} | "
                     f"{row['unlearn_s'] or 0:.0f} | {row['peak_mib'] or 0:,.0f} |")
    lens_lines = ["| prompt | target | baseline P | rise block | " + " | ".join(f"{n} from block" for n in
                  ("expert", "whp", "npo", "rmu")) + " |", "|---" * 8 + "|"]
    def split(v: dict, n: str, target: str):  # from the saved curves, with today's lens_split
        curves = {m: [{"tracked": {target: p}} for p in v[k]["curve"]] for m, k in (("baseline", "baseline"), ("unlearned", n))}
        found = lens_split(curves, target)
        return found["split"] if found else None

    for (prompt, target), v in zip(examples, lens.values()):
        lens_lines.append(f"| {prompt[-40:]} | {target!r} | {v['baseline']['final']:.3f} | {v['rise']} | "
                          + " | ".join(f"{split(v, n, target) or 'kept'} ({v[n]['final']:.3f})" for n in
                                       ("expert", "whp", "npo", "rmu")) + " |")
    curves = {n: shipped["models"][n].get("probe_curve") for n in ("baseline", "whp", "npo", "rmu")}
    probe_line = " · ".join(f"{n}: " + ", ".join(f"{b}:{a:.2f}" for b, a in zip(c["layers"], c["accuracy"])
                                                 if b % 5 == 0 or b == c["layers"][-1])
                            for n, c in curves.items() if c)
    md = "\n".join(lens_lines) + "\n\nprobe accuracy by block: " + probe_line + "\n\n" + "\n".join(lines)
    print(md)
    ref = {"whp": rows.get("whp", {}).get("retain"), "rmu": rows.get("rmu", {}).get("retain")}
    notes = []
    for name, row in rows.items():
        r = ref.get(name.split("-")[0])
        if name in ref or r is None or row["retain"] is None:
            continue
        same = abs(row["retain"] - r) <= 0.03
        notes.append(f"{name} vs {name.split('-')[0]}: retain {row['retain']:+.0%} vs {r:+.0%}: "
                     + ("an equal cost to what must be kept" if same else "the costs to what must be kept differ"))
    print("\n".join(notes))
    (out / "table.md").write_text(md + "\n\n" + "\n".join(notes) + "\n")
    print(json.dumps({**extra, "rows": rows, "probe_curves": curves, "equal_cost": notes}))


if __name__ == "__main__":
    main()
