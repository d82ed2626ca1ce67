"""In-context attacks: knowledge put in the context before every probe.

    contexts     the attacks a probes file supports: its summary of the target, its "expert"
                 preamble, and a few-shot block of its question/answer pairs
    stated       per probe: does the context state its answer (whole word, engine/text.py)?
    in_context   familiarity with a context before every probe; the context runs once and its
                 key/value cache is reused

A context that states an answer is read, not remembered: even a model that never knew the answer
uses it (Shumailov et al. 2024). Only the probes whose answers the context does not state measure
knowledge coming back from the weights, so every attack is scored on the two groups apart.
The relearning attack is engine/evaluation/relearn.py; quantisation is quantize.py.
"""
from __future__ import annotations

from ..models import Workbench
from ..probes import continuation_logprobs, first_token_probabilities
from ..text import mentions

ATTACKS = {"summary": "robust_summary", "preamble": "robust_expert_preamble", "few_shot": "robust_few_shot"}
FIELDS = {"summary": "summary", "preamble": "expert_preamble", "few_shot": "few_shot list"}  # in the probes file


def few_shot_text(pairs: list[dict]) -> str:
    """Question/answer pairs as a prompt block: 'Question: ...\\nAnswer: ...' separated by blank lines."""
    return "\n\n".join(f"Question: {p['question'].strip()}\nAnswer: {p['answer'].strip()}" for p in pairs)


def contexts(probes) -> dict[str, str]:
    """attack -> context text, for the attacks this probes file has text for."""
    texts = {"summary": probes.summary, "preamble": probes.expert_preamble,
             "few_shot": few_shot_text(probes.few_shot)}
    return {k: v for k, v in texts.items() if v.strip()}


def stated(context: str, probes: list[dict]) -> list[bool]:
    """Per probability probe: does `context` name its answer (the target, stripped) as a whole word?"""
    return [mentions(context, p["target"].strip()) for p in probes]


def in_context(wb: Workbench, context: list[int], items: list[tuple[list[int], list[int]]], name: str | None,
               budget: int) -> list[float]:
    """P(first target token | context + prompt) per (prompt ids, target ids), adapter `name`."""
    rows = [(p + t[:-1], name) for p, t in items]
    lps = wb.logits_after(context, rows, lambda i, lg: continuation_logprobs(lg, len(items[i][0]), items[i][1]).cpu(),
                          budget)
    return first_token_probabilities(lps)
