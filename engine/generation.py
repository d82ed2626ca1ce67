"""Continuations of prompts: from the baseline or an adapter (batched), and from the live generic
combination (MUSE-style inference-only unlearning: base - alpha * relu(expert - base) per step)."""
from __future__ import annotations

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .models import BASE, Workbench
from .translation import Translator


def _left_padded(wb: Workbench, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    # generate() appends at the right end, so every row must end at the same column: pad on the left.
    seqs = [wb.tokenizer(p, add_special_tokens=True)["input_ids"][-wb.max_length:] for p in prompts]
    T = max(len(s) for s in seqs)
    pad = wb.tokenizer.pad_token_id or 0
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, T - len(s):] = torch.tensor(s)
        mask[b, T - len(s):] = 1
    return ids.to(wb.device), mask.to(wb.device)


@torch.no_grad()
def complete(
    wb: Workbench,
    prompts: list[str],
    adapter: str | None = None,
    max_new_tokens: int = 20,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 16,
) -> list[str]:
    """Greedy (temperature 0) or seeded sampled continuations, text only, one per prompt."""
    if any(not p.strip() for p in prompts):
        raise UserError("a prompt is empty")
    if adapter is not None and adapter not in wb.adapters:
        raise UserError(f"no adapter named {adapter!r} is loaded")
    out: list[str] = []
    with wb.lock:
        model = wb.full_models.get(adapter, wb.model)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start: start + batch_size]
            ids, mask = _left_padded(wb, chunk)
            kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                          pad_token_id=wb.tokenizer.pad_token_id, do_sample=temperature > 0)
            if temperature > 0:
                torch.manual_seed(seed)
                kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            if model is wb.model and model is not wb.base:
                kwargs["adapter_names"] = [adapter or BASE] * len(chunk)
            gen = model.generate(**kwargs)[:, ids.shape[1]:]  # (B, new)
            out += [wb.tokenizer.decode(g, skip_special_tokens=True) for g in gen]
    return out


@torch.no_grad()
def complete_generic(
    wb: Workbench,
    prompt: str,
    expert: str | None,
    alpha: float = 5.0,
    max_new_tokens: int = 20,
    anchors: AnchorDictionary | None = None,
    seed: int = 0,
) -> str:
    """Greedy continuation from the generic logits, recomputed at every step.

    With anchors, the baseline reads the translated prompt and the expert the original; each new
    token is appended to both. Without an expert this is the baseline on the translated prompt.
    """
    if not prompt.strip():
        raise UserError("the prompt is empty")
    tok = wb.tokenizer
    original = tok(prompt, add_special_tokens=True)["input_ids"][-wb.max_length:]
    translated = Translator(tok, anchors).translate(original, seed).translated_ids if anchors else list(original)
    new: list[int] = []
    for _ in range(max_new_tokens):
        batch = [(translated + new, None)] + ([(original + new, expert)] if expert else [])
        logits = wb.logits(batch)
        base = logits[0][-1]  # (V,) baseline on the translated text
        g = base if not expert else base - alpha * torch.relu(logits[1][-1] - base)
        nxt = int(g.argmax())
        if nxt == tok.eos_token_id:
            break
        new.append(nxt)
    return tok.decode(new, skip_special_tokens=True)
