"""What every unlearning method shares: the batch, the model and its reference, the retain terms.

A method (one file each in this folder, PEFT's one-shape-per-method) is a subclass of `Method`:
    name        its registry name (the config's `method:`)
    Options     its config section (a sections.Section; None when it has no options)
    phases      the pipeline phases it needs, in order ("reinforce", "labels", "unlearn")
    make_labels its labels phase, if it has one (WHP: generic labels; ELM: persona-guided targets):
                LabelInputs (the run's Workbench, the Corpus, ...) -> Targets
    forget_data the rows its unlearning phase trains on: (Corpus, Targets or None) -> TrainData
                (default: the corpus blocks, next-token labels)
    prepare     once before training (RMU: its steering vector); lora_layers: which layers it adapts
    loss        its forget loss on one batch
    retain_loss its retain term on one retain batch (default: the config's `retain.loss`, kl or ce)

The reference model is always the model being trained with its adapter switched off
(`Models.reference`): never a second copy of the weights. A fresh adapter equals the reference, so
every "model vs reference" term starts at its neutral value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol

import torch
import torch.nn.functional as F

from ..data import IGNORE, next_token_labels

if TYPE_CHECKING:
    from ..models import Workbench
    from ..sections import Section


@dataclass
class Corpus:
    """The forget corpus as a run holds it, tokenized once."""

    blocks: list[list[int]]  # token ids, one list per block of <= data.block_size
    ids: torch.Tensor  # (N, T) the blocks right-padded
    lengths: torch.Tensor  # (N,)


@dataclass
class LabelInputs:
    """What a method's labels phase gets from the run."""

    wb: "Workbench"  # the run's one base model, no adapter on it; leave it so
    corpus: Corpus
    seed: int
    expert_dir: Path | None = None  # the expert adapter (the reinforce phase's, or the config's)
    on_progress: Callable[[int], None] | None = None  # label units done (label_units), rank 0 only
    rank: int = 0  # under accelerate: this process's share of the work
    world: int = 1
    barrier: Callable[[], None] = lambda: None


class Targets(Protocol):
    """A labels phase's result: kept for the unlearning phase's forget_data."""

    def info(self) -> dict:
        """Statistics for labels.json and the log: labelled, blocks, cached, key, changed, alpha..."""


@dataclass
class Batch:
    """One micro-batch on the device, trimmed to its longest row."""

    ids: torch.Tensor  # (B, T) right-padded inputs
    mask: torch.Tensor  # (B, T) 1 = a real token
    labels: torch.Tensor  # (B, T) target of the prediction AT each position; IGNORE = none
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-method (B, T, ...) tensors

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())


@dataclass
class TrainData:
    """Per-row training tensors (on the CPU), indexed by a batch of row numbers."""

    ids: torch.Tensor  # (N, T) right-padded
    lengths: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N, T)
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # (N, T, ...) each

    def __len__(self) -> int:
        return self.ids.shape[0]

    def batch(self, rows: list[int], device) -> Batch:
        lengths = self.lengths[rows]
        T = int(lengths.max())  # drop padding columns no row of this batch uses
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # (B, T)
        return Batch(self.ids[rows, :T].to(device), mask.to(device), self.labels[rows, :T].to(device),
                     {k: v[rows, :T].to(device) for k, v in self.extra.items()})

    @classmethod
    def next_token(cls, ids: torch.Tensor, lengths: torch.Tensor) -> "TrainData":
        return cls(ids, lengths, next_token_labels(ids, lengths))


@dataclass
class Models:
    """The model being trained and its reference: the same PEFT model with the adapter switched off."""

    train: torch.nn.Module  # forward with gradients (DDP-wrapped under accelerate)
    peft: torch.nn.Module  # the unwrapped PeftModel

    def logits(self, batch: Batch) -> torch.Tensor:
        return self.train(input_ids=batch.ids, attention_mask=batch.mask).logits  # (B, T, V)

    @torch.no_grad()
    def reference_logits(self, batch: Batch) -> torch.Tensor:
        with self.peft.disable_adapter():
            return self.peft(input_ids=batch.ids, attention_mask=batch.mask).logits.float()  # (B, T, V)


def token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions; labels[:, i] is the target AT i (no shift)."""
    n = int((labels != IGNORE).sum())
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum") / max(n, 1)


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed NLL over each row's labelled positions, and (B,) how many there are."""
    keep = labels != IGNORE
    nll = F.cross_entropy(logits.float().transpose(1, 2), labels.masked_fill(~keep, 0), reduction="none")  # (B, T)
    return (nll * keep).sum(-1), keep.sum(-1)


def retain_kl(models: Models, batch: Batch) -> torch.Tensor:
    """Mean per-token KL(baseline || model) on the real positions of a retain batch.

    A fresh LoRA adapter (B = 0) gives exactly 0: the term only pulls back what training moved.
    """
    base = models.reference_logits(batch).log_softmax(-1)  # (B, T, V)
    logp = models.logits(batch).float().log_softmax(-1)
    kl = (base.exp() * (base - logp)).sum(-1)  # (B, T)
    return kl[batch.mask.bool()].mean()


def retain_ce(models: Models, batch: Batch) -> torch.Tensor:
    """Next-token cross-entropy on the retain text (gradient difference's retain term)."""
    return token_ce(models.logits(batch), batch.labels)


class Method:
    name: ClassVar[str] = ""
    Options: ClassVar[type["Section"] | None] = None
    phases: ClassVar[tuple[str, ...]] = ("unlearn",)
    label: ClassVar[str] = ""
    """How pages name the method's unlearned model ("WHP", "gradient ascent")."""
    main_options: ClassVar[tuple[str, ...]] = ()
    """Its options a form shows first (the rest under "every other field")."""

    def __init__(self, options=None, retain_loss: str = "kl"):
        self.options = options if options is not None else (self.Options() if self.Options else None)
        self.retain_kind = retain_loss

    @classmethod
    def from_config(cls, cfg) -> "Method":
        return cls(cfg.options, cfg.retain.loss)

    @classmethod
    def requirements(cls, cfg) -> list[str]:
        """Problems of a whole run config (engine.config.RunConfig, its fields valid) that only this
        method knows about, each `field: what`."""
        return []

    def lora_layers(self, n_layers: int, requested: list[int] | None) -> list[int] | None:
        """The blocks this method's adapter trains, given the config's (`requested`, lora.layers against
        the model; None: every block)."""
        return requested

    def prepare(self, models: "Models", data: "TrainData", device) -> None:
        """Called by the training loop once before the first step (the adapter is still fresh)."""

    def label_units(self, n_blocks: int) -> int:
        """Progress units of the labels phase (only methods with a labels phase have one)."""
        return 1

    def make_labels(self, inputs: LabelInputs) -> Targets:
        """The labels phase: this method's training targets (e.g. WHP's generic labels)."""
        raise NotImplementedError(f"{self.name} has no labels phase")

    def forget_data(self, corpus: Corpus, targets: Targets | None = None) -> TrainData:
        """The rows the unlearning phase trains on (targets: the labels phase's result, if it has one)."""
        return TrainData.next_token(corpus.ids, corpus.lengths)

    def loss(self, models: Models, batch: Batch) -> torch.Tensor:
        raise NotImplementedError

    def retain_loss(self, models: Models, batch: Batch) -> torch.Tensor:
        return retain_kl(models, batch) if self.retain_kind == "kl" else retain_ce(models, batch)
