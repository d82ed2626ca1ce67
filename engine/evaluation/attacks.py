"""Attacks that test whether forgetting holds: knowledge put in the context, and relearning.

    in_context   familiarity with a text (a summary of the target, an "expert" preamble) before
                 every probe; the text runs once and its key/value cache is reused
    relearn      a trainable copy of each model's adapter (a fresh LoRA for the baseline) fine-tuned
                 for a few steps on a slice of the corpus, then familiarity again
"""
from __future__ import annotations

import warnings

import torch

from ..data import pad_blocks
from ..methods import NextToken, TrainData
from ..models import Workbench
from ..probes import continuation_logprobs, first_token_probabilities, score


def in_context(wb: Workbench, context: list[int], items: list[tuple[list[int], list[int]]], name: str | None,
               budget: int) -> list[float]:
    """P(first target token | context + prompt) per (prompt ids, target ids), adapter `name`."""
    rows = [(p + t[:-1], name) for p, t in items]
    lps = wb.logits_after(context, rows, lambda i, lg: continuation_logprobs(lg, len(items[i][0]), items[i][1]).cpu(),
                          budget)
    return first_token_probabilities(lps)


def relearn(wb: Workbench, name: str | None, blocks: list[list[int]], items: list[tuple[list[int], list[int]]],
            steps: int, lr: float, rank: int, seed: int, budget: int) -> list[float]:
    """P(first target token | prompt) per item after `steps` LoRA steps of a copy of `name` on `blocks`."""
    from ..train import TrainSpec, train

    ids, lengths = pad_blocks(blocks, wb.tokenizer.pad_token_id)
    spec = TrainSpec("relearn", NextToken(), TrainData.next_token(ids, lengths), steps=steps, lr=lr,
                     batch_size=len(blocks), seed=seed)
    with wb.trainable_copy(name, rank=rank, seed=seed) as (model, copy):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gradient-checkpointing deprecation chatter from transformers
            train(model, spec)
        model.eval()
        with torch.no_grad():
            return first_token_probabilities(score(wb.logits, [(p, t, copy) for p, t in items], budget))
