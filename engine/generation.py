"""Continuations of prompts: from the baseline or an adapter (batched), and from the live generic
combination (MUSE-style inference-only unlearning: base - alpha * relu(expert - base) per step)."""
from __future__ import annotations

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .models import Workbench
from .translation import Translator


def complete(wb: Workbench, prompts: list[str], adapter: str | None = None, max_new_tokens: int = 20,
             temperature: float = 0.0, seed: int = 0) -> list[str]:
    """Greedy (temperature 0) or seeded sampled continuations, text only, one per prompt."""
    if any(not p.strip() for p in prompts):
        raise UserError("a prompt is empty")
    rows = [(wb.tokenizer(p, add_special_tokens=True)["input_ids"][-wb.max_length:], adapter) for p in prompts]
    new = wb.generate(rows, max_new_tokens, temperature=temperature, seed=seed)
    return [wb.tokenizer.decode(g, skip_special_tokens=True) for g in new]


@torch.no_grad()
def complete_generic(wb: Workbench, prompt: str, expert: str | None, alpha: float = 5.0, max_new_tokens: int = 20,
                     anchors: AnchorDictionary | None = None, seed: int = 0) -> str:
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


def complete_all(wb: Workbench, prompt: str, expert: str | None = None, unlearned: str | None = None,
                 alpha: float = 5.0, anchors: AnchorDictionary | None = None, max_new_tokens: int = 20,
                 temperature: float = 0.0, seed: int = 0):
    """Yield (model, continuation) for baseline, expert, generic and unlearned, each as soon as it is
    done, so a page shows them one by one (generic, recomputed per step, is the slowest)."""
    yield "baseline", complete(wb, [prompt], None, max_new_tokens, temperature, seed)[0]
    if expert:
        yield "expert", complete(wb, [prompt], expert, max_new_tokens, temperature, seed)[0]
    yield "generic", complete_generic(wb, prompt, expert, alpha, max_new_tokens, anchors)
    if unlearned:
        yield "unlearned", complete(wb, [prompt], unlearned, max_new_tokens, temperature, seed)[0]
