"""WHP (Eldan & Russinovich 2023, arXiv 2310.02238): fine-tune on generic labels.

Phases: reinforce (the expert, unless one is given), labels (per block: translate the anchored
terms, one batched forward for baseline(translated) and expert(original),
`generic = base(translated) - alpha * relu(expert(original) - base(translated))`, cached; see
engine/labels.py), unlearn (this loss). Inputs stay the original tokens; labels[i] is the generic
target of the prediction AT position i, IGNORE where the alignment gives none.

    hard  cross-entropy to argmax(generic) (the paper)
    soft  cross-entropy to the generic distribution's top-k tokens, renormalised: keeps the
          baseline's uncertainty at the many positions where nothing is forgotten
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field

from ..sections import Directory, Section, TextFile
from .base import Batch, Corpus, LabelInputs, Method, Models, TrainData, token_ce


class WhpOptions(Section):
    anchors: TextFile | None = None
    """Anchored-terms dictionary (.json or .csv). Required."""
    expert: Directory | None = None
    """An existing expert (LoRA adapter directory or full checkpoint): the run then skips reinforce."""
    alpha: float = Field(5.0, ge=0, le=1000)
    """The alpha of the generic labels used to unlearn (the paper: 5)."""
    alphas: list[float] = Field(default_factory=lambda: [2.5, 5.0, 10.0], min_length=1, max_length=16)
    """Alphas computed (and cached) at once, so another alpha needs no new forward passes."""
    labels: Literal["hard", "soft"] = "hard"
    """hard: argmax of the generic logits (the paper); soft: cross-entropy to the top soft_top_k generic tokens."""
    soft_top_k: int = Field(32, ge=1, le=1024)
    """Width of the soft labels (tokens kept per position)."""
    label_batch: int = Field(4, ge=1, le=1024)
    """Blocks per batched forward when building generic labels (two sequences each)."""


def soft_cross_entropy(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept positions of -sum_j q_j log p(top_ids_j), q = softmax(top_logp) (the top-k renormalised).

    logits (B, T, V); top_ids, top_logp (B, T, k); keep (B, T) bool.
    """
    logp = logits.float().log_softmax(-1).gather(-1, top_ids.long())  # (B, T, k)
    q = torch.where(keep[..., None], top_logp.float(), 0.0).softmax(-1)  # unkept rows: finite, then dropped
    return -(q * logp).sum(-1)[keep].sum() / keep.sum().clamp(min=1)


class WHP(Method):
    name = "whp"
    Options = WhpOptions
    phases = ("reinforce", "labels", "unlearn")
    label = "WHP"
    main_options = ("anchors", "alpha", "labels")

    @classmethod
    def requirements(cls, cfg) -> list[str]:
        p = [] if cfg.whp.anchors else ["anchors: required for method whp"]
        if not cfg.whp.expert and cfg.reinforce.steps == 0:
            p.append("reinforce.steps: must be >= 1 without an expert")
        return p

    def alphas(self) -> list[float]:
        return sorted({float(a) for a in self.options.alphas} | {float(self.options.alpha)})

    def top_k(self) -> int:
        """Soft-label width the generic labels are built with (0: hard labels only)."""
        return self.options.soft_top_k if self.options.labels == "soft" else 0

    def label_units(self, n_blocks: int) -> int:
        return math.ceil(n_blocks / self.options.label_batch)

    def make_labels(self, inputs: LabelInputs) -> "WhpTargets":
        """Generic labels of every corpus block for every alpha, through the expert adapter on the
        run's base model (engine/labels.py; cached: the same inputs never run the model twice)."""
        from ..anchors import load_anchors
        from ..labels import generic_labels

        anchors = load_anchors(self.options.anchors).check()
        wb, group = inputs.wb, self.options.label_batch
        tick = (lambda done, n: inputs.on_progress(math.ceil(done / group))) if inputs.on_progress else None
        wb.add_adapter("expert", inputs.expert_dir)
        try:
            # Under accelerate each rank builds its share of the shards; rank 0 writes the set once.
            return WhpTargets(generic_labels(wb, "expert", anchors, inputs.corpus.blocks, self.alphas(), inputs.seed,
                                             group, on_progress=tick, top_k=self.top_k(), rank=inputs.rank,
                                             world=inputs.world, barrier=inputs.barrier), self.options.alpha)
        finally:
            wb.remove_adapter("expert")

    def forget_data(self, corpus: Corpus, targets: "WhpTargets | None" = None) -> TrainData:
        labels = targets.labels
        data = TrainData(labels.ids, labels.lengths, labels.for_alpha(self.options.alpha))
        if self.options.labels == "soft":
            data.extra["soft_ids"], data.extra["soft_logp"] = labels.soft_for_alpha(self.options.alpha)
        return data

    def loss(self, models: Models, batch: Batch):
        logits = models.logits(batch)
        if self.options.labels == "soft":
            keep = batch.labels != -100
            return soft_cross_entropy(logits, batch.extra["soft_ids"], batch.extra["soft_logp"], keep)
        return token_ce(logits, batch.labels)


@dataclass
class WhpTargets:
    """The labels phase's result: the generic label set (engine/labels.LabelSet) and the alpha trained on."""

    labels: object  # a LabelSet
    alpha: float

    def info(self) -> dict:
        return {**self.labels.info(), "alpha": self.alpha}
