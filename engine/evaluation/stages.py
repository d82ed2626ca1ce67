"""The evaluation as stage functions over one EvalContext.

Each stage fills `ctx.results[model][metric]` (and examples, notes) for every model: the baseline
(no adapter) and each adapter, batched across models wherever the Workbench allows. A stage is
(name, cost in progress units, function); `evaluate` runs the enabled ones and reports progress
over all of them.
"""
from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..cost import Cost, device_name
from ..data import grouped
from ..errors import UserError
from ..models import Workbench, adapter_name
from ..probes import encode, first_token_probabilities, score
from . import attacks, metrics, relearn
from .settings import EvalInputs, EvalRequest, EvalSettings

BASELINE = "baseline"
StageProgress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class EvalContext:
    wb: Workbench
    models: dict[str, str | None]  # display name -> adapter name (None: the baseline)
    inputs: EvalInputs
    settings: EvalSettings
    results: dict[str, dict] = field(default_factory=dict)
    examples: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    first_probs: dict[str, list[float]] = field(default_factory=dict)  # model -> P(first token) per probability probe

    def __post_init__(self):
        tok = self.wb.tokenizer
        self.results = {m: {} for m in self.models}
        self.examples = {m: {} for m in self.models}
        self.prob_items = encode(tok, self.inputs.probes.probability)  # [(prompt ids, target ids)]
        self.retain_items = encode(tok, self.inputs.probes.retain)
        self.terms = sorted(getattr(self.inputs.anchors, "enabled", self.inputs.anchors) or [])

    def enc(self, text: str, special: bool = True) -> list[int]:
        return self.wb.tokenizer(text, add_special_tokens=special)["input_ids"]


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


# -- stages -----------------------------------------------------------------------------------------
def probabilities(ctx: EvalContext, tick) -> None:
    """familiarity_probability(_full), retain_probability(_full): every model's probes in shared batches."""
    items, meta = [], []
    for m, name in ctx.models.items():
        for kind, probes in (("familiarity", ctx.prob_items), ("retain", ctx.retain_items)):
            for p, t in probes:
                items.append((p, t, name))
                meta.append((m, kind))
    lps = score(ctx.wb.logits, items, ctx.settings.token_budget)
    for m in ctx.models:
        for kind in ("familiarity", "retain"):
            mine = [lp for lp, mt in zip(lps, meta) if mt == (m, kind)]
            if kind == "familiarity":
                ctx.first_probs[m] = first_token_probabilities(mine)
            ctx.results[m][f"{kind}_probability"] = _mean(first_token_probabilities(mine))
            ctx.results[m][f"{kind}_probability_full"] = _mean(float(lp.sum().exp()) for lp in mine)
            ctx.results[m][f"{kind}_answer_nll"] = _mean(float(-lp.sum()) for lp in mine)
    tick()


def completions(ctx: EvalContext, tick) -> None:
    """familiarity_completion: greedy completions naming a term their prompt did not (one generate per model)."""
    from ..generation import complete

    probes = ctx.inputs.probes.completion
    prompts = [c["prompt"] for c in probes]
    term_lists = [sorted(set(ctx.terms) | set(c["references"])) for c in probes]
    for m, name in ctx.models.items():
        if prompts:
            outs = complete(ctx.wb, prompts, adapter=name, max_new_tokens=ctx.settings.max_new_tokens)
            found = [metrics.familiar_terms(p, o, t) for p, o, t in zip(prompts, outs, term_lists)]
            ctx.results[m]["familiarity_completion"] = sum(bool(f) for f in found) / len(prompts)
            ctx.examples[m]["completion"] = [{"prompt": p, "completion": o, "familiar": f}
                                             for p, o, f in zip(prompts, outs, found)]
        else:
            ctx.results[m]["familiarity_completion"] = None
        tick()


def judged(ctx: EvalContext, tick) -> None:
    """familiarity_judge: the completions graded 0-3 by an LLM judge."""
    from .judge import judge

    s = ctx.settings
    for m in ctx.models:
        done = ctx.examples[m].get("completion") or []
        if done:
            grades = judge([(e["prompt"], e["completion"]) for e in done], s.judge_model, s.judge_base_url,
                           concept=ctx.inputs.probes.concept)
            ctx.results[m]["familiarity_judge"] = sum(grades) / len(grades)
            for e, g in zip(done, grades):
                e["judge"] = g
    tick()


def verbatim_passages(tokenizer, corpus: str, n: int, prefix: int, tokens: int) -> list[tuple[list[int], list[int]]]:
    """n (prefix, true continuation) token passages evenly spaced over the corpus (fewer if it is short)."""
    from ..data import tokenize_long

    ids = tokenize_long(tokenizer, corpus)
    L = prefix + tokens
    n = min(n, len(ids) // L)
    if n == 0:
        return []
    starts = [round(k * (len(ids) - L) / (n - 1)) for k in range(n)] if n > 1 else [0]
    return [(ids[s: s + prefix], ids[s + prefix: s + L]) for s in starts]


def verbatim(ctx: EvalContext, tick) -> None:
    """verbatim_token_match / _exact / _rougeL: P corpus tokens in, N greedy tokens out, against the truth;
    extraction_strength: from one teacher-forced forward over each whole passage (P + N tokens)."""
    s, tok = ctx.settings, ctx.wb.tokenizer
    passages = verbatim_passages(tok, ctx.inputs.corpus, s.verbatim_passages, s.verbatim_prefix, s.verbatim_tokens)
    if not passages:
        ctx.notes.append(f"verbatim memorisation skipped: the corpus is shorter than "
                         f"{s.verbatim_prefix + s.verbatim_tokens} tokens")
        tick()
        return
    rows = [(p, name) for name in ctx.models.values() for p, _ in passages]
    gens = ctx.wb.generate(rows, s.verbatim_tokens)
    for k, m in enumerate(ctx.models):
        mine = gens[k * len(passages): (k + 1) * len(passages)]
        rouge = [metrics.rouge_l(tok.decode(g), tok.decode(truth)) for g, (_, truth) in zip(mine, passages)]
        ctx.results[m]["verbatim_token_match"] = _mean(metrics.token_match(g, t) for g, (_, t) in zip(mine, passages))
        ctx.results[m]["verbatim_exact"] = _mean(metrics.exact_match(g, t) for g, (_, t) in zip(mine, passages))
        ctx.results[m]["verbatim_rougeL"] = _mean(rouge)
        ctx.examples[m]["verbatim"] = [{"prefix": tok.decode(p), "truth": tok.decode(t), "continuation": tok.decode(g),
                                        "rougeL": r} for (p, t), g, r in zip(passages, mine, rouge)]
    whole = [(p + t, name) for name in ctx.models.values() for p, t in passages]
    strength = grouped(whole, s.token_budget, ctx.wb.logits,  # (T-1,) greedy predictions against the text
                       lambda j, lg: metrics.extraction_strength(lg[:-1].argmax(-1).tolist(), whole[j][0][1:]))
    for k, m in enumerate(ctx.models):
        ctx.results[m]["extraction_strength"] = _mean(strength[k * len(passages): (k + 1) * len(passages)])
    tick()


def perplexity(ctx: EvalContext, tick) -> None:
    """retain_perplexity: exp(mean token NLL) over the retain text in independent blocks, every model batched."""
    s = ctx.settings
    ids = ctx.enc(ctx.inputs.retain, False)[: s.retain_max_tokens] if ctx.inputs.retain.strip() else []
    bs = min(s.block_size, ctx.wb.max_length)
    blocks = [b for b in (ids[i: i + bs] for i in range(0, len(ids), bs)) if len(b) >= 2]
    if not blocks:
        ctx.notes.append("retain perplexity skipped: no retain text")
        tick()
        return
    rows = [(b, name) for name in ctx.models.values() for b in blocks]
    nll = grouped(rows, s.token_budget, ctx.wb.logits, lambda i, lg: float(metrics.token_nll(lg, rows[i][0]).sum()))
    count = sum(len(b) - 1 for b in blocks)
    for k, m in enumerate(ctx.models):
        ctx.results[m]["retain_perplexity"] = metrics.perplexity(sum(nll[k * len(blocks): (k + 1) * len(blocks)]), count)
    tick()


def in_context(ctx: EvalContext, tick) -> None:
    """robust_summary / robust_expert_preamble / robust_few_shot: familiarity with the summary, the
    expert preamble or the few-shot pairs before every probability probe; context_<attack>_stated /
    _unstated: the same on the probes whose answers that context states / does not state."""
    probes = ctx.inputs.probes
    items = [(ctx.enc(p["prompt"], False), t) for p, (_, t) in zip(probes.probability, ctx.prob_items)]
    found = attacks.contexts(probes)
    for attack in attacks.ATTACKS:
        if attack not in found:
            ctx.notes.append(f"in-context attack '{attack}' skipped: the probes file has no {attacks.FIELDS[attack]}")
    for attack, text in found.items():
        said = attacks.stated(text, probes.probability)
        context = ctx.enc(text.rstrip() + "\n\n")
        for m, name in ctx.models.items():
            probs = attacks.in_context(ctx.wb, context, items, name, ctx.settings.token_budget)
            plain = ctx.first_probs.get(m, [None] * len(probs))
            ctx.results[m][attacks.ATTACKS[attack]] = _mean(probs)
            detail = {}
            for group, want in (("stated", True), ("unstated", False)):
                mine = [i for i, s in enumerate(said) if s == want]
                detail[group] = {"n": len(mine), "context": _mean(probs[i] for i in mine),
                                 "plain": _mean(plain[i] for i in mine)}
                if mine:
                    ctx.results[m][f"context_{attack}_{group}"] = detail[group]["context"]
            ctx.results[m].setdefault("in_context", {})[attack] = detail
        ctx.notes.append(f"in-context '{attack}': states the answers of {sum(said)} of {len(said)} probes")
    tick()


def relearning(ctx: EvalContext, tick) -> None:
    """robust_relearn: familiarity after relearn_steps LoRA steps of each model on the first corpus tokens
    (all probes: the slice may state their answers; relearning_curve is the fair version)."""
    s = ctx.settings
    slice_ids = ctx.enc(ctx.inputs.corpus, False)[: s.relearn_tokens]
    blocks = [b for b in (slice_ids[i: i + relearn.BLOCK] for i in range(0, len(slice_ids), relearn.BLOCK)) if len(b) >= 2]
    for m, name in ctx.models.items():
        if ctx.wb.is_full_model(name):
            ctx.notes.append(f"relearning skipped for {m}: a full checkpoint, not a LoRA adapter")
        else:
            after, = relearn.curve(ctx.wb, name, blocks, ctx.prob_items, [s.relearn_steps], s.relearn_lr,
                                   s.relearn_rank, s.seed, batch_size=len(blocks))
            ctx.results[m]["robust_relearn"] = _mean(after)
        tick()
    ctx.notes.append(f"relearning attack: {s.relearn_steps} LoRA steps, lr {s.relearn_lr}, "
                     f"on the first {len(slice_ids)} corpus tokens")


def _relearn_rates(ctx: EvalContext) -> tuple[float, ...]:
    """relearn_lr alone, or with relearn_sweep the sweep for this model's size."""
    if not ctx.settings.relearn_sweep:
        return (ctx.settings.relearn_lr,)
    from ..models import approx_params

    return relearn.sweep_rates(approx_params(ctx.wb._base.config))


def relearning_curve(ctx: EvalContext, tick) -> None:
    """relearn_curve: familiarity of a held-out probe group at each step of one relearning run per model
    and source, on text that never states their answers; relearn_<source> / relearn_recovered_<source>:
    its last point, and the share of the forgotten familiarity it brought back."""
    s = ctx.settings
    probes = ctx.inputs.probes.probability
    given = {"forget": ctx.inputs.corpus, "related": ctx.inputs.related, "unrelated": ctx.inputs.unrelated}
    texts = {src: given[src] for src in s.relearn_sources if given[src].strip()}
    for src in s.relearn_sources:
        if src not in texts:
            ctx.notes.append(f"relearning curve: no {src} text, that source is skipped")
    sp = relearn.split(probes, texts, s.relearn_tokens, lambda t: len(ctx.enc(t, False)))
    if not sp.held_out or not texts:
        ctx.notes.append("relearning curve skipped: every probe's answer is stated throughout the corpus, so no "
                         "probe can be held out of the relearning text")
        return
    items = [ctx.prob_items[i] for i in sp.held_out]
    rates = _relearn_rates(ctx)
    before = {m: _mean(ctx.first_probs[m][i] for i in sp.held_out) for m in ctx.models}
    curves = {m: {"steps": list(s.relearn_curve), "held_out": len(items), "sources": {}} for m in ctx.models}
    for src in texts:
        ids = ctx.enc(sp.slices[src], False)
        blocks = [b for b in (ids[i: i + relearn.BLOCK] for i in range(0, len(ids), relearn.BLOCK)) if len(b) >= 2]
        if not blocks:
            ctx.notes.append(f"relearning curve: the {src} text has no sentence free of the held-out answers")
            continue
        for m, name in ctx.models.items():
            if ctx.wb.is_full_model(name):
                ctx.notes.append(f"relearning curve skipped for {m} ({src}): a full checkpoint, not a LoRA adapter")
                for _ in rates:
                    tick()
                continue
            by_lr: dict[float, dict] = {}
            for lr in rates:
                fam = [_mean(p) for p in relearn.curve(ctx.wb, name, blocks, items, s.relearn_curve, lr,
                                                       s.relearn_rank, s.seed)]
                by_lr[lr] = {"familiarity": fam,
                             "recovered": [relearn.recovered(f, before[m], before[BASELINE]) for f in fam]}
                tick()
            if len(rates) == 1:
                fam, rec = by_lr[rates[0]]["familiarity"], by_lr[rates[0]]["recovered"]
                entry = {"familiarity": fam, "recovered": rec, "tokens": len(ids)}
            else:  # the worst case at each step: the rate that gave back most (familiarity at that rate)
                rec, at = relearn.worst_case({lr: v["recovered"] for lr, v in by_lr.items()})
                fam = [max(v["familiarity"][k] for v in by_lr.values()) if a is None else by_lr[a]["familiarity"][k]
                       for k, a in enumerate(at)]
                entry = {"familiarity": fam, "recovered": rec, "worst_lr": at, "tokens": len(ids),
                         "by_lr": {f"{lr:g}": v for lr, v in by_lr.items()}}
            curves[m]["sources"][src] = entry
            ctx.results[m][f"relearn_{src}"] = fam[-1]
            if rec[-1] is not None:
                ctx.results[m][f"relearn_recovered_{src}"] = rec[-1]
    for m in ctx.models:
        ctx.results[m]["relearn_curve"] = curves[m]
        shares = [v["recovered"][-1] for v in curves[m]["sources"].values() if v["recovered"][-1] is not None]
        if s.relearn_sweep and shares:
            ctx.results[m]["relearn_worst_recovered"] = max(shares)
    ctx.notes.append(f"relearning curve: {len(items)} held-out probes whose answers no relearning text states "
                     f"({', '.join(probes[i]['target'].strip() for i in sp.held_out[:8])}"
                     f"{', ...' if len(items) > 8 else ''}); steps {s.relearn_curve}, "
                     + (f"the worst case over lr {', '.join(f'{r:g}' for r in rates)}" if len(rates) > 1 else f"lr {rates[0]:g}")
                     + f", up to {s.relearn_tokens} tokens per source")


def quantisation(ctx: EvalContext, tick) -> None:
    """familiarity_<nf4|int8> (adapter merged, then quantised) and familiarity_<nf4|int8>_unmerged."""
    from .quantize import quantized

    found, notes = quantized(ctx.wb, ctx.models, ctx.prob_items, list(ctx.settings.quantize),
                             ctx.settings.token_budget, tick)
    for m, vals in found.items():
        ctx.results[m].update(vals)
    ctx.notes += notes


def probe_layer(wb: Workbench, names: list[str | None]) -> int:
    """The hidden state the probe reads by default: halfway through the blocks the adapters change.

    hidden_states[i] is the output of block i - 1 (0: the embeddings). An adapter on the top 10 of
    30 blocks leaves blocks 0..19 exactly as the baseline's, where any probe scores every model the
    same by construction; for adapters on every block this is the model's middle.
    """
    changed = [layer for n in names for layer in wb.adapted_layers(n)]
    first = min(changed) + 1 if changed else 1
    return (first + wb.num_layers) // 2


def probing(ctx: EvalContext, tick) -> None:
    """probe_accuracy / probe_accuracy_own: a linear probe's held-out balanced accuracy at telling the
    probability probes' prompts (the target) from the retain probes' (other knowledge)."""
    import torch

    from . import linear_probe

    wb, s = ctx.wb, ctx.settings
    every = s.probe_layer == "all"
    layer = s.probe_layer if isinstance(s.probe_layer, int) else probe_layer(wb, list(ctx.models.values()))
    if layer > wb.num_layers:
        ctx.notes.append(f"linear probe skipped: layer {layer}, but the model has blocks 0..{wb.num_layers}")
        return
    prompts = [p for p, _ in ctx.prob_items] + [p for p, _ in ctx.retain_items]
    y = torch.tensor([1] * len(ctx.prob_items) + [0] * len(ctx.retain_items))
    rows = [(p, name) for name in ctx.models.values() for p in prompts]
    # One forward for every block when the curve is asked for: (models, N, L + 1, H); else (models, N, H).
    parts = grouped(rows, s.token_budget, lambda batch: wb.hidden_states(batch, None if every else layer),
                    lambda i, h: h)
    states = torch.stack(parts).view(len(ctx.models), len(prompts), *parts[0].shape)
    at = states[:, :, layer] if every else states
    found = linear_probe.cross_validated({m: at[k] for k, m in enumerate(ctx.models)}, y, BASELINE, seed=s.seed)
    for m, vals in found.items():
        ctx.results[m].update(vals)
        ctx.results[m]["probe_layer"] = layer
    if every:  # the probe at every block: accuracy and its spread over folds, per model
        curves = {m: {"layers": [], "accuracy": [], "accuracy_own": [], "fold_std": []} for m in ctx.models}
        for b in range(states.shape[2]):
            ctx.wb.interrupt()
            res = linear_probe.cross_validated({m: states[k, :, b] for k, m in enumerate(ctx.models)}, y, BASELINE,
                                               seed=s.seed)
            for m, vals in res.items():
                c = curves[m]
                c["layers"].append(b)
                c["accuracy"].append(vals["probe_accuracy"])
                c["accuracy_own"].append(vals["probe_accuracy_own"])
                c["fold_std"].append(vals["probe_fold_std"])
        for m, c in curves.items():
            ctx.results[m]["probe_curve"] = c
    k = min(5, len(ctx.prob_items), len(ctx.retain_items))
    untouched = [m for m, n in ctx.models.items() if n is not None and min(wb.adapted_layers(n)) >= layer]
    ctx.notes.append(f"linear probe: the output of block {layer} of {wb.num_layers}, last token, "
                     f"{len(ctx.prob_items)} target vs {len(ctx.retain_items)} other prompts, {k}-fold; balanced "
                     f"accuracy, chance 0.5" + (f"; {', '.join(untouched)} change no block up to it: their states are the "
                                                f"baseline's" if untouched else ""))
    tick()


def paper_benchmarks(ctx: EvalContext, tick) -> None:
    """bench_<task>: the paper's benchmarks through lm-evaluation-harness, offline on local data."""
    from .benchmarks import benchmarks

    s = ctx.settings
    found, why = benchmarks(ctx.wb, ctx.models, list(s.benchmarks), s.benchmark_limit, tick)
    for m, vals in found.items():
        ctx.results[m].update(vals)
    ctx.notes.append(why or f"benchmarks: lm-evaluation-harness, zero-shot, the first {s.benchmark_limit} "
                            f"validation items of each task (accuracy)")


@dataclass
class Stage:
    name: str
    run: Callable[[EvalContext, Callable[[], None]], None]
    enabled: Callable[[EvalContext], bool] = lambda ctx: True
    cost: Callable[[EvalContext], int] = lambda ctx: 1  # progress units (one tick each)


STAGES = (
    Stage("probabilities", probabilities, lambda c: bool(c.prob_items or c.retain_items)),
    Stage("completions", completions, cost=lambda c: len(c.models)),
    Stage("judge", judged, lambda c: bool(c.settings.judge_model and c.inputs.probes.completion)),
    Stage("verbatim", verbatim, lambda c: c.settings.verbatim_passages > 0),
    Stage("perplexity", perplexity, lambda c: c.settings.retain_max_tokens > 0),
    Stage("in-context attacks", in_context, lambda c: c.settings.robustness and bool(c.prob_items)),
    Stage("linear probe", probing, lambda c: c.settings.linear_probe and min(len(c.prob_items), len(c.retain_items)) >= 2),
    Stage("relearning", relearning, lambda c: c.settings.relearn_steps > 0 and bool(c.prob_items),
          cost=lambda c: len(c.models)),
    Stage("relearning curve", relearning_curve, lambda c: bool(c.settings.relearn_curve) and bool(c.prob_items),
          cost=lambda c: len(c.models) * len(c.settings.relearn_sources) * len(_relearn_rates(c))),
    Stage("quantisation", quantisation, lambda c: bool(c.settings.quantize) and bool(c.prob_items),
          cost=lambda c: len(c.models) + len(c.settings.quantize)),
    Stage("benchmarks", paper_benchmarks, lambda c: bool(c.settings.benchmarks), cost=lambda c: len(c.models)),
)


def evaluate(wb: Workbench, adapters: dict[str, str], inputs: EvalInputs, settings: EvalSettings | None = None,
             progress: StageProgress | None = None) -> dict:
    """Every metric for the baseline and each adapter (display name -> LoRA directory or full checkpoint).

    progress(stage, done, total) is called as work completes. Adapters are loaded under their names
    and removed afterwards. Returns {"model", "models": {name: {metric: value}}, "examples", "notes",
    "settings", "seconds"}.
    """
    settings = settings or EvalSettings()
    t_start = time.perf_counter()
    if BASELINE in adapters:
        raise UserError(f"an adapter cannot be called {BASELINE!r}: that is the model without adapters")
    clash = len({adapter_name(n) for n in adapters}) < len(adapters)
    if clash or any(adapter_name(n) == adapter_name(f"relearn_{m}") for n in adapters for m in (BASELINE, *adapters)):
        raise UserError(f"adapter names must stay distinct after PEFT's renaming (letters, digits, _ and -): {list(adapters)}")
    loaded = {display: wb.add_adapter(display, path) for display, path in adapters.items()}
    try:
        ctx = EvalContext(wb, {BASELINE: None, **loaded}, inputs, settings)
        cost = Cost(device_name(wb.device))
        plan = [s for s in STAGES if s.enabled(ctx)]
        total, done, spent = sum(s.cost(ctx) for s in plan), 0, 0
        for stage in plan:
            def tick(name=stage.name, ceiling=spent + stage.cost(ctx)):
                nonlocal done
                done = min(done + 1, ceiling)
                if progress:
                    progress(name, done, total)
            if progress:
                progress(stage.name, done, total)  # the status names the stage that runs now
            with cost.part(stage.name):
                stage.run(ctx, tick)
            spent += stage.cost(ctx)
            if done < spent:  # a stage that skipped work still completes its share of the bar
                done = spent
                if progress:
                    progress(stage.name, done, total)
        if not settings.benchmarks and importlib.util.find_spec("lm_eval") is None:
            ctx.notes.append("benchmarks skipped: lm-eval not installed (make setup installs it and the local "
                             "data of the paper's seven tasks)")
    finally:
        for name in loaded.values():
            wb.remove_adapter(name)
    return {"model": wb.name, "models": ctx.results, "examples": ctx.examples, "notes": ctx.notes,
            "settings": settings.model_dump(mode="json"), "seconds": round(time.perf_counter() - t_start, 2),
            "cost": cost.card(torch.cuda.max_memory_allocated(wb.device) / 2**20 if wb.device.type == "cuda" else None)}


def run_request(request: EvalRequest, out: str | Path | None = None) -> dict:
    """What `python -m engine eval` runs: load the model and inputs, evaluate, and with `out` do it as a
    job (DIR/status.json with progress, DIR/eval.json with the result, one job at a time)."""
    from .. import jobs
    from ..io import atomic_write_json

    inputs = EvalInputs.load(request)
    if out is None:
        return _evaluate_request(request, inputs, None)
    job = jobs.JobWriter(out, "eval")
    try:
        with jobs.queue_slot(job), jobs.failures(job, lambda: "the evaluation"):  # one job at a time, like runs
            job.start(phase="loading model", step=0, total=0)
            result = _evaluate_request(request, inputs, job)
    except jobs.Cancelled:
        job.cancelled()
        raise
    atomic_write_json(Path(out) / "eval.json", result)
    job.finish(phase="done")
    return result


def _evaluate_request(request: EvalRequest, inputs: EvalInputs, job) -> dict:
    from .. import jobs

    from ..train import Stopped

    wb = Workbench.load(request.model)
    running = ["loading"]

    def interrupt():  # before every forward, generate chunk and relearning step (Workbench.interrupt)
        if job and job.should_stop():
            raise jobs.Cancelled(f"cancelled during {running[0]}")

    def progress(stage: str, done: int, total: int):
        running[0] = stage
        interrupt()
        if job:
            job.status(phase=stage, step=done, total=total)
            job.log(f"{stage} ({done}/{total})")

    wb.interrupt = interrupt
    try:
        result = evaluate(wb, dict(request.adapters), inputs, request.settings, progress)
    except Stopped:  # a relearning loop saw the stop signal first
        raise jobs.Cancelled(f"cancelled during {running[0]}") from None
    result["adapters"] = {n: str(Path(p).expanduser().resolve()) for n, p in request.adapters.items()}
    return result
