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
    group: str  # familiarity | memorisation | utility | robustness | benchmarks


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
    Metric("robust_relearn", "after relearning",
           "familiarity (prob.) after a few fine-tuning steps on a slice of the corpus", "lower", "robustness"),
)
BY_NAME = {m.name: m for m in METRICS}
ROBUSTNESS = ("familiarity_probability", "robust_summary", "robust_expert_preamble", "robust_relearn")


def metric(name: str) -> Metric:
    """The table's entry for a metric; an unknown one (bench_*, a newer metric) gets a plain entry."""
    if name in BY_NAME:
        return BY_NAME[name]
    if name.startswith("bench_"):
        return Metric(name, name.removeprefix("bench_"), "benchmark accuracy (lm-evaluation-harness)", "higher",
                      "benchmarks")
    return Metric(name, name, "", None, "other")


def ordered(names) -> list[str]:
    """Metric names in table order, unknown ones last (sorted)."""
    names = set(names)
    return [m.name for m in METRICS if m.name in names] + sorted(names - set(BY_NAME))


def format_table(result: dict) -> str:
    """The CLI's plain-text table of an evaluation result."""
    names = list(result["models"])
    keys = [k for k in ordered({k for m in names for k in result["models"][m]})
            if any(result["models"][m].get(k) is not None for m in names)]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"model: {result['model']}   ({result['seconds']} s)",
             f"{'metric':<30}" + "".join(f"{n:>{width}}" for n in names)]
    for k in keys:
        cells = []
        for m in names:
            v = result["models"][m].get(k)
            cells.append(f"{'-' if v is None else f'{v:.4g}':>{width}}")
        lines.append(f"{k:<30}" + "".join(cells))
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
