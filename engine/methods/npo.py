"""NPO (Zhang et al. 2024, "Negative Preference Optimization"): bounded forgetting.

Per forget sequence, with S = the summed NLL of its labelled tokens,
    loss = (2 / beta) * log(1 + exp(-beta * (S_theta - S_ref)))
(batch mean). Its gradient is gradient ascent's, weighted down as the sequence becomes unlikely, so
it does not collapse the model the way gradient ascent does. A fresh adapter gives (2 / beta) log 2.
beta = 0.1 with SUMMED sequence NLL (as the paper): it does not carry over to a token mean.
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from ..sections import Section
from .base import Batch, Method, Models, sequence_nll


class NpoOptions(Section):
    beta: float = Field(0.1, gt=0, le=100)
    """beta of the NPO loss, on the summed sequence NLL (the paper: 0.1)."""


class NPO(Method):
    name = "npo"
    Options = NpoOptions
    label = "NPO"

    def loss(self, models: Models, batch: Batch):
        s_theta, _ = sequence_nll(models.logits(batch), batch.labels)  # (B,)
        s_ref, _ = sequence_nll(models.reference_logits(batch), batch.labels)  # (B,), no grad
        beta = self.options.beta
        return (2.0 / beta) * F.softplus(-beta * (s_theta - s_ref)).mean()  # softplus(x) = log(1 + e^x)
