"""Readers of the project's own earlier formats, in one place: what they were, where it lives now.

    flat config keys      `steps: 30`, `lora_rank: 4`, `model: embedded` (issue 4-5 configs) -> sections;
                          the CLI's short flags (--steps, --anchors) are these names too
    the phase "gradient_ascent"   gradient ascent's training phase before issue 11 -> "unlearn"
                          (status.json phases, metrics.jsonl rows, summaries, its checkpoint file)
    `<phase>.pt` checkpoints      torch.save files before safetensors trainer states; read with
                          torch.load(weights_only=True): tensors and plain data, never code

Nothing else reads an old format; a format no shipped file or run directory uses is dropped here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .sections import get_path, set_path

# Flat keys of earlier (issue 4-5) configs -> their place now. Also the CLI's flag names.
LEGACY = {
    "steps": "unlearn.steps", "lr": "unlearn.lr", "reinforce_steps": "reinforce.steps", "reinforce_lr": "reinforce.lr",
    "lora_rank": "lora.rank", "lora_layers": "lora.layers", "batch_size": "train.batch_size",
    "grad_accum": "train.grad_accum", "warmup": "train.warmup", "gradient_checkpointing": "train.gradient_checkpointing",
    "checkpoint_every": "train.checkpoint_every", "block_size": "data.block_size", "max_blocks": "data.max_blocks",
    "anchors": "whp.anchors", "expert": "whp.expert", "alpha": "whp.alpha", "alphas": "whp.alphas",
    "labels": "whp.labels", "soft_top_k": "whp.soft_top_k", "label_batch": "whp.label_batch",
    "retain_weight": "retain.weight", "retain_loss": "retain.loss", "precision": "model.precision",
    "device": "model.device",
}
LEGACY_STRINGS = {"retain": "retain.text", "model": "model.name"}  # a bare string then, a section now
PHASES = {"gradient_ascent": "unlearn"}  # gradient ascent's training phase before issue 11


def migrate(data: dict) -> tuple[dict, dict[str, str]]:
    """Flat legacy keys moved into their sections (a value given in the section itself wins);
    returns (nested data, new path -> the key as written), so errors can name what the user wrote."""
    out: dict = {}
    flat: dict[str, Any] = {}
    written: dict[str, str] = {}
    for k, v in data.items():
        if k in LEGACY_STRINGS and not isinstance(v, dict):
            if v is not None:
                flat[LEGACY_STRINGS[k]] = v
                written[LEGACY_STRINGS[k]] = k
        elif k in LEGACY:
            flat[LEGACY[k]] = v
            written[LEGACY[k]] = k
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    missing = object()
    for dotted, v in flat.items():
        section = dotted.split(".")[0]
        if out.get(section) is None:
            out[section] = {}
        if isinstance(out[section], dict) and get_path(out, dotted, missing) is missing:
            set_path(out, dotted, v)
    return out, written




def phase_name(phase: str) -> str:
    """A phase as it is called now ("gradient_ascent" -> "unlearn")."""
    return PHASES.get(phase, phase)


def checkpoint_names(phase: str) -> tuple[str, ...]:
    """Earlier file names of a phase's checkpoint, beside checkpoints/<phase>.safetensors."""
    return tuple(f"{old}.pt" for old, new in PHASES.items() if new == phase)


def summary_of(summary: dict, key: str):
    """summary[key], or its name before the phase was renamed ("unlearn_before" <- "gradient_ascent_before")."""
    if key in summary:
        return summary[key]
    phase, _, rest = key.partition("_")
    return next((summary[f"{old}_{rest}"] for old, new in PHASES.items() if new == phase and f"{old}_{rest}" in summary), None)


def is_torch_checkpoint(path: Path) -> bool:
    """A torch.save zip container (a safetensors file starts with its header's length instead)."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def read_torch_checkpoint(path: Path) -> tuple[dict, dict, int]:
    """(lora state dict, optimizer state dict, step) of a `<phase>.pt` checkpoint: weights only."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state["lora"], state["optimizer"], int(state["step"])
