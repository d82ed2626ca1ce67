"""The metrics table: every number an evaluation reports, what it means and which way is better.

The Evaluate page and the CLI's table both read METRICS (labels, order, direction), so a metric is
added here once and shows everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str  # the key in eval.json
    label: str  # short column label
    meaning: str  # one line: what it measures
    better: str | None  # "lower" | "higher" | None (no direction, e.g. the baseline's own level)
    group: str  # familiarity | memorisation | utility | robustness | in-context | relearning | ... | benchmarks


SOURCES = {"forget": "a corpus slice", "related": "related text", "unrelated": "unrelated text"}
QUANT = {"nf4": "NF4", "int8": "8-bit"}
METRICS: tuple[Metric, ...] = (
    Metric("familiarity_probability", "familiarity (prob.)",
           "mean P(first token of the answer | prompt about the target text)", "lower", "familiarity"),
    Metric("familiarity_probability_full", "familiarity (full answer)",
           "mean P(whole answer | prompt), chain rule with teacher forcing", "lower", "familiarity"),
    Metric("familiarity_answer_nll", "familiarity (nats/answer)",
           "mean -log P(whole answer | prompt) over the probability probes, in nats", "higher", "familiarity"),
    Metric("familiarity_completion", "familiarity (completion)",
           "share of greedy completions naming a term of the target text that the prompt did not", "lower",
           "familiarity"),
    Metric("familiarity_judge", "judge 0-3", "mean LLM-judge grade of the completions", "lower", "familiarity"),
    Metric("verbatim_token_match", "verbatim token match",
           "share of the true next tokens of corpus passages reproduced at their position", "lower", "memorisation"),
    Metric("verbatim_exact", "verbatim exact", "share of passages continued token for token", "lower",
           "memorisation"),
    Metric("verbatim_rougeL", "verbatim ROUGE-L", "ROUGE-L F1 of the continuation against the corpus", "lower",
           "memorisation"),
    Metric("extraction_strength", "extraction strength",
           "1 - the smallest share of a corpus passage from which greedy decoding reproduces the rest exactly",
           "lower", "memorisation"),
    Metric("retain_probability", "retain (prob.)", "mean P(answer) on neighbouring knowledge that must stay",
           "higher", "utility"),
    Metric("retain_probability_full", "retain (full answer)", "mean P(whole answer) on the retain probes",
           "higher", "utility"),
    Metric("retain_answer_nll", "retain (nats/answer)",
           "mean -log P(whole answer | prompt) over the retain probes, in nats", "lower", "utility"),
    Metric("retain_perplexity", "retain perplexity", "perplexity on a generic text", "lower", "utility"),
    Metric("robust_summary", "with summary", "familiarity (prob.) with a summary of the target before each prompt",
           "lower", "robustness"),
    Metric("robust_expert_preamble", "with expert preamble",
           "familiarity (prob.) after an 'you are an expert on ...' preamble", "lower", "robustness"),
    Metric("robust_few_shot", "with few-shot pairs",
           "familiarity (prob.) after three question/answer pairs about the target", "lower", "robustness"),
    Metric("context_summary_stated", "summary, stated",
           "familiarity with the summary in context, on probes whose answers it states (read, not recalled)",
           None, "in-context"),
    Metric("context_summary_unstated", "summary, unstated",
           "familiarity with the summary in context, on probes whose answers it does not state (recalled)",
           "lower", "in-context"),
    Metric("context_preamble_stated", "preamble, stated",
           "familiarity after the expert preamble, on probes whose answers it states", None, "in-context"),
    Metric("context_preamble_unstated", "preamble, unstated",
           "familiarity after the expert preamble, on probes whose answers it does not state", "lower", "in-context"),
    Metric("context_few_shot_stated", "few-shot, stated",
           "familiarity after the few-shot pairs, on probes whose answers they state", None, "in-context"),
    Metric("context_few_shot_unstated", "few-shot, unstated",
           "familiarity after the few-shot pairs, on probes whose answers they do not state", "lower", "in-context"),
    Metric("robust_relearn", "after relearning",
           "familiarity (prob.) after a few fine-tuning steps on the first corpus tokens (all probes)", "lower",
           "robustness"),
    *(Metric(f"relearn_{src}", f"relearn {src}",
             f"held-out familiarity after the last relearning step on {text} (answers never stated)", "lower",
             "relearning")
      for src, text in SOURCES.items()),
    *(Metric(f"relearn_recovered_{src}", f"recovered ({src})",
             f"(after - model) / (baseline - model) at the last step on {text}: 0 nothing back, 1 all of it",
             "lower", "relearning")
      for src, text in SOURCES.items()),
    *(Metric(f"familiarity_{q}", f"{name} merged",
             f"familiarity (prob.) with the adapter merged into the base and the merge quantised to {name}",
             "lower", "quantisation")
      for q, name in QUANT.items()),
    *(Metric(f"familiarity_{q}_unmerged", f"{name} unmerged",
             f"familiarity (prob.) with the adapter unmerged on a {name} base (QLoRA serving)", "lower",
             "quantisation")
      for q, name in QUANT.items()),
    Metric("probe_accuracy", "probe accuracy",
           "held-out balanced accuracy of the baseline's linear probe (target vs other prompts) on this model",
           "lower", "representation"),
    Metric("probe_accuracy_own", "probe accuracy (own)",
           "the same with a probe fit on this model's own hidden states: is the concept still linearly there?",
           "lower", "representation"),
    Metric("relearn_worst_recovered", "worst-case given back",
           "relearning curve with relearn_sweep: the largest share of the drop given back at the last step, over "
           "the sweep's learning rates and the sources", "lower", "relearning"),
    Metric("probe_fold_std", "probe spread",
           "standard deviation of the probe accuracy over the cross-validation folds (how much one split moves it)",
           None, "representation"),
    Metric("probe_layer", "probe block", "the block whose output the headline probe accuracy reads", None,
           "representation"),
)
BY_NAME = {m.name: m for m in METRICS}
# The WHP paper's benchmarks on Llama-2-7b-chat, before -> after unlearning (Eldan & Russinovich 2023,
# Table 1, as copied into the project's reference notes; OpenBookQA's pair is not in that copy).
PAPER_WHP: dict[str, tuple[float, float] | None] = {
    "arc_challenge": (0.440, 0.414), "arc_easy": (0.744, 0.724), "boolq": (0.807, 0.796),
    "hellaswag": (0.577, 0.557), "piqa": (0.767, 0.760), "winogrande": (0.663, 0.657), "openbookqa": None,
}
ROBUSTNESS = ("familiarity_probability", "robust_summary", "robust_expert_preamble", "robust_few_shot", "robust_relearn")


def metric(name: str) -> Metric:
    """The table's entry for a metric; an unknown one (bench_*, a newer metric) gets a plain entry."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith("bench_"):
        return Metric(name, name.removeprefix("bench_"), "benchmark accuracy (lm-evaluation-harness)", "higher",
                      "benchmarks")
    return Metric(name, name, "", None, "other")


def comes_back(models: dict[str, dict], attacks: list[str]) -> dict[str, dict[str, float | None]]:
    """{model: {attack: familiarity under it / plain familiarity}}: how much an attack brings back
    (1 = no change; None where either is missing or the plain one is 0)."""
    out = {}
    for m, v in models.items():
        plain = v.get("familiarity_probability")
        out[m] = {k: v[k] / plain if v.get(k) is not None and plain else None for k in attacks}
    return out


def is_scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalar_keys(models: dict) -> list[str]:
    """The table's columns: metrics some model has a number for, in table order. Curves and
    per-attack details (dicts) are drawn, not tabulated."""
    return [k for k in ordered({k for v in models.values() for k in v}) if any(is_scalar(v.get(k)) for v in models.values())]


def ordered(names) -> list[str]:
    """Metric names in table order, unknown ones last (sorted)."""
    names = set(names)
    return [m.name for m in METRICS if m.name in names] + sorted(names - set(BY_NAME))


def format_table(result: dict) -> str:
    """The CLI's plain-text table of an evaluation result."""
    names = list(result["models"])
    keys = scalar_keys(result["models"])
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"model: {result['model']}   ({result['seconds']} s)",
             f"{'metric':<30}" + "".join(f"{n:>{width}}" for n in names)]
    for k in keys:
        cells = []
        for m in names:
            v = result["models"][m].get(k)
            cells.append(f"{f'{v:.4g}' if is_scalar(v) else '-':>{width}}")
        lines.append(f"{k:<30}" + "".join(cells))
    for m in names:  # curves: one line per model and source
        c = result["models"][m].get("relearn_curve") or {}
        for src, pts in c.get("sources", {}).items():
            fam = " ".join(f"{s}:{f:.3g}" for s, f in zip(c["steps"], pts["familiarity"]))
            rec = " ".join("-" if r is None else f"{r:+.2f}" for r in pts["recovered"])
            lines.append(f"relearn curve {m} / {src}: familiarity {fam}; recovered {rec}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
