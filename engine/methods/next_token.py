"""Next-token training: the reinforce phase (the expert) and `reinforce_only` runs (with goldfish masks,
a goldfish-loss fine-tune). Loss: cross-entropy to the next token at every kept label position."""
from __future__ import annotations

from ..data import apply_goldfish
from .base import Batch, Corpus, Method, Models, TrainData, token_ce


class NextToken(Method):
    name = "reinforce_only"
    phases = ("reinforce",)
    label = "reinforced"

    def __init__(self, options=None, retain_loss: str = "kl", goldfish=None):
        super().__init__(options, retain_loss)
        self.goldfish = goldfish

    @classmethod
    def from_config(cls, cfg) -> "NextToken":
        return cls(None, cfg.retain.loss, goldfish=cfg.goldfish)

    @classmethod
    def requirements(cls, cfg) -> list[str]:
        return ["reinforce.steps: must be >= 1 for reinforce_only"] if cfg.reinforce.steps == 0 else []

    def forget_data(self, corpus: Corpus, targets=None) -> TrainData:
        data = TrainData.next_token(corpus.ids, corpus.lengths)
        if self.goldfish is not None:
            data.labels = apply_goldfish(data.labels, self.goldfish)
        return data

    def loss(self, models: Models, batch: Batch):
        return token_ce(models.logits(batch), batch.labels)
