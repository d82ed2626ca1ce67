"""Gradient ascent: the negated next-token loss on the corpus, the baseline the WHP paper argues
against (it forgets by breaking the model). With a `ce` retain term it is gradient difference."""
from __future__ import annotations

from .base import Batch, Method, Models, token_ce


class GradientAscent(Method):
    name = "gradient_ascent"
    label = "gradient ascent"

    def loss(self, models: Models, batch: Batch):
        return -token_ce(models.logits(batch), batch.labels)
