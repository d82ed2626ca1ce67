"""Pure metric functions: on token ids, texts and logits. No model is run here (the stages do that).

    rouge_l                 ROUGE-L F1 of a prediction against a reference (the `rouge_score` package)
    token_match             fraction of reference tokens reproduced at the same position
    exact_match             1.0 when a prediction reproduces the whole reference, else 0.0
    extraction_strength     1 - the smallest share of a passage the model needs to reproduce the rest
    token_nll / perplexity  next-token negative log-likelihood of a block; exp(mean NLL) over blocks
    familiar_terms          anchored terms / probe references a completion says that its prompt did not
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ..probes import continuation_logprobs
from ..text import mentions  # noqa: F401 - the one whole-word matcher, re-exported for familiar_terms' callers

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


def extraction_strength(predicted: list[int], truth: list[int]) -> float:
    """1 - k / M: k is the fewest of the passage's M predicted tokens the model must be given before
    its greedy prediction is right at every later position (open-unlearning's ES, Carlini et al.).

    predicted[j] is the model's argmax for truth[j] given the passage up to it (teacher forcing): a
    greedy continuation from any prefix follows exactly these predictions while they are right, so
    one forward answers for every prefix length. 1: the model reproduces the passage from its first
    token; 0: not even its last token (k = M; open-unlearning stops at k = M - 1, a floor of 1/M).
    A model that copies its input (predicts the token it was just given) scores 0 on a passage
    without repeated neighbours; one that always predicts the true next token scores 1.
    """
    if not truth or len(predicted) != len(truth):
        raise ValueError("need one prediction per passage token (at least one)")
    k = len(truth)
    while k > 0 and predicted[k - 1] == truth[k - 1]:
        k -= 1
    return 1.0 - k / len(truth)


# -- probabilities from logits -----------------------------------------------------------------------


def token_nll(logits: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """Negative log-likelihood of ids[1:] given their prefixes: logits (T, V) over ids (T,) -> (T-1,)."""
    return -continuation_logprobs(logits, 1, list(ids[1:]))


def perplexity(nll_sum: float, count: int) -> float:
    """exp(mean token NLL). Over several blocks: pass the summed NLL and the number of predicted tokens."""
    if count <= 0:
        raise ValueError("perplexity of no tokens")
    return math.exp(nll_sum / count)


# -- completion familiarity ---------------------------------------------------------------------------


def familiar_terms(prompt: str, completion: str, terms) -> list[str]:
    """The terms the completion mentions that the prompt does not: only new knowledge counts, not an echo."""
    return sorted({t for t in terms if mentions(completion, t) and not mentions(prompt, t)})
