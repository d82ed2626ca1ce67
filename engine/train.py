"""One LoRA training loop for every objective: reinforce (next token), unlearn (hard or soft generic
labels), gradient ascent (negated next token), each with an optional retain term (next-token
cross-entropy, or KL to the baseline, i.e. the same model with the adapter switched off) and
optional goldfish masks.

Label convention everywhere: `labels[i]` is the target of the prediction made AT position i (the
token that should follow position i), IGNORE=-100 for no target. Next-token labels are the inputs
shifted by one; WHP generic labels (GenericParts.labels) already have this form, so the loss never
shifts again: loss = CE(logits[:, i], labels[:, i]) averaged over the kept positions.

Data parallel: under `accelerate launch` each rank takes its share of every batch, gradients are
averaged by DDP, and only rank 0 writes adapters, checkpoints and metrics.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .generic import IGNORE

GOLDFISH_KINDS = ("none", "static", "hash")


# -- data ---------------------------------------------------------------------------------------
def corpus_blocks(tokenizer, text: str, block_size: int, max_blocks: int | None = None) -> list[list[int]]:
    """Tokenize the whole corpus once and cut it into blocks of `block_size` tokens.

    A final block shorter than an eighth of block_size is dropped (too little context to teach).
    """
    if not text.strip():
        raise UserError("the corpus is empty")
    ids = tokenize_long(tokenizer, text)
    blocks = [ids[i: i + block_size] for i in range(0, len(ids), block_size)]
    if len(blocks) > 1 and len(blocks[-1]) < max(2, block_size // 8):
        blocks.pop()
    return blocks[:max_blocks] if max_blocks else blocks


CHUNK_CHARS = 1 << 20


def tokenize_long(tokenizer, text: str) -> list[int]:
    """Token ids of a text of any length, without special tokens.

    A tokenizer call on tens of megabytes at once stalls or aborts; a long text is cut into ~1 MB
    pieces just after a newline that is followed by a non-space character. Byte-level BPE splits
    there anyway ("\n" and the next word are separate pre-tokens), so the ids equal one call's.
    """
    if len(text) <= CHUNK_CHARS:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(start + CHUNK_CHARS, len(text))
        while end < len(text) and not (text[end - 1] == "\n" and not text[end].isspace()):
            end += 1
            if end - start > 2 * CHUNK_CHARS:  # no clean cut in sight: cut at a space
                while end < len(text) and not text[end - 1].isspace():
                    end += 1
                break
        ids += tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
        start = end
    return ids


def next_token_labels(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N, T) inputs -> (N, T) labels: labels[:, i] = ids[:, i+1]; IGNORE after each block's end."""
    labels = torch.full_like(ids, IGNORE)
    labels[:, :-1] = ids[:, 1:]
    pos = torch.arange(ids.shape[1])[None, :]  # (1, T)
    labels[pos >= (lengths[:, None] - 1)] = IGNORE
    return labels


def pad_blocks(blocks: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T) long tensor and (N,) lengths."""
    T = max(len(b) for b in blocks)
    ids = torch.full((len(blocks), T), pad_id, dtype=torch.long)
    for n, b in enumerate(blocks):
        ids[n, : len(b)] = torch.tensor(b, dtype=torch.long)
    return ids, torch.tensor([len(b) for b in blocks], dtype=torch.long)


# -- goldfish loss (Hans et al. 2024) ----------------------------------------------------------
@dataclass
class Goldfish:
    kind: str = "none"
    """none, static (drop every k-th label position) or hash (drop where a hash of the last h label tokens is < 1/k)."""
    k: int = 4
    """About one label in k is dropped."""
    h: int = 13
    """Context width of the hash mask: the same h tokens always get the same decision."""

    def problems(self) -> list[str]:
        out = []
        if self.kind not in GOLDFISH_KINDS:
            out.append(f"goldfish.kind must be one of {', '.join(GOLDFISH_KINDS)}, not {self.kind!r}")
        if not isinstance(self.k, int) or self.k < 2:
            out.append(f"goldfish.k must be an integer >= 2, not {self.k!r}")
        if not isinstance(self.h, int) or self.h < 1:
            out.append(f"goldfish.h must be an integer >= 1, not {self.h!r}")
        return out


_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3


def window_hashes(row: np.ndarray, h: int) -> np.ndarray:
    """(T,) token ids -> (T-h+1,) uint64 hash of each window row[t-h+1 .. t].

    64-bit FNV-1a over the 4 little-endian bytes of each token id, finalised with splitmix64.
    uint64 arithmetic is exact modulo 2**64 on every platform: no RNG table, no device, no
    float, so CPU and GPU runs (and any label dtype) get the same mask.
    """
    row = row.astype(np.uint64)
    n = len(row) - h + 1
    acc = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    for j in range(h):
        tok = row[j: j + n]
        for shift in (0, 8, 16, 24):
            acc = (acc ^ ((tok >> np.uint64(shift)) & np.uint64(0xFF))) * prime
    acc = (acc ^ (acc >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    acc = (acc ^ (acc >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return acc ^ (acc >> np.uint64(31))


def goldfish_mask(labels: torch.Tensor, goldfish: Goldfish) -> torch.Tensor:
    """(…, T) labels -> (…, T) bool, True = keep this label position in the loss.

    static: drops positions t with (t+1) % k == 0 (every k-th label).
    hash:   drops t when hash(labels[t-h+1 .. t]) / 2**64 < 1/k; the first h-1 positions are kept.
            Computed on CPU integers from the token ids alone, so CPU, CUDA or any dtype agree,
            and a repeated passage is masked identically wherever it appears.
    IGNORE positions are returned as kept (they carry no loss anyway) and are not hashed as tokens.
    """
    shape = labels.shape
    T = shape[-1]
    if goldfish.kind == "none":
        return torch.ones(shape, dtype=torch.bool)
    if goldfish.kind == "static":
        keep = (torch.arange(T) + 1) % goldfish.k != 0  # (T,)
        return keep.expand(shape).clone()
    rows = labels.detach().to("cpu", torch.int64).reshape(-1, T).numpy()
    threshold = np.uint64((1 << 64) // goldfish.k)
    keep = np.ones(rows.shape, dtype=bool)
    h = goldfish.h
    for r, row in enumerate(rows):
        if T >= h:
            keep[r, h - 1:] = window_hashes(row, h) >= threshold
    keep[rows == IGNORE] = True  # no loss there anyway
    return torch.from_numpy(keep).reshape(shape)


def apply_goldfish(labels: torch.Tensor, goldfish: Goldfish) -> torch.Tensor:
    """Labels with the dropped positions set to IGNORE (a copy)."""
    if goldfish.kind == "none":
        return labels
    return labels.masked_fill(~goldfish_mask(labels, goldfish).to(labels.device), IGNORE)


# -- LoRA ---------------------------------------------------------------------------------------
def lora_model(base, rank: int, gradient_checkpointing: bool = False, top_layers: int | None = None):
    """A fresh trainable LoRA adapter on every linear layer of `base` (QLoRA when base is 4-bit).

    top_layers: adapt only the last N transformer layers; the backward pass then stops there.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "obliviate_precision", "") == "nf4":
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers, targets = None, "all-linear"
    if top_layers:
        L = base.config.num_hidden_layers
        layers = list(range(max(L - top_layers, 0), L))
        # PEFT wants explicit module names with layers_to_transform: every linear but the head.
        targets = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules()
                          if isinstance(m, torch.nn.Linear) and "lm_head" not in n})
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


# -- probes -------------------------------------------------------------------------------------
@torch.no_grad()
def probe_probabilities(model, tokenizer, probes: list[dict], device) -> list[float]:
    """P(first token of target | prompt) for each probe, in one right-padded forward."""
    if not probes:
        return []
    seqs = [tokenizer(p["prompt"], add_special_tokens=True)["input_ids"] for p in probes]
    targets = [tokenizer(p["target"], add_special_tokens=False)["input_ids"][0] for p in probes]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), tokenizer.pad_token_id or 0, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s)
        mask[b, : len(s)] = 1
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
    model.train(was_training)
    last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
    probs = logits[torch.arange(len(seqs), device=logits.device), last].float().softmax(-1)  # (B, V)
    return probs[torch.arange(len(seqs), device=probs.device), torch.tensor(targets, device=probs.device)].tolist()


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
    with open(path, "rb") as f:
        legacy = f.read(4) == b"PK\x03\x04"  # torch.save's zip container; safetensors starts with a length
    if legacy:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state["lora"], state["optimizer"], int(state["step"])
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


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: `path`, or a legacy `<phase>.pt` beside it."""
    path = Path(path)
    for p in (path, path.with_suffix(".pt")):
        if p.is_file():
            return p
    return None


# -- the loop -----------------------------------------------------------------------------------
@dataclass
class TrainSpec:
    """One training phase: what to fit and how long."""

    phase: str  # reinforce | unlearn | gradient_ascent (names the checkpoint and the metrics)
    ids: torch.Tensor  # (N, T) inputs, right-padded
    lengths: torch.Tensor  # (N,) real length of each row
    labels: torch.Tensor  # (N, T) targets of the prediction at each position; IGNORE = none
    steps: int
    lr: float
    batch_size: int
    grad_accum: int = 1
    sign: float = 1.0  # -1: gradient ascent on this data
    soft_ids: torch.Tensor | None = None  # (N, T, k) soft labels: top-k target tokens ...
    soft_logp: torch.Tensor | None = None  # (N, T, k) ... and their log-probs; used where labels != IGNORE
    retain_ids: torch.Tensor | None = None  # (M, T') optional retain term (sign +1)
    retain_lengths: torch.Tensor | None = None
    retain_labels: torch.Tensor | None = None  # (M, T') next-token labels (used by "ce")
    retain_weight: float = 1.0
    retain_loss: str = "kl"  # kl: KL(baseline || model) per token; ce: next-token cross-entropy
    seed: int = 0
    warmup: int = 0
    max_grad_norm: float = 1.0


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
    log: Callable[[str], None] = lambda m: None  # a line for the run's log (rank 0 writes it)


class Stopped(Exception):
    """The loop stopped early on request; the checkpoint is up to date."""

    def __init__(self, step: int):
        super().__init__(f"stopped at step {step}")
        self.step = step


def _batch_indices(n: int, step: int, micro: int, spec: TrainSpec, rank: int, world: int) -> list[int]:
    """Deterministic sample order (a seeded permutation per epoch), so a resumed run sees the same data."""
    out = []
    for b in range(rank, spec.batch_size, world):
        g = (step * spec.grad_accum + micro) * spec.batch_size + b  # global sample counter
        epoch, j = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(spec.seed * 100003 + epoch))
        out.append(int(perm[j]))
    return out


def soft_cross_entropy(logits: torch.Tensor, top_ids: torch.Tensor, top_logp: torch.Tensor,
                       keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept positions of -sum_j q_j log p(top_ids_j), q = softmax(top_logp) (the top-k renormalised).

    logits (B, T, V); top_ids, top_logp (B, T, k); keep (B, T) bool.
    """
    logp = logits.float().log_softmax(-1).gather(-1, top_ids.long())  # (B, T, k)
    q = torch.where(keep[..., None], top_logp.float(), 0.0).softmax(-1)  # unkept rows: finite, then dropped
    return -(q * logp).sum(-1)[keep].sum() / keep.sum().clamp(min=1)


def _loss(model, ids: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
          soft: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy over the kept label positions (to soft labels when given); no shift (see module docstring)."""
    T = int(lengths.max())
    ids, labels = ids[:, :T], labels[:, :T]  # drop padding columns no row of this batch uses
    mask = torch.arange(T, device=ids.device)[None, :] < lengths[:, None].to(ids.device)  # (B, T)
    logits = model(input_ids=ids, attention_mask=mask.long()).logits  # (B, T, V)
    if soft is not None:
        keep = labels != IGNORE
        return soft_cross_entropy(logits, soft[0][:, :T].to(ids.device), soft[1][:, :T].to(ids.device), keep), int(mask.sum())
    n = int((labels != IGNORE).sum())
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE, reduction="sum") / max(n, 1)
    return loss, int(mask.sum())


def kl_to_baseline(model, unwrapped, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean per-token KL(baseline || model) on real positions; the baseline is `unwrapped` with its adapter off.

    A fresh LoRA adapter (B = 0) gives exactly 0: the term only pulls back what training moved.
    """
    T = int(lengths.max())
    ids = ids[:, :T]
    mask = torch.arange(T, device=ids.device)[None, :] < lengths[:, None].to(ids.device)  # (B, T)
    with torch.no_grad(), unwrapped.disable_adapter():
        base = unwrapped(input_ids=ids, attention_mask=mask.long()).logits.float().log_softmax(-1)  # (B, T, V)
    logp = model(input_ids=ids, attention_mask=mask.long()).logits.float().log_softmax(-1)
    kl = (base.exp() * (base - logp)).sum(-1)  # (B, T)
    return kl[mask].mean(), int(mask.sum())


def memory_mib(device) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(model, spec: TrainSpec, hooks: Hooks | None = None, accelerator=None) -> dict:
    """Fit the trainable (LoRA) parameters of `model` for spec.steps optimizer steps.

    Resumes from hooks.checkpoint when it exists. Returns {"loss": last logged loss, "steps": n}.
    Raises Stopped when hooks.should_stop() turns true (after saving a checkpoint).
    """
    from accelerate import Accelerator
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    hooks = hooks or Hooks()
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    rank, world, main = acc.process_index, acc.num_processes, acc.is_main_process
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("the model has no trainable parameters (no LoRA adapter?)")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    start = 0
    if hooks.checkpoint:
        found = find_checkpoint(hooks.checkpoint)
        if found is not None:
            try:
                lora, opt_state, start = load_trainer_state(found)
                set_peft_model_state_dict(model, lora)
                opt.load_state_dict(opt_state)
            except Exception as e:  # noqa: BLE001 - truncated, foreign or hostile: never fatal, never executed
                aside = found.with_name(found.name + ".bad")
                if main:
                    os.replace(found, aside)
                hooks.log(f"{spec.phase}: the checkpoint {found.name} is unreadable ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else ''}); restarting the phase from step 0, "
                          f"the file is kept as {aside.name}")
                opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
                start = 0
    lr_at = lambda s: spec.lr * (min(1.0, (s + 1) / spec.warmup) if spec.warmup else 1.0)  # noqa: E731
    ddp_model, opt = acc.prepare(model, opt)
    unwrapped = acc.unwrap_model(ddp_model)
    device = acc.device
    n = spec.ids.shape[0]

    def save_checkpoint(step: int):
        if hooks.checkpoint and main:
            save_trainer_state(hooks.checkpoint, get_peft_model_state_dict(unwrapped), opt.state_dict(), step)
        acc.wait_for_everyone()

    if main and start == 0 and hooks.probe:
        hooks.on_step({"step": 0, "phase": spec.phase, "loss": None, "lr": 0.0, "tokens_per_s": None,
                       "probes": hooks.probe(unwrapped), "memory_mib": memory_mib(device)})
    ddp_model.train()
    last_loss = math.nan
    for step in range(start, spec.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        tokens = 0
        total = torch.zeros((), device=device)
        for micro in range(spec.grad_accum):
            idx = _batch_indices(n, step, micro, spec, rank, world)
            soft = None if spec.soft_ids is None else (spec.soft_ids[idx], spec.soft_logp[idx])
            loss, ntok = _loss(ddp_model, spec.ids[idx].to(device), spec.lengths[idx], spec.labels[idx].to(device), soft)
            loss = spec.sign * loss
            tokens += ntok
            if spec.retain_ids is not None:
                m = spec.retain_ids.shape[0]
                ridx = _batch_indices(m, step, micro, spec, rank, world)
                r_ids, r_len = spec.retain_ids[ridx].to(device), spec.retain_lengths[ridx]
                if spec.retain_loss == "kl":
                    rloss, rtok = kl_to_baseline(ddp_model, unwrapped, r_ids, r_len)
                else:
                    rloss, rtok = _loss(ddp_model, r_ids, r_len, spec.retain_labels[ridx].to(device))
                loss = loss + spec.retain_weight * rloss
                tokens += rtok
            acc.backward(loss / spec.grad_accum)
            total += loss.detach() / spec.grad_accum
        acc.clip_grad_norm_(params, spec.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        last_loss = float(acc.reduce(total, "mean"))
        if not math.isfinite(last_loss):
            raise UserError(f"{spec.phase}: the loss became {last_loss} at step {step + 1}: lower the learning rate")
        done = step + 1
        dt = time.perf_counter() - t0
        if main and (done % hooks.log_every == 0 or done == spec.steps):
            m = {"step": done, "phase": spec.phase, "loss": last_loss, "lr": lr_at(step),
                 "tokens_per_s": tokens * world / dt, "step_s": dt, "memory_mib": memory_mib(device)}
            if hooks.probe and (done % hooks.probe_every == 0 or done == spec.steps):
                m["probes"] = hooks.probe(unwrapped)
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
    return {"loss": last_loss, "steps": spec.steps}
