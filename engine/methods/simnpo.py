"""SimNPO (Fan et al. 2024, "Simplicity prevails"): NPO without a reference model.

Per forget sequence, with S / L = the mean NLL of its labelled tokens,
    loss = forget_weight * (-(2 / beta) * log sigmoid(beta * (S / L - delta)))
(batch mean); the retain term is added by the loop with retain.weight (the paper: 1).
Defaults as open-unlearning's: beta 4.5, delta 0, forget weight 0.125.
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from ..sections import Section
from .base import Batch, Method, Models, sequence_nll


class SimNpoOptions(Section):
    beta: float = Field(4.5, gt=0, le=100)
    """beta of the SimNPO loss, on the length-normalised NLL."""
    delta: float = Field(0.0, ge=0)
    """Margin delta: forgetting stops pushing once the mean NLL passes it by enough."""
    forget_weight: float = Field(0.125, gt=0)
    """Weight of the forget term (the retain term's is retain.weight)."""


class SimNPO(Method):
    name = "simnpo"
    Options = SimNpoOptions
    label = "SimNPO"

    def loss(self, models: Models, batch: Batch):
        s, n = sequence_nll(models.logits(batch), batch.labels)  # (B,), (B,)
        o = self.options
        per_seq = -(2.0 / o.beta) * F.logsigmoid(o.beta * (s / n.clamp(min=1) - o.delta))
        return o.forget_weight * per_seq.mean()
