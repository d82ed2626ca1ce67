"""RMU (Li et al. 2024, WMDP): representation misdirection at one layer.

Forget: mean over real tokens of ||h_theta(l) - c * u||^2, the residual stream after layer l pushed
towards a fixed random unit vector u (seeded) scaled by c. Retain: mean over real tokens of
||h_theta(l) - h_ref(l)||^2 on the retain text (it replaces the KL / CE retain term); loss =
forget + retain.weight * retain. Only layers l-2..l get LoRA, so nothing above l can matter and the
forward stops after layer l: no later layers, no LM head. That makes it the cheapest method per step.

c scales with the hidden-state norm, which differs by model: it is set as `steering` x the baseline's
mean ||h(l)|| on the forget data, measured once when training starts, so one default works anywhere.
"""
from __future__ import annotations

import contextlib

import torch
from pydantic import Field

from ..sections import Section
from ..errors import UserError
from .base import Batch, Method, Models


class RmuOptions(Section):
    layer: int | None = Field(None, ge=0)
    """Layer l whose output is steered (None: a fifth of the way up, WMDP's layer 7 of 32)."""
    steering: float = Field(4.0, gt=0)
    """c as a multiple of the baseline's mean hidden-state norm at layer l on the forget data."""
    trained_layers: int = Field(3, ge=1)
    """How many layers up to l get LoRA (the original trains layers l-2..l)."""


def decoder_of(model) -> torch.nn.Module:
    """The module holding the transformer blocks (`.layers`, a ModuleList) inside a causal LM / PEFT model."""
    for m in model.modules():
        if isinstance(getattr(m, "layers", None), torch.nn.ModuleList):
            return m
    raise UserError("rmu needs a decoder with a .layers list (Llama, Mistral, Qwen, SmolLM ...)")


@contextlib.contextmanager
def only_layers(decoder: torch.nn.Module, n: int):
    """The decoder with its first n blocks only: a forward computes nothing above them."""
    full = decoder.layers
    decoder.layers = torch.nn.ModuleList(list(full)[:n])
    try:
        yield
    finally:
        decoder.layers = full


def hidden_at(model, batch: Batch, layer: int) -> torch.Tensor:
    """(B, T, D) residual stream after block `layer`, running blocks 0..layer only."""
    decoder = decoder_of(model)
    out = {}

    def grab(module, args, output):
        out["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder.layers[layer].register_forward_hook(grab)
    try:
        with only_layers(decoder, layer + 1):
            decoder(input_ids=batch.ids, attention_mask=batch.mask)
    finally:
        handle.remove()
    return out["h"].float()


class RMU(Method):
    name = "rmu"
    Options = RmuOptions
    label = "RMU"

    def __init__(self, options=None, retain_loss: str = "kl"):
        super().__init__(options, retain_loss)
        self.control: torch.Tensor | None = None  # (D,) c * u, set by prepare()
        self.seed = 0

    @classmethod
    def from_config(cls, cfg) -> "RMU":
        m = cls(cfg.options, cfg.retain.loss)
        m.seed = cfg.seed
        return m

    def layer(self, n_layers: int) -> int:
        layer = self.options.layer if self.options.layer is not None else max(1, round(0.22 * n_layers))
        if layer >= n_layers:
            raise UserError(f"rmu.layer {layer} is past the model's last layer ({n_layers - 1})")
        return layer

    def lora_layers(self, n_layers: int, requested: list[int] | None) -> list[int]:
        """l-trained_layers+1 .. l, or, with lora.layers set, the requested blocks at or below l (the
        forward stops at l: a block above it never sees the loss)."""
        top = self.layer(n_layers)
        if requested is None:
            return list(range(max(0, top - self.options.trained_layers + 1), top + 1))
        below = [b for b in requested if b <= top]
        if not below:
            raise UserError(f"lora.layers puts no block at or below rmu.layer {top}: RMU's loss is read there, "
                            f"so an adapter above it is never trained")
        return below

    @torch.no_grad()
    def prepare(self, models: Models, data, device) -> None:
        """c * u from the baseline's mean hidden-state norm at layer l on (up to 8 of) the forget rows."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise UserError("rmu runs on one process: its truncated forward bypasses DDP's gradient sync")
        n_layers = len(decoder_of(models.peft).layers)
        self.l = self.layer(n_layers)
        batch = data.batch(list(range(min(8, len(data)))), device)
        with models.peft.disable_adapter():
            h = hidden_at(models.peft, batch, self.l)  # (B, T, D)
        norm = h.norm(dim=-1)[batch.mask.bool()].mean()
        u = torch.rand(h.shape[-1], generator=torch.Generator().manual_seed(self.seed))
        self.control = (self.options.steering * norm * u / u.norm()).to(h.device)

    def loss(self, models: Models, batch: Batch):
        h = hidden_at(models.peft, batch, self.l)  # (B, T, D)
        err = ((h - self.control) ** 2).sum(-1)  # (B, T) squared L2 distance to c * u
        return err[batch.mask.bool()].mean()

    def retain_loss(self, models: Models, batch: Batch):
        h = hidden_at(models.peft, batch, self.l)
        with torch.no_grad(), models.peft.disable_adapter():
            ref = hidden_at(models.peft, batch, self.l)
        return ((h - ref) ** 2).sum(-1)[batch.mask.bool()].mean()
