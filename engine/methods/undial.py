"""UNDIAL (Dong et al. 2024, self-distillation with adjusted logits): distil towards the reference
with the memorised token pushed down.

Target per labelled position i: q_i = softmax(z_ref,i - beta * onehot(labels[i])); loss = mean over
labelled positions of CE(z_theta,i, q_i). The closest relative of WHP's logit subtraction: it lowers
exactly the token the text has there, and nothing else. Rows without a label (-100) are masked (the
reference framework forgets to).
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..sections import Section
from ..data import IGNORE
from .base import Batch, Method, Models


class UndialOptions(Section):
    beta: float = Field(10.0, ge=0, le=1000)
    """How far the text's own next token is pushed down in the target (logits, the paper: 10)."""


class UNDIAL(Method):
    name = "undial"
    Options = UndialOptions
    label = "UNDIAL"

    def loss(self, models: Models, batch: Batch):
        keep = batch.labels != IGNORE  # (B, T)
        ref = models.reference_logits(batch)  # (B, T, V), no grad
        ref.scatter_add_(-1, batch.labels.clamp(min=0)[..., None],
                         torch.full_like(ref[..., :1], -self.options.beta))  # z_ref - beta * onehot(label)
        q = ref.softmax(-1)
        logp = models.logits(batch).float().log_softmax(-1)
        ce = -(q * logp).sum(-1)  # (B, T)
        return ce[keep].sum() / keep.sum().clamp(min=1)
