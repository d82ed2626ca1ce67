"""Pure metric functions: on token ids, texts and logits. No model is run here (engine.evaluate does that).

    rouge_l                 ROUGE-L F1 of a prediction against a reference (the `rouge_score` package)
    token_match             fraction of reference tokens reproduced at the same position
    exact_match             1.0 when a prediction reproduces the whole reference, else 0.0
    continuation_logprobs   log P(each target token | everything before it) from one forward's logits
    token_nll / perplexity  next-token negative log-likelihood of a block; exp(mean NLL) over blocks
    familiar_terms          anchored terms / probe references a completion says that its prompt did not
"""
from __future__ import annotations

import math
import re
from functools import lru_cache

import torch

# -- verbatim memorisation --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # No stemming: memorisation is about the very words. rouge_score lowercases and keeps [a-z0-9] tokens.
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (longest common subsequence of words). 0.0 when either side has no words."""
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


def token_match(prediction: list[int], reference: list[int]) -> float:
    """Fraction of the reference's tokens the prediction has at the same position (a short prediction
    misses the rest). The per-passage term of the verbatim token-match rate."""
    if not reference:
        raise ValueError("empty reference")
    return sum(p == r for p, r in zip(prediction, reference)) / len(reference)


def exact_match(prediction: list[int], reference: list[int]) -> float:
    """1.0 when the prediction starts with the whole reference (full extraction), else 0.0."""
    if not reference:
        raise ValueError("empty reference")
    return float(list(prediction[: len(reference)]) == list(reference))


# -- probabilities from logits -----------------------------------------------------------------------


def continuation_logprobs(logits: torch.Tensor, start: int, targets: list[int]) -> torch.Tensor:
    """log P(targets[j] | ids[: start + j]) for a forward over ids = prompt + targets[:-1].

    logits: (T, V) next-token logits of that forward, start = len(prompt). The prediction made at
    position start - 1 + j is for targets[j]. Returns (len(targets),).
    """
    n = len(targets)
    rows = logits[start - 1: start - 1 + n].float()  # (n, V)
    if rows.shape[0] != n:
        raise ValueError(f"logits cover {logits.shape[0]} positions, need {start - 1 + n}")
    idx = torch.tensor(targets, device=rows.device).unsqueeze(1)  # (n, 1)
    return torch.log_softmax(rows, dim=-1).gather(1, idx).squeeze(1)


def token_nll(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Negative log-likelihood of ids[1:] given their prefixes: logits (T, V) over ids (T,) -> (T-1,)."""
    return -continuation_logprobs(logits, 1, list(ids[1:]))


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean token NLL). Over several blocks: pass the summed NLL and the number of predicted tokens."""
    if count <= 0:
        raise ValueError("perplexity of no tokens")
    return math.exp(nll_sum / count)


# -- completion familiarity ---------------------------------------------------------------------------


def _term_pattern(term: str) -> re.Pattern:
    # Whole word, as written; a term written in lower case also matches capitalised at a sentence start.
    # (?<!\w) / (?!\w) rather than \b so terms that end in punctuation ("Mr.") still anchor.
    body = re.escape(term)
    if term[:1].islower():
        body = f"[{re.escape(term[0])}{re.escape(term[0].upper())}]" + re.escape(term[1:])
    return re.compile(rf"(?<!\w){body}(?!\w)")


@lru_cache(maxsize=20000)
def _compiled(term: str) -> re.Pattern:
    return _term_pattern(term)


def mentions(text: str, term: str) -> bool:
    """Whether `text` contains `term` as a whole word (see _term_pattern)."""
    return bool(term.strip()) and _compiled(term.strip()).search(text) is not None


def familiar_terms(prompt: str, completion: str, terms) -> list[str]:
    """The terms the completion mentions that the prompt does not: only new knowledge counts, not an echo."""
    return sorted({t for t in terms if mentions(completion, t) and not mentions(prompt, t)})


def completion_familiarity(prompts: list[str], completions: list[str], terms_per_prompt: list) -> float:
    """Fraction of completions that name at least one term absent from their prompt."""
    if not prompts or len(prompts) != len(completions) or len(prompts) != len(terms_per_prompt):
        raise ValueError("need as many completions and term lists as prompts (at least one)")
    hits = sum(bool(familiar_terms(p, c, t)) for p, c, t in zip(prompts, completions, terms_per_prompt))
    return hits / len(prompts)
