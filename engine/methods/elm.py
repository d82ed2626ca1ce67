"""An ELM-style guided target (Gandikota et al. 2024/25, "Erasing Conceptual Knowledge from Language
Models"): a generic target from the frozen baseline alone, no expert adapter, no dictionary.

Per position i of the forget text, with the baseline's logits divided by a temperature tau,
    log p*_i = log p(.|x_<i) + eta_i * [log p(.|novice, x_<i) - log p(.|expert, x_<i)]
where `novice` / `expert` are persona prefixes about the concept and eta_i ramps linearly from 0 at
the first token to eta after `ramp` tokens (a few tokens of context before the personas can steer).
The top_k tokens of p* are kept and renormalised; training is WHP's soft-label cross-entropy. The same
target is shown per token in Inspect as the "generic" row (engine/inspection.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import Field

from ..sections import Section
from ..data import IGNORE
from .base import Batch, Corpus, LabelInputs, Method, Models, TrainData
from .whp import soft_cross_entropy


class ElmOptions(Section):
    concept: str = Field("the subject of the text", min_length=1)
    """What is erased, as the persona prefixes name it (e.g. the title of the books in the corpus)."""
    novice: str = "The following text is written by someone who knows nothing about {concept}.\n"
    """The novice persona prefix ({concept} is filled in)."""
    expert: str = "The following text is written by an expert on {concept}.\n"
    """The expert persona prefix ({concept} is filled in)."""
    eta: float = Field(2.0, ge=0, le=100)
    """Strength of the novice-minus-expert push (large eta saturates to one-hot labels)."""
    ramp: int = Field(16, ge=1)
    """Tokens over which eta ramps up from 0."""
    temperature: float = Field(1.2, gt=0)
    """The baseline's logits are divided by this before the log-softmaxes."""
    top_k: int = Field(50, ge=1, le=1024)
    """Tokens of the target kept per position (renormalised)."""
    label_batch: int = Field(4, ge=1, le=256)
    """Blocks per batched forward when building the targets (three sequences each)."""


@dataclass
class ElmParts:
    """The eta-free pieces of the ELM target of one sequence; same interface as generic.GenericParts."""

    rows: torch.Tensor  # (T,) every position has a target
    base: torch.Tensor  # (T, V) log p(.|x_<i) at temperature tau
    gap: torch.Tensor  # (T, V) log p(.|novice, x_<i) - log p(.|expert, x_<i)
    ramp: int
    length: int
    forbid_rows: torch.Tensor = None  # never any: kept for GenericParts' interface
    forbid_cols: torch.Tensor = None

    def logits(self, eta: float, part: slice | None = None) -> torch.Tensor:
        """(T, V) unnormalised log p* for one eta; with `part`, those rows only."""
        part = part or slice(None)
        pos = torch.arange(self.length, device=self.base.device, dtype=self.base.dtype)[part]
        eta_i = eta * (pos / self.ramp).clamp(max=1.0)  # (t,)
        return self.base[part] + eta_i[:, None] * self.gap[part]

    def labels(self, eta: float) -> torch.Tensor:
        return self.logits(eta).argmax(-1)

    def soft(self, eta: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.logits(eta).log_softmax(-1).topk(min(k, self.base.shape[-1]), dim=-1)
        return top.indices, top.values


def elm_parts(base: torch.Tensor, novice: torch.Tensor, expert: torch.Tensor, options: ElmOptions) -> ElmParts:
    """base, novice, expert: (T, V) baseline logits at the sequence's own positions (the persona rows
    already cut to the text after their prefix)."""
    tau = options.temperature
    lp = lambda z: (z.float() / tau).log_softmax(-1)  # noqa: E731
    T = base.shape[0]
    return ElmParts(torch.arange(T, device=base.device), lp(base), lp(novice) - lp(expert), options.ramp, T,
                    torch.zeros(0, dtype=torch.long, device=base.device),
                    torch.zeros(0, dtype=torch.long, device=base.device))


def persona_prefixes(tokenizer, options: ElmOptions) -> tuple[list[int], list[int]]:
    """Token ids of the novice and expert prefixes (with the tokenizer's special tokens: they start a text)."""
    enc = lambda s: tokenizer(s.format(concept=options.concept), add_special_tokens=True)["input_ids"]  # noqa: E731
    return enc(options.novice), enc(options.expert)


def targets(wb, blocks: list[list[int]], options: ElmOptions, on_progress=None):
    """Soft targets of every block: ((N, T, k) int32 ids, (N, T, k) float16 log-probs, (N, T) labels).

    One batched forward per group of blocks: each block alone, after the novice prefix and after the
    expert prefix, through the baseline (adapters off)."""
    from ..data import pad_blocks

    novice, expert = persona_prefixes(wb.tokenizer, options)
    ids, lengths = pad_blocks(blocks, wb.tokenizer.pad_token_id)
    N, T = ids.shape
    k = options.top_k
    soft_ids = torch.zeros((N, T, k), dtype=torch.int32)
    soft_logp = torch.full((N, T, k), -float("inf"), dtype=torch.float16)
    labels = torch.full((N, T), IGNORE, dtype=torch.long)
    group = options.label_batch
    for g0 in range(0, N, group):
        chunk = list(range(g0, min(g0 + group, N)))
        rows = []
        for i in chunk:
            rows += [(blocks[i], None), (novice + blocks[i], None), (expert + blocks[i], None)]
        logits = wb.logits(rows)
        for j, i in enumerate(chunk):
            b, nv, ex = logits[3 * j], logits[3 * j + 1][len(novice):], logits[3 * j + 2][len(expert):]
            parts = elm_parts(b, nv, ex, options)
            L = len(blocks[i])
            top_ids, top_logp = parts.soft(options.eta, k)
            soft_ids[i, :L], soft_logp[i, :L] = top_ids.int().cpu(), top_logp.half().cpu()
            labels[i, : L - 1] = parts.labels(options.eta)[: L - 1].cpu()  # the last position predicts past the block
        del logits
        if on_progress:
            on_progress(chunk[-1] + 1)
    return soft_ids, soft_logp, labels


@dataclass
class ElmTargets:
    """The labels phase's result for ELM: the forget rows with their soft targets."""

    data: TrainData
    seconds: float = 0.0

    def info(self) -> dict:
        return {"labelled": int((self.data.labels != IGNORE).sum()), "blocks": len(self.data), "cached": False}


class ELM(Method):
    name = "elm"
    Options = ElmOptions
    phases = ("labels", "unlearn")
    label = "ELM-style"

    def label_units(self, n_blocks: int) -> int:
        return -(-n_blocks // self.options.label_batch)

    def make_labels(self, inputs: LabelInputs) -> ElmTargets:
        tick = inputs.on_progress
        soft_ids, soft_logp, labels = targets(inputs.wb, inputs.corpus.blocks, self.options,
                                              (lambda done: tick(-(-done // self.options.label_batch)))
                                              if tick else None)
        c = inputs.corpus
        return ElmTargets(TrainData(c.ids, c.lengths, labels, {"soft_ids": soft_ids, "soft_logp": soft_logp}))

    def forget_data(self, corpus: Corpus, targets: ElmTargets | None = None) -> TrainData:
        return targets.data

    def loss(self, models: Models, batch: Batch):
        keep = batch.labels != IGNORE
        return soft_cross_entropy(models.logits(batch), batch.extra["soft_ids"], batch.extra["soft_logp"], keep)
