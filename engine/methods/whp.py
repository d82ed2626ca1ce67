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
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from ..config import Section
from ..io import check_text_file
from .base import Batch, Method, Models, TrainData, token_ce


class WhpOptions(Section):
    anchors: str | None = None
    """Anchored-terms dictionary (.json or .csv). Required."""
    expert: str | None = None
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

    @classmethod
    def requirements(cls, data: dict) -> list[str]:
        opts = data.get("whp") if isinstance(data.get("whp"), dict) else {}
        p = []
        anchors = opts.get("anchors")
        if not anchors:
            p.append("anchors: required for method whp")
        elif isinstance(anchors, str) and (problem := check_text_file(anchors, "anchors")):
            p.append(problem)
        expert = opts.get("expert")
        if isinstance(expert, str) and expert and not Path(expert).is_dir():
            p.append(f"expert: not a directory: {expert}")
        if not expert and (data.get("reinforce") or {}).get("steps", 60) == 0:
            p.append("reinforce.steps: must be >= 1 without an expert")
        return p

    def alphas(self) -> list[float]:
        return sorted({float(a) for a in self.options.alphas} | {float(self.options.alpha)})

    def top_k(self) -> int:
        """Soft-label width the generic labels are built with (0: hard labels only)."""
        return self.options.soft_top_k if self.options.labels == "soft" else 0

    def label_units(self, n_blocks: int) -> int:
        return math.ceil(n_blocks / self.options.label_batch)

    def make_labels(self, run, on_progress=None):
        """Generic labels of every corpus block for every alpha, through the expert adapter on the
        run's base model (engine/labels.py; cached: the same inputs never run the model twice)."""
        from ..anchors import load_anchors
        from ..labels import generic_labels
        from ..models import Workbench

        anchors = load_anchors(self.options.anchors).check()
        wb = Workbench(run.model, run.tok, run.cfg.model)
        group = self.options.label_batch
        tick = (lambda done, n: on_progress(math.ceil(done / group))) if on_progress else None
        try:
            wb.add_adapter("expert", run.expert_dir)
            # Under accelerate each rank builds its share of the shards; rank 0 writes the set once.
            return generic_labels(wb, "expert", anchors, run.blocks, self.alphas(), run.cfg.seed, group,
                                  on_progress=tick if run.main else None, top_k=self.top_k(),
                                  rank=run.acc.process_index, world=run.acc.num_processes,
                                  barrier=run.acc.wait_for_everyone)
        finally:
            run.model = wb.release()

    def forget_data(self, run) -> TrainData:
        labels = run.labels  # the LabelSet of the labels phase
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
