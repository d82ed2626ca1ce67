"""Generic predictions: what a model that never read the target would say at each position.

    generic = base(translated) - alpha * relu(expert(original) - base(translated))

at aligned positions (reference, step 6). The ReLU is taken against the baseline on the
*translated* text, as the original code does. `GenericParts` keeps the two alpha-free tensors so
any number of alphas cost one subtraction each, and no forward pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import IGNORE
from .translation import Translation


@dataclass
class GenericParts:
    """Alpha-free pieces of the generic logits on the aligned rows of one block (on the model's device)."""

    rows: torch.Tensor  # (Ta,) original positions that have a label
    base: torch.Tensor  # (Ta, V) baseline logits on the translated block, gathered to those rows
    gap: torch.Tensor | None  # (Ta, V) relu(expert(original) - base(translated)); None without expert
    forbid_rows: torch.Tensor  # (F,) index into rows
    forbid_cols: torch.Tensor  # (F,) token ids forbidden at that row
    length: int  # original block length

    def logits(self, alpha: float, part: slice | None = None) -> torch.Tensor:
        """(Ta, V) generic logits for one alpha, forbidden translations set to the row mean; with
        `part`, only those rows (a slice of 0..Ta: the Inspect view reads them a cache-sized piece at a time)."""
        base, gap = (self.base, self.gap) if part is None else \
            (self.base[part], None if self.gap is None else self.gap[part])
        g = base if gap is None else base - alpha * gap
        fr, fc = self.forbid_rows, self.forbid_cols
        if part is not None and len(fr):
            start, stop, _ = part.indices(len(self.rows))
            inside = (fr >= start) & (fr < stop)
            fr, fc = fr[inside] - start, fc[inside]
        if len(fr):
            g = g.clone() if gap is None else g
            g[fr, fc] = g.mean(-1)[fr]
        return g

    def labels(self, alpha: float) -> torch.Tensor:
        """(T,) hard labels: argmax(generic) at aligned positions, IGNORE elsewhere.

        labels[i] is the target for the prediction made AT position i (i.e. for token i+1).
        """
        out = torch.full((self.length,), IGNORE, dtype=torch.long, device=self.base.device)
        out[self.rows] = self.logits(alpha).argmax(-1)
        return out

    def soft(self, alpha: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft labels: the top-k tokens of the generic distribution and their log-probabilities.

        ((Ta, k) token ids, (Ta, k) log-probs under softmax(generic) over the whole vocabulary), for
        rows `self.rows`. Training on them (cross-entropy to the renormalised top-k) instead of the
        argmax is the reference's suggested improvement: it keeps the baseline's uncertainty at the
        many positions where nothing is forgotten, so the model is not sharpened there.
        """
        logp = self.logits(alpha).float().log_softmax(-1)
        top = logp.topk(min(k, logp.shape[-1]), dim=-1)
        return top.indices, top.values


def _pieces(n: int, like: torch.Tensor, rows: int = 32) -> list[slice]:
    """Row slices for an elementwise pass over an (n, V) tensor: on a CPU, `rows` rows at a time (a
    (32, 49k) float32 piece is 6 MB, within the cache, and each pass over it costs a third of one over
    the whole tensor); on a GPU, one slice (every extra piece is only another kernel launch)."""
    step = n if like.device.type != "cpu" else rows
    return [slice(i, min(i + step, n)) for i in range(0, n, max(step, 1))]


def generic_parts(
    translation: Translation,
    base_translated: torch.Tensor,  # (Tt, V) baseline logits on the translated block
    expert_original: torch.Tensor | None,  # (To, V) expert logits on the original block
) -> GenericParts:
    device = base_translated.device
    mapping = torch.tensor(translation.mapping, dtype=torch.long, device=device)  # (To,)
    rows = (mapping >= 0).nonzero().squeeze(-1)  # (Ta,)
    base = base_translated[mapping[rows]]  # (Ta, V)
    gap = None
    if expert_original is not None:  # relu(expert - base), a few rows at a time: each piece stays in cache
        gap = torch.empty_like(base)
        for part in _pieces(len(rows), base):
            torch.sub(expert_original[rows[part]], base[part], out=gap[part]).relu_()
    # Forbid rule: once a translation has appeared in the translated block (from position p on),
    # its first token(s) get the row mean so labels never teach the made-up names.
    aligned_to = mapping[rows]  # (Ta,) translated position of each labelled row
    fr, fc = [], []
    for p, token_ids in translation.forbidden:
        hit = (aligned_to >= p).nonzero().squeeze(-1)
        for tok in token_ids:
            fr.append(hit)
            fc.append(torch.full_like(hit, tok))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long, device=device)
    return GenericParts(rows, base, gap, cat(fr), cat(fc), len(translation.mapping))
