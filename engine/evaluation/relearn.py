"""The relearning curve: how much forgotten knowledge a few fine-tuning steps bring back.

    split            a held-out group of probability probes and, per source text, the sentences that
                     state none of their answers (whole words, engine/text.py): relearning on a slice
                     never shows the model the answers it is scored on
    curve            one LoRA run per model and source (a copy of the model's adapter; a fresh LoRA for
                     the baseline), familiarity of the held-out group measured at each requested step
    recovered        (after - model) / (baseline - model) per step: 0 = nothing came back, 1 = back
                     to the untouched baseline; None where the model forgot nothing of the group

Sources (Hu et al. 2025; Deeb & Roger 2024): a slice of the forget corpus, loosely related text (other
fantasy) and unrelated text. The baseline gets the same attack: how much an untouched model moves
on the same data is the reference for the others.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch

from ..models import Workbench
from ..text import mentions

SOURCES = ("forget", "related", "unrelated")
BLOCK = 128  # tokens per relearning block
MIN_DROP = 0.05  # below 5% of the baseline's familiarity forgotten, a recovered fraction is noise
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The text cut after . ! ? and at line breaks (headings are lines of their own)."""
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def answer(probe: dict) -> str:
    """A probability probe's answer as a word: the target without its leading space."""
    return probe["target"].strip()


def stating(text_sentences: list[str], answers: list[str]) -> list[bool]:
    """Per sentence: does it name any of `answers` as a whole word?"""
    return [any(mentions(s, a) for a in answers) for s in text_sentences]


@dataclass
class Split:
    held_out: list[int]  # indices into the probability probes: scored, never stated by a slice
    slices: dict[str, str]  # source -> the text relearning trains on (sentences joined)


def split(probes: list[dict], texts: dict[str, str], tokens: int, count_tokens) -> Split:
    """Choose the held-out probes and each source's slice.

    Probes are taken rarest answer first (fewest forget-corpus sentences naming it), up to half of
    them (the rest may be stated, so the slice can still be about the target), while the forget
    corpus keeps min(tokens, half its length) tokens of sentences naming none of the held-out
    answers. Each slice is the first `tokens` tokens of its source's free sentences.
    count_tokens(text) -> int.
    """
    answers = [answer(p) for p in probes]
    forget = sentences(texts.get("forget", ""))
    sizes = [count_tokens(s) + 1 for s in forget]
    need = min(tokens, sum(sizes) // 2)
    hits = [[mentions(s, a) for s in forget] for a in answers]
    held: list[int] = []
    free = [True] * len(forget)
    for i in sorted(range(len(probes)), key=lambda i: (sum(hits[i]), i)):
        if len(held) >= len(probes) // 2:
            break
        trial = [f and not h for f, h in zip(free, hits[i])]
        if sum(n for n, f in zip(sizes, trial) if f) >= need:
            held.append(i)
            free = trial
    held.sort()
    kept = [answers[i] for i in held]
    slices = {}
    for source, text in texts.items():
        out, n = [], 0
        for s, bad in zip(sents := sentences(text), stating(sents, kept)):
            if n >= tokens:
                break
            if not bad:
                out.append(s)
                n += count_tokens(s) + 1
        slices[source] = " ".join(out)
    return Split(held, slices)


def recovered(after: float | None, model: float | None, baseline: float | None,
              min_drop: float = MIN_DROP) -> float | None:
    """(after - model) / (baseline - model): the share of the forgotten familiarity that came back.

    0: nothing came back; 1: back at the untouched baseline; above 1: past it; below 0: forgotten
    further. None when the model forgot at most `min_drop` of the baseline's familiarity on the
    group (the baseline itself, an expert, a model that barely moved): there is nothing to recover,
    and a ratio over a zero, negative or tiny drop means nothing.
    """
    if after is None or model is None or baseline is None or baseline - model <= min_drop * baseline:
        return None
    return (after - model) / (baseline - model)


# The sweep of the worst-case relearning attack, by model size: the rates a LoRA fine-tune of that size
# trains stably at (the low end) up to the highest that still does not diverge in the project's checks
# on SmolLM2-135M (1e-3); larger models tolerate less. At least three rates, so a method tuned against
# one rate's attack is still met by another.
SWEEP_RATES = ((3e8, (1e-4, 3e-4, 1e-3)), (3e9, (3e-5, 1e-4, 3e-4)), (float("inf"), (1e-5, 3e-5, 1e-4)))


def sweep_rates(params: float) -> tuple[float, ...]:
    """The learning rates of the worst-case relearning sweep for a model of `params` parameters."""
    return next(rates for ceiling, rates in SWEEP_RATES if params <= ceiling)


def worst_case(by_lr: dict[float, list[float | None]]) -> tuple[list[float | None], list[float | None]]:
    """Per step, the largest share given back over the rates and the rate that gave it (None where no
    rate has a share: nothing was forgotten)."""
    steps = len(next(iter(by_lr.values())))
    worst, at = [], []
    for k in range(steps):
        found = [(v[k], lr) for lr, v in by_lr.items() if v[k] is not None]
        best = max(found, default=(None, None))
        worst.append(best[0])
        at.append(best[1])
    return worst, at


def curve(wb: Workbench, name: str | None, blocks: list[list[int]], items: list[tuple[list[int], list[int]]],
          steps: list[int], lr: float, rank: int, seed: int, batch_size: int = 4) -> list[list[float]]:
    """P(first target token | prompt) of each item at each of `steps` (sorted, from one run of
    max(steps) LoRA steps of a trainable copy of `name` on `blocks`)."""
    from ..data import pad, pad_blocks
    from ..methods import NextToken, TrainData
    from ..probes import first_token_probabilities, score
    from ..train import Hooks, TrainSpec, train

    want = sorted(set(steps))
    ids, lengths = pad_blocks(blocks, wb.tokenizer.pad_token_id)
    spec = TrainSpec("relearn", NextToken(), TrainData.next_token(ids, lengths), steps=max(want), lr=lr,
                     batch_size=min(batch_size, len(blocks)), seed=seed)
    found: dict[int, list[float]] = {}
    step = [0]  # the probe runs at step 0, then after every step (probe_every=1)

    with wb.trainable_copy(name, rank=rank, seed=seed) as (model, _):
        def forward(rows):  # the copy is the only active adapter: a plain forward is the copy
            x, mask = pad([r[0] for r in rows], wb.tokenizer.pad_token_id)
            logits = model(input_ids=x.to(wb.device), attention_mask=mask.to(wb.device)).logits  # (B, T, V)
            return [logits[j, : len(r[0])].float() for j, r in enumerate(rows)]

        def probe(m) -> dict:
            if step[0] in want:
                m.eval()
                with torch.no_grad():
                    found[step[0]] = first_token_probabilities(score(forward, [(p, t, None) for p, t in items]))
            step[0] += 1
            return {}

        if max(want) == 0:
            probe(model)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gradient-checkpointing deprecation chatter from transformers
                train(model, spec, Hooks(probe=probe, probe_every=1, should_stop=lambda: wb.interrupt() or False))
    return [found[s] for s in steps]
