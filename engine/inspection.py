"""Per-token inspection of a prompt: baseline, expert, generic and unlearned predictions.

One batched forward gives baseline(original), baseline(translated), expert(original) and
unlearned(original). Full logits stay on the device inside `Inspection`; `view(alpha)` turns them
into top-k lists and tracked-token probabilities, so a new alpha never runs the model again.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .generic import GenericParts, generic_parts
from .models import Workbench
from .translation import Translation, Translator

MODELS = ("baseline", "expert", "generic", "unlearned")
LOGITS_BUDGET = 4 << 30  # bytes of float32 logits one inspection may hold: (rows x T x V x 4)
MAX_ALPHA = 1000.0
MAX_PROMPT_CHARS = 200_000  # far beyond any context window; a 50 MB paste would stall the tokenizer
PAGE_PROMPT_CHARS = 20_000  # what the Inspect page takes (~5k tokens: past every small model's context, and a
                            # page drawing more would crawl); the CLI takes MAX_PROMPT_CHARS


def check_alpha(alpha) -> float:
    """alpha must be a finite number in [0, MAX_ALPHA]: nan or a negative alpha is no generic prediction."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 <= alpha <= MAX_ALPHA:
        raise UserError(f"alpha must be a number from 0 to {MAX_ALPHA:g}, not {alpha!r}")
    return float(alpha)


@dataclass
class _Stats:
    """Per-position statistics of one model's next-token distribution, moved to the CPU once."""

    top_ids: list[list[int]]  # (T, k)
    top_probs: list[list[float]]  # (T, k)
    next_prob: list[float | None]  # (T,) probability of the token that actually follows
    next_rank: list[int | None]  # (T,) its rank, 1 = top
    tracked: dict[int, list[float]]  # token id -> (T,) probabilities


def _stats(logits: torch.Tensor, next_ids: torch.Tensor, k: int, tracked: list[int]) -> _Stats:
    """logits (T, V) on the device; next_ids (T,) with -1 where no token follows."""
    probs = logits.float().softmax(-1)  # (T, V)
    top = probs.topk(k, dim=-1)
    has_next = next_ids >= 0
    nxt = next_ids.clamp(min=0)
    p_next = probs.gather(-1, nxt[:, None]).squeeze(-1)  # (T,)
    rank = (probs > p_next[:, None]).sum(-1) + 1  # (T,)
    tracked_p = probs[:, tracked].T.tolist() if tracked else []
    hn = has_next.tolist()
    return _Stats(
        top.indices.tolist(), top.values.tolist(),
        [p if h else None for p, h in zip(p_next.tolist(), hn)],
        [r if h else None for r, h in zip(rank.tolist(), hn)],
        dict(zip(tracked, tracked_p)),
    )


@dataclass
class Inspection:
    """The result of one batched forward over a prompt; cheap to re-view for any alpha."""

    model: str
    ids: list[int]
    tokens: list[str]  # readable pieces of the original prompt
    translation: Translation
    translated_tokens: list[str]
    parts: GenericParts
    stats: dict[str, _Stats]  # baseline / expert / unlearned (alpha-free)
    baseline_logp: torch.Tensor  # (Ta, V) log-softmax of baseline at generic rows, for the KL
    tokenizer: object
    top_k: int
    tracked_ids: dict[str, int]  # tracked string -> its first token id
    notes: list[str] = field(default_factory=list)
    truncated: int = 0
    target: str = "whp"  # whp: generic = base(translated) - alpha relu(expert - base); elm: the ELM-style target
    _views: dict = field(default_factory=dict, repr=False)

    def piece(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def generic_stats(self, alpha: float) -> tuple[_Stats, list[float | None]]:
        """Generic statistics for one alpha and KL(baseline || generic), per original position."""
        alpha = check_alpha(alpha)
        if alpha in self._views:
            return self._views[alpha]
        rows = self.parts.rows
        g = self.parts.logits(alpha)  # (Ta, V)
        nxt = torch.tensor(self.ids[1:] + [-1], device=g.device)[rows]
        s = _stats(g, nxt, self.top_k, list(self.tracked_ids.values()))
        kl_rows = (self.baseline_logp.exp() * (self.baseline_logp - g.log_softmax(-1))).sum(-1).tolist()
        T = len(self.ids)
        full = _Stats([[]] * T, [[]] * T, [None] * T, [None] * T, {t: [None] * T for t in s.tracked})
        kl: list[float | None] = [None] * T
        for j, i in enumerate(rows.tolist()):
            full.top_ids[i], full.top_probs[i] = s.top_ids[j], s.top_probs[j]
            full.next_prob[i], full.next_rank[i] = s.next_prob[j], s.next_rank[j]
            for t in s.tracked:
                full.tracked[t][i] = s.tracked[t][j]
            kl[i] = max(kl_rows[j], 0.0)
        self._views[alpha] = (full, kl)
        return full, kl

    def view(self, alpha: float = 5.0) -> dict:
        """A JSON-ready view: per position the input token, each model's top-k with probabilities,
        the probability and rank of the token that follows, KL(baseline || generic)."""
        alpha = check_alpha(alpha)
        gstats, kl = self.generic_stats(alpha)
        all_stats = dict(self.stats, generic=gstats)
        in_term = {}
        for occ in self.translation.occurrences:
            for i in range(occ.start, occ.end):
                in_term[i] = occ.term
        positions = []
        for i, tok in enumerate(self.tokens):
            pos = {"index": i, "token": tok, "aligned_to": self.translation.mapping[i],
                   "term": in_term.get(i), "next_token": self.tokens[i + 1] if i + 1 < len(self.tokens) else None}
            for m in MODELS:
                s = all_stats.get(m)
                if s is None or not s.top_ids[i]:
                    pos[m] = None
                    continue
                pos[m] = [{"token": self.piece(t), "id": t, "prob": p} for t, p in zip(s.top_ids[i], s.top_probs[i])]
                pos[f"{m}_next"] = {"prob": s.next_prob[i], "rank": s.next_rank[i]}
            pos["kl_baseline_generic"] = kl[i]
            positions.append(pos)
        tracked = {
            text: {m: all_stats[m].tracked[tid] for m in MODELS if m in all_stats}
            for text, tid in self.tracked_ids.items()
        }
        return {
            "model": self.model, "alpha": alpha, "target": self.target, "notes": self.notes,
            "truncated_tokens": self.truncated,
            "translated_text": self.tokenizer.decode(self.translation.translated_ids),
            "translated_tokens": self.translated_tokens, "mapping": self.translation.mapping,
            "terms": [vars(o) for o in self.translation.occurrences],
            "positions": positions, "tracked": tracked,
        }


def inspect(
    wb: Workbench,
    prompt: str,
    anchors: AnchorDictionary | None = None,
    expert: str | None = None,
    unlearned: str | None = None,
    top_k: int = 5,
    track: list[str] | tuple[str, ...] = (),
    seed: int = 0,
    elm=None,
) -> Inspection:
    """Run the prompt once through every model and keep what any alpha's view needs.

    elm: an ElmOptions (engine/methods/elm.py) to show the ELM-style target as the generic row instead
    of WHP's: the baseline after the novice and the expert persona prefixes join the batch, and
    view(x) reads x as eta. The prompt is then not translated (ELM uses no dictionary).
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty: type some text to inspect")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"the prompt is {len(prompt):,} characters; inspect takes at most {MAX_PROMPT_CHARS:,}")
    if not 1 <= top_k <= 100:
        raise UserError("top-k must be between 1 and 100")
    tok = wb.tokenizer
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    notes: list[str] = []
    truncated = 0
    limit = wb.max_length
    if elm is not None:
        from .methods.elm import persona_prefixes

        novice, expert_prefix = persona_prefixes(tok, elm)
        anchors = None
    rows = 1 + (anchors is not None) + bool(expert) + bool(unlearned) + 2 * (elm is not None)
    most = LOGITS_BUDGET // (rows * wb.vocab_size * 4)
    if len(ids) > most and most < limit:
        raise UserError(f"the prompt is {len(ids):,} tokens; inspecting {rows} models keeps every position's "
                        f"logits, so this model takes at most {most:,} tokens here: paste a shorter passage")
    if len(ids) > limit:
        truncated = len(ids) - limit
        ids = ids[-limit:]
        msg = f"prompt is {len(ids) + truncated} tokens, longer than the model's context {limit}: kept the last {limit}"
        warnings.warn(msg)
        notes.append(msg)
    translation = Translator(tok, anchors).translate(ids, seed) if anchors else \
        Translation(ids, list(ids), list(range(len(ids))))
    translation.translated_ids = translation.translated_ids[:limit]
    translation.mapping = [j if j < limit else -1 for j in translation.mapping]

    # One batch: baseline(original), [baseline(translated)], [expert(original)], [unlearned(original)].
    batch: list[tuple[list[int], str | None]] = [(ids, None)]
    if not translation.is_identity:
        batch.append((translation.translated_ids, None))
    if expert:
        batch.append((ids, expert))
    if unlearned:
        batch.append((ids, unlearned))
    n_models = len(batch)
    if elm is not None:
        batch += [(novice + ids, None), (expert_prefix + ids, None)]
    logits = wb.logits(batch)
    base_o = logits[0]
    base_t = logits[1] if not translation.is_identity else base_o
    expert_o = logits[n_models - 1 - bool(unlearned)] if expert else None
    unlearned_o = logits[n_models - 1] if unlearned else None

    if elm is not None:
        notes.append(f"generic is the ELM-style target: the baseline + eta x (novice - expert) about {elm.concept!r}")
    elif expert is None and translation.occurrences:
        notes.append("no expert: generic is the baseline on the translated prompt (anchored terms only)")
    elif expert is None:
        notes.append("no expert and no anchored term in the prompt: generic equals the baseline")
    elif not translation.occurrences:
        notes.append("no anchored term in the prompt: generic compares expert and baseline on the same text (MUSE-style)")

    tracked_ids: dict[str, int] = {}
    for t in track:
        t_ids = tok(t, add_special_tokens=False)["input_ids"]
        if t_ids:
            tracked_ids[t] = t_ids[0]
    track_list = list(tracked_ids.values())
    nxt = torch.tensor(ids[1:] + [-1], device=base_o.device)
    stats = {"baseline": _stats(base_o, nxt, top_k, track_list)}
    if expert_o is not None:
        stats["expert"] = _stats(expert_o, nxt, top_k, track_list)
    if unlearned_o is not None:
        stats["unlearned"] = _stats(unlearned_o, nxt, top_k, track_list)
    if elm is not None:
        from .methods.elm import elm_parts

        parts = elm_parts(base_o, logits[-2][len(novice):], logits[-1][len(expert_prefix):], elm)
    else:
        parts = generic_parts(translation, base_t, expert_o)
    return Inspection(
        model=wb.name, ids=ids, tokens=[tok.decode([i]) for i in ids], translation=translation,
        translated_tokens=[tok.decode([i]) for i in translation.translated_ids], parts=parts, stats=stats,
        baseline_logp=base_o[parts.rows].log_softmax(-1), tokenizer=tok, top_k=top_k,
        tracked_ids=tracked_ids, notes=notes, truncated=truncated, target="elm" if elm is not None else "whp",
    )
