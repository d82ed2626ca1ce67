"""One LoRA training loop for every method: it asks the method (engine/methods/) for its forget loss
on each batch, and for its retain term on a retain batch when the phase has retain data.

LoRA (QLoRA when the base is 4-bit) on every linear layer, or on chosen blocks and module kinds
(lora.layers, lora.modules). Checkpoints are
safetensors + JSON (no pickle: a copied run directory runs none of its code). Data parallel: under
`accelerate launch` each rank takes its share of every batch, gradients are averaged by DDP, and
only rank 0 writes adapters, checkpoints and metrics.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import legacy
from .errors import UserError
from .methods import Method, Models, TrainData


# -- LoRA ---------------------------------------------------------------------------------------
MODULE_KINDS = {"attention": ("attn", "attention"), "mlp": ("mlp", "feed_forward", "ffn")}


def blocks(layers: int | list[int] | None, n_layers: int) -> list[int] | None:
    """lora.layers against a model of n_layers blocks: the top N (an int), the listed blocks (a list),
    or None (every block); a block the model lacks is a UserError."""
    if layers is None:
        return None
    if isinstance(layers, int):
        return list(range(max(n_layers - layers, 0), n_layers))
    past = [b for b in layers if b >= n_layers]
    if past:
        raise UserError(f"lora.layers names block {past[0]}, but this model has {n_layers} blocks (0-{n_layers - 1})")
    return sorted(layers)


def linear_targets(base, modules: str = "all") -> list[str]:
    """The names, below a block, of its linear layers of one kind ("self_attn.q_proj", "mlp.up_proj"):
    `modules` all, attention (a path through *attn* / *attention*) or mlp (*mlp* / *feed_forward* / *ffn*)."""
    found = set()
    for name, m in base.named_modules():
        if not isinstance(m, torch.nn.Linear) or "lm_head" in name:
            continue
        below = re.split(r"\.\d+\.", name, maxsplit=1)  # "model.layers", "self_attn.q_proj"
        if len(below) < 2:
            continue
        path = below[1]
        if modules == "all" or any(k in part for part in path.split(".")[:-1] for k in MODULE_KINDS[modules]):
            found.add(path)
    if not found:
        raise UserError(f"lora.modules {modules}: this model's blocks have no such linear layers")
    return sorted(found)


def lora_model(base, rank: int, gradient_checkpointing: bool = False, top_layers: int | list[int] | None = None,
               layers: list[int] | None = None, modules: str = "all"):
    """A fresh trainable LoRA adapter on the linear layers of `base` (QLoRA when base is 4-bit).

    top_layers: lora.layers (the top N blocks or a list of blocks); the backward pass then stops at the
    lowest. layers: exactly these blocks (a method's choice, e.g. RMU's l-2..l); overrides top_layers.
    modules: all, attention or mlp (lora.modules).
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        # Non-reentrant checkpointing, as below: PEFT passes {} on, and torch then falls back to the
        # reentrant kind (with a warning), which needs PEFT's inputs-require-grad hook.
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if layers is None:
        layers = blocks(top_layers, base.config.num_hidden_layers)
    # PEFT wants explicit module names with layers_to_transform: the blocks' linears, never the head.
    targets = "all-linear" if layers is None and modules == "all" else linear_targets(base, modules)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets,
                     task_type="CAUSAL_LM", layers_to_transform=layers)
    return get_peft_model(base, cfg)


def save_adapter(model, path: str | os.PathLike) -> Path:
    """Standard PEFT layout (adapter_config.json + adapter_model.safetensors), swapped in atomically."""
    import shutil
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    model.save_pretrained(tmp, safe_serialization=True)
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


# -- trainer state (checkpoints) ------------------------------------------------------------------
STATE_FORMAT = "obliviate-trainer-state/1"


def save_trainer_state(path: str | os.PathLike, lora: dict, optimizer: dict, step: int) -> None:
    """LoRA weights and AdamW state as one safetensors file: tensors only, no pickle, so a run
    directory copied from someone else can be resumed without running any of their code.

    Tensors: "lora/<parameter>" and "opt/<param index>/<key>"; the rest (step, param_groups) is
    JSON in the safetensors metadata. Written atomically.
    """
    from safetensors.torch import save

    from .io import atomic_write_bytes

    tensors = {f"lora/{k}": v.detach().cpu().contiguous() for k, v in lora.items()}
    scalars: dict = {}
    for idx, st in optimizer["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt/{idx}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}/{k}"] = v
    meta = {"format": STATE_FORMAT, "step": str(int(step)),
            "param_groups": json.dumps(optimizer["param_groups"]), "scalars": json.dumps(scalars)}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def load_trainer_state(path: str | os.PathLike) -> tuple[dict, dict, int]:
    """(lora state dict, optimizer state dict, step) from save_trainer_state's file, or from a
    legacy `.pt` checkpoint read with torch.load(weights_only=True) (tensors and plain data only)."""
    path = Path(path)
    if legacy.is_torch_checkpoint(path):
        return legacy.read_torch_checkpoint(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"not an Obliviate trainer state (format {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora/")}
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt/"):
            _, idx, key = k.split("/", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in json.loads(meta["scalars"]).items():
        idx, key = k.split("/", 1)
        state.setdefault(int(idx), {})[key] = v
    return lora, {"state": state, "param_groups": json.loads(meta["param_groups"])}, int(meta["step"])


def find_checkpoint(path: str | os.PathLike, legacy_names: tuple[str, ...] = ()) -> Path | None:
    """The checkpoint to resume from: `path`, a legacy `<phase>.pt` beside it, or one of legacy_names."""
    path = Path(path)
    for p in (path, path.with_suffix(".pt"), *(path.with_name(n) for n in legacy_names)):  # engine/legacy.py
        if p.is_file():
            return p
    return None


def memory_mib(device) -> float:
    """The job's own peak: CUDA's allocator on a GPU, this process image's VmHWM on the CPU (never
    ru_maxrss, which a job started by the Streamlit server inherits from it)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    from .cost import peak_rss_mib

    return peak_rss_mib()


# -- the loop -----------------------------------------------------------------------------------
@dataclass
class TrainSpec:
    """One training phase: what to fit, with which method, for how long."""

    phase: str  # reinforce | unlearn | relearn (names the checkpoint and the metrics)
    method: Method  # asked for loss(models, batch) and retain_loss(models, batch)
    data: TrainData  # the forget (or reinforce) rows
    steps: int
    lr: float
    batch_size: int
    grad_accum: int = 1
    seed: int = 0
    warmup: int = 0
    max_grad_norm: float = 1.0
    retain: TrainData | None = None  # retain rows; the method's retain term is added with retain_weight
    retain_weight: float = 1.0
    sam_rho: float | None = None  # SAM: the forget gradient at the sharpness-perturbed weights (None: off)


@dataclass
class Hooks:
    """What the loop reports to (a run directory) and asks (should it stop?). All optional."""

    on_step: Callable[[dict], None] = lambda m: None  # metrics of one logged step (rank 0 only)
    should_stop: Callable[[], bool] = lambda: False  # any rank; the loop makes all ranks agree
    probe: Callable[[object], dict] | None = None  # model -> {name: prob}; rank 0
    probe_every: int = 10
    log_every: int = 1
    checkpoint: Path | None = None  # trainer state file (.safetensors) to save to / resume from
    checkpoint_every: int = 20
    legacy_checkpoints: tuple[str, ...] = ()  # older file names of this phase's checkpoint
    log: Callable[[str], None] = lambda m: None  # a line for the run's log (rank 0 writes it)


class Stopped(Exception):
    """The loop stopped early on request; the checkpoint is up to date."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


def batch_rows(n: int, step: int, micro: int, spec: TrainSpec, rank: int, world: int) -> list[int]:
    """Deterministic sample order (a seeded permutation per epoch), so a resumed run sees the same data."""
    out = []
    for b in range(rank, spec.batch_size, world):
        g = (step * spec.grad_accum + micro) * spec.batch_size + b  # global sample counter
        epoch, j = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed * 100003 + epoch))
        out.append(int(perm[j]))
    return out


def _resume(model, opt, spec: TrainSpec, hooks: Hooks, main: bool) -> int:
    """Load the phase's checkpoint into model and optimizer; the step to continue from (0: none,
    -1: the checkpoint was unreadable, the model is as it was and the optimizer must start fresh).
    An unreadable checkpoint (truncated, foreign, hostile) is set aside and the phase restarts."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    found = find_checkpoint(hooks.checkpoint, hooks.legacy_checkpoints) if hooks.checkpoint else None
    if found is None:
        return 0
    before = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    try:
        lora, opt_state, start = load_trainer_state(found)
        set_peft_model_state_dict(model, lora)
        opt.load_state_dict(opt_state)
        return start
    except Exception as e:  # noqa: BLE001 - never fatal, never executed
        set_peft_model_state_dict(model, before)
        aside = found.with_name(found.name + ".bad")
        if main:
            os.replace(found, aside)
        reason = str(e).splitlines()[0][:120] if str(e) else ""
        hooks.log(f"{spec.phase}: the checkpoint {found.name} is unreadable ({type(e).__name__}: {reason}); "
                  f"restarting the phase from step 0, the file is kept as {aside.name}")
        return -1


def _sam_forget(models: Models, method: Method, batch, params: list, rho: float, grad_accum: int, acc):
    """SAM (Fan et al. 2025) on the forget term: g = grad forget(theta); eps = rho g / ||g|| over all
    trainable parameters; the forget gradient is taken again at theta + eps, then theta is restored
    exactly (copied back, not subtracted). Gradients already accumulated in .grad are kept."""
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    loss = method.loss(models, batch)
    acc.backward(loss / grad_accum)
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads if g is not None]))
    theta = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p.add_(g, alpha=float(rho / (norm + 1e-12)))
        for p in params:
            p.grad = None
    acc.backward(method.loss(models, batch) / grad_accum)  # the forget gradient at theta + eps
    with torch.no_grad():
        for p, t, s in zip(params, theta, saved):
            p.copy_(t)
            if s is not None:
                p.grad = s if p.grad is None else p.grad + s
    return loss


def train(model, spec: TrainSpec, hooks: Hooks | None = None, accelerator=None) -> dict:
    """Fit the trainable (LoRA) parameters of `model` (a PeftModel) for spec.steps optimizer steps.

    Resumes from hooks.checkpoint when it exists. Returns {"loss": last logged loss, "steps": n}.
    Raises Stopped when hooks.should_stop() turns true (after saving a checkpoint).
    """
    from accelerate import Accelerator
    from peft import get_peft_model_state_dict

    hooks = hooks or Hooks()
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters (no LoRA adapter?)")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    start = _resume(model, opt, spec, hooks, main)
    if start < 0:
        opt, start = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0), 0
    lr_at = lambda s: spec.lr * (min(1.0, (s + 1) / spec.warmup) if spec.warmup else 1.0)  # noqa: E731
    ddp_model, opt = acc.prepare(model, opt)
    models = Models(ddp_model, acc.unwrap_model(ddp_model))
    device = acc.device
    method = spec.method

    def save_checkpoint(step: int):
        if hooks.checkpoint and main:
            save_trainer_state(hooks.checkpoint, get_peft_model_state_dict(models.peft), opt.state_dict(), step)
        acc.wait_for_everyone()

    method.prepare(models, spec.data, device)
    if main and start == 0 and hooks.probe:
        hooks.on_step({"step": 0, "phase": spec.phase, "loss": None, "lr": 0.0, "tokens_per_s": None,
                       "probes": hooks.probe(models.peft), "memory_mib": memory_mib(device)})
    ddp_model.train()
    last_loss = math.nan
    all_tokens = 0  # every rank's rows, forget and retain, over this process's steps (the cost card)
    for step in range(start, spec.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        tokens = 0
        total = torch.zeros((), device=device)
        for micro in range(spec.grad_accum):
            batch = spec.data.batch(batch_rows(len(spec.data), step, micro, spec, rank, world), device)
            # Forget and retain terms get their own backward (gradients add up in .grad): the same
            # order with and without SAM, so SAM at rho 0 equals the plain method bit for bit.
            if spec.sam_rho is None:
                loss = method.loss(models, batch)
                acc.backward(loss / spec.grad_accum)
            else:
                loss = _sam_forget(models, method, batch, params, spec.sam_rho, spec.grad_accum, acc)
            tokens += batch.tokens
            if spec.retain is not None:
                rbatch = spec.retain.batch(batch_rows(len(spec.retain), step, micro, spec, rank, world), device)
                rloss = spec.retain_weight * method.retain_loss(models, rbatch)
                acc.backward(rloss / spec.grad_accum)
                loss = loss.detach() + rloss.detach()
                tokens += rbatch.tokens
            total += loss.detach() / spec.grad_accum
        acc.clip_grad_norm_(params, spec.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last_loss = float(acc.reduce(total, "mean"))
        if not math.isfinite(last_loss):
            raise UserError(f"{spec.phase}: the loss became {last_loss} at step {step + 1}: lower the learning rate")
        done = step + 1
        dt = time.perf_counter() - t0
        all_tokens += tokens * world
        if main and (done % hooks.log_every == 0 or done == spec.steps):
            m = {"step": done, "phase": spec.phase, "loss": last_loss, "lr": lr_at(step),
                 "tokens_per_s": tokens * world / dt, "step_s": dt, "memory_mib": memory_mib(device)}
            if hooks.probe and (done % hooks.probe_every == 0 or done == spec.steps):
                m["probes"] = hooks.probe(models.peft)
                ddp_model.train()
            hooks.on_step(m)
        if hooks.checkpoint and done % hooks.checkpoint_every == 0 and done < spec.steps:
            save_checkpoint(done)
        if hooks.should_stop():
            acc.set_trigger()
        if acc.check_trigger():
            save_checkpoint(done)
            raise Stopped(done)
    ddp_model.eval()
    return {"loss": last_loss, "steps": spec.steps, "tokens": all_tokens}
