"""Per-token inspection of a prompt: baseline, expert, generic and unlearned predictions.

One batched forward gives baseline(original), baseline(translated), expert(original) and
unlearned(original). Full logits stay on the device inside `Inspection`; `view(alpha)` turns them
into top-k lists and tracked-token probabilities, so a new alpha never runs the model again.

With `lens=True` the same forward keeps every block's residual stream, (L + 1, T, H) per row, and
`Inspection.lens(i)` reads position i after each block through the final norm and the unembedding
(the logit lens): only that position, (models x L) rows in one matmul, so a click stays cheap.
`lens_along(model, token)` reads one token's logit at every block and position from its column of
the unembedding only. `scale` scales the unlearned adapter's LoRA update (0: the baseline, 1: as trained).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .generic import GenericParts, _pieces, generic_parts
from .models import Workbench
from .translation import Translation, Translator

MODELS = ("baseline", "expert", "generic", "unlearned")
LOGITS_BUDGET = 4 << 30  # bytes of float32 logits one inspection may hold: (rows x T x V x 4)
MAX_ALPHA = 1000.0
MAX_SCALE = 1.5  # the adapter scale: 0 = the baseline, 1 = as trained, past 1 over-applied
MAX_PROMPT_CHARS = 200_000  # far beyond any context window; a 50 MB paste would stall the tokenizer
PAGE_PROMPT_TOKENS = 1_024  # what the Inspect page draws: past it the strip, the cards and the charts of
                            # every rerun outgrow a browser tab (2,045 tokens took 83 s; 4,669 hung the tab)
PAGE_PROMPT_CHARS = 20_000  # what the Inspect page takes (~5k tokens: past every small model's context, and a
                            # page drawing more would crawl); the CLI takes MAX_PROMPT_CHARS


def check_alpha(alpha) -> float:
    """alpha must be a finite number in [0, MAX_ALPHA]: nan or a negative alpha is no generic prediction."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) \
            or not 0 <= alpha <= MAX_ALPHA:
        raise UserError(f"alpha must be a number from 0 to {MAX_ALPHA:g}, not {alpha!r}")
    return float(alpha)


def display_pieces(tokenizer, ids: list[int], longest: int = 8) -> list[str]:
    """Each token as text, with byte-level pieces merged: a character split over several tokens
    ("你" as three byte tokens) decodes to "\ufffd" alone, so its whole text goes on the run's first
    token and "" on the rest. Joined, the pieces are the decoded prompt."""
    out = [tokenizer.decode([i]) for i in ids]
    i = 0
    while i < len(out):
        if "\ufffd" not in out[i]:
            i += 1
            continue
        for j in range(i + 2, min(i + longest, len(ids)) + 1):
            text = tokenizer.decode(ids[i:j])
            if "\ufffd" not in text:
                out[i: j] = [text] + [""] * (j - i - 1)
                i = j
                break
        else:
            i += 1
    return out


def check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
            or not 0 <= scale <= MAX_SCALE:
        raise UserError(f"the adapter scale must be a number from 0 to {MAX_SCALE:g}, not {scale!r}")
    return float(scale)


@dataclass
class _Stats:
    """Per-position statistics of one model's next-token distribution, moved to the CPU once."""

    top_ids: list[list[int]]  # (T, k)
    top_probs: list[list[float]]  # (T, k)
    next_prob: list[float | None]  # (T,) probability of the token that actually follows
    next_rank: list[int | None]  # (T,) its rank, 1 = top
    tracked: dict[int, list[float]]  # token id -> (T,) probabilities


def _stats(logits: torch.Tensor, next_ids: torch.Tensor, k: int, tracked: list[int],
           pieces: list[slice] | None = None) -> _Stats:
    """logits (T, V) on the device; next_ids (T,) with -1 where no token follows.

    Never materialises the (T, V) softmax: one logsumexp pass gives the normaliser, and top-k, rank
    and the tracked columns read the logits (the rank of a token is the same under its logit). On a
    CPU the passes run a few rows at a time (`_pieces`): each is memory-bound, and a piece in cache
    makes the five passes about three times faster than over the whole (T, V) tensor."""
    out = _Stats([], [], [], [], {t: [] for t in tracked})
    for part in pieces or _pieces(len(logits), logits):
        _stats_into(out, logits[part].float(), next_ids[part], k, tracked)
    return out


def _stats_into(out: _Stats, logits: torch.Tensor, next_ids: torch.Tensor, k: int, tracked: list[int]) -> torch.Tensor:
    """_stats of rows logits (t, V), appended to `out`; returns their logsumexp (t,)."""
    lse = logits.logsumexp(-1, keepdim=True)  # (t, 1)
    top = logits.topk(k, dim=-1)
    has_next = next_ids >= 0
    l_next = logits.gather(-1, next_ids.clamp(min=0)[:, None])  # (t, 1)
    p_next = (l_next - lse).exp().squeeze(-1)  # (t,)
    rank = (logits > l_next).sum(-1) + 1  # (t,)
    hn = has_next.tolist()
    out.top_ids += top.indices.tolist()
    out.top_probs += (top.values - lse).exp().tolist()
    out.next_prob += [p if h else None for p, h in zip(p_next.tolist(), hn)]
    out.next_rank += [r if h else None for r, h in zip(rank.tolist(), hn)]
    if tracked:
        for t, ps in zip(tracked, (logits[:, tracked] - lse).exp().T.tolist()):
            out.tracked[t] += ps
    return lse.squeeze(-1)


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
    neg_entropy: torch.Tensor  # (Ta,) sum_v p_b log p_b at those rows
    tokenizer: object
    top_k: int
    tracked_ids: dict[str, int]  # tracked string -> its first token id
    notes: list[str] = field(default_factory=list)
    truncated: int = 0
    target: str = "whp"  # whp: generic = base(translated) - alpha relu(expert - base); elm: the ELM-style target
    scale: float = 1.0  # the unlearned adapter's LoRA update was scaled by this
    hidden: dict = field(default_factory=dict, repr=False)
    """lens=True only: model (baseline, translated, expert, unlearned) -> (L + 1, T, H) residual stream."""
    lens_logits: object = None  # Workbench.lens_logits (the final norm and unembedding)
    _views: dict = field(default_factory=dict, repr=False)
    _lens: dict = field(default_factory=dict, repr=False)
    _pieces: dict = field(default_factory=dict, repr=False)

    def piece(self, token_id: int) -> str:
        """A token id as text; decoded once per inspection (a view decodes T x models x k of them)."""
        text = self._pieces.get(token_id)
        if text is None:
            text = self._pieces[token_id] = self.tokenizer.decode([token_id])
        return text

    def generic_stats(self, alpha: float) -> tuple[_Stats, list[float | None]]:
        """Generic statistics for one alpha and KL(baseline || generic), per original position."""
        alpha = check_alpha(alpha)
        if alpha in self._views:
            return self._views[alpha]
        rows = self.parts.rows
        nxt = torch.tensor(self.ids[1:] + [-1], device=rows.device)[rows]
        tracked = list(self.tracked_ids.values())
        s = _Stats([], [], [], [], {t: [] for t in tracked})
        kl_rows: list[float] = []
        # KL(b || g) = sum_v p_b (log p_b - g + lse_g): the first term is alpha-free (neg_entropy), so
        # each piece of rows costs the generic formula, its statistics and one dot product.
        for part in _pieces(len(rows), self.baseline_logp):
            g = self.parts.logits(alpha, part).float()  # (t, V)
            lse_g = _stats_into(s, g, nxt[part], self.top_k, tracked)
            cross = torch.linalg.vecdot(self.baseline_logp[part].exp(), g)  # (t,) sum_v p_b g
            kl_rows += (self.neg_entropy[part] - cross + lse_g).tolist()
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

    @property
    def has_lens(self) -> bool:
        return bool(self.hidden)

    @property
    def num_layers(self) -> int:
        return next(iter(self.hidden.values())).shape[0] - 1 if self.hidden else 0

    def _need_lens(self) -> None:
        if not self.hidden:
            raise UserError("this inspection kept no hidden states: run it with the lens on (--lens)")

    def lens(self, i: int, alpha: float = 5.0, k: int | None = None) -> dict[str, list[dict]]:
        """The logit lens at original position i: per model, one entry per block 1..L,
        {"top": [{token, id, prob}] (k), "tracked": {text: prob}, "rank": {text: rank}}. Generic (WHP
        target, at an aligned position) is the formula on the lens logits of baseline(translated) and
        expert at that block, forbidden translations at the row mean: its last entry is the view's."""
        self._need_lens()
        alpha, k = check_alpha(alpha), k or self.top_k
        if not 0 <= i < len(self.ids):
            raise UserError(f"position {i} is outside the prompt (0..{len(self.ids) - 1})")
        key = (i, alpha, k)
        if key in self._lens:
            return self._lens[key]
        L = self.num_layers
        models = [m for m in ("baseline", "expert", "unlearned") if m in self.hidden]
        rows = [(m, self.hidden[m][1:, i]) for m in models]  # (L, H) each: after blocks 1..L
        j = (self.parts.rows == i).nonzero()
        generic = self.target == "whp" and len(j) > 0
        if generic:
            rows.append(("translated", self.hidden["translated"][1:, self.translation.mapping[i]]))
        h = torch.cat([r for _, r in rows])  # (M L, H)
        layer = torch.arange(1, L + 1, device=h.device).repeat(len(rows))
        logits = dict(zip([m for m, _ in rows], self.lens_logits(h, layer).split(L)))  # model -> (L, V)
        if generic:
            base_t = logits.pop("translated")
            g = base_t if "expert" not in logits else base_t - alpha * torch.relu(logits["expert"] - base_t)
            cols = self.parts.forbid_cols[self.parts.forbid_rows == int(j[0])]
            if len(cols):
                g = g.clone()
                g[:, cols] = g.mean(-1, keepdim=True)
            logits["generic"] = g
        tracked = list(self.tracked_ids.items())
        out = {}
        for m in MODELS:
            if m not in logits:
                continue
            probs = logits[m].softmax(-1)  # (L, V)
            top = probs.topk(k, dim=-1)
            t_ids = torch.tensor([t for _, t in tracked], dtype=torch.long, device=probs.device)
            t_p = probs[:, t_ids] if tracked else probs[:, :0]  # (L, P)
            t_rank = (probs[:, None, :] > t_p[:, :, None]).sum(-1) + 1 if tracked else t_p.long()  # (L, P)
            ids, ps, tp, tr = top.indices.tolist(), top.values.tolist(), t_p.tolist(), t_rank.tolist()
            out[m] = [{"top": [{"token": self.piece(t), "id": t, "prob": p} for t, p in zip(ids[l], ps[l])],
                       "tracked": {text: tp[l][n] for n, (text, _) in enumerate(tracked)},
                       "rank": {text: tr[l][n] for n, (text, _) in enumerate(tracked)}} for l in range(L)]
        self._lens[key] = out
        return out

    def lens_along(self, model: str, text: str) -> list[list[float]]:
        """(L, T) logit-lens logit of tracked `text` after every block (1..L) at every position, for
        baseline / expert / unlearned: only that token's column of the unembedding."""
        self._need_lens()
        if model not in self.hidden or model == "translated":
            raise UserError(f"no {model} model in this inspection")
        if text not in self.tracked_ids:
            raise UserError(f"{text!r} is not a pinned token of this inspection")
        key = ("along", model, text)
        if key not in self._lens:
            hs = self.hidden[model][1:]  # (L, T, H)
            L, T, H = hs.shape
            layer = torch.arange(1, L + 1, device=hs.device).repeat_interleave(T)
            col = self.lens_logits(hs.reshape(L * T, H), layer, [self.tracked_ids[text]])  # (L T, 1)
            self._lens[key] = col.reshape(L, T).tolist()
        return self._lens[key]

    def view(self, alpha: float = 5.0, lens: bool = False) -> dict:
        """A JSON-ready view: per position the input token, each model's top-k with probabilities,
        the probability and rank of the token that follows, KL(baseline || generic); with `lens`,
        each position's logit lens (`lens[model]`: one entry per block, see lens())."""
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
            if lens:
                pos["lens"] = self.lens(i, alpha)
            positions.append(pos)
        tracked = {
            text: {m: all_stats[m].tracked[tid] for m in MODELS if m in all_stats}
            for text, tid in self.tracked_ids.items()
        }
        return {
            "model": self.model, "alpha": alpha, "target": self.target, "notes": self.notes, "scale": self.scale,
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
    lens: bool = False,
    scale: float = 1.0,
) -> Inspection:
    """Run the prompt once through every model and keep what any alpha's view needs.

    elm: an ElmOptions (engine/methods/elm.py) to show the ELM-style target as the generic row instead
    of WHP's: the baseline after the novice and the expert persona prefixes join the batch, and
    view(x) reads x as eta. The prompt is then not translated (ELM uses no dictionary).
    lens: keep every block's residual stream for Inspection.lens (the same forward).
    scale: the unlearned adapter's LoRA update times this (0..1.5).
    """
    scale = check_scale(scale)
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
    per_token = wb.vocab_size + (wb.num_layers + 1) * int(getattr(wb._base.config, "hidden_size", 0) or 0) * lens
    most = LOGITS_BUDGET // (rows * per_token * 4)
    if len(ids) > most and most < limit:
        kept = "logits and hidden states" if lens else "logits"
        raise UserError(f"the prompt is {len(ids):,} tokens; inspecting {rows} models keeps every position's "
                        f"{kept}, so this model takes at most {most:,} tokens here: paste a shorter passage")
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
    with wb.adapter_scale(unlearned, scale):
        logits, hidden = wb.logits_and_hidden(batch) if lens else (wb.logits(batch), None)
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
    baseline_logp = torch.empty((len(parts.rows), base_o.shape[-1]), device=base_o.device)  # (Ta, V)
    neg_entropy = torch.empty(len(parts.rows), device=base_o.device)
    for part in _pieces(len(parts.rows), base_o):
        lp = baseline_logp[part] = base_o[parts.rows[part]].log_softmax(-1)
        neg_entropy[part] = torch.linalg.vecdot(lp.exp(), lp)
    kept: dict = {}
    if hidden is not None:
        kept = {"baseline": hidden[0], "translated": hidden[1] if not translation.is_identity else hidden[0]}
        if expert:
            kept["expert"] = hidden[n_models - 1 - bool(unlearned)]
        if unlearned:
            kept["unlearned"] = hidden[n_models - 1]
    return Inspection(
        model=wb.name, ids=ids, tokens=display_pieces(tok, ids), translation=translation,
        translated_tokens=display_pieces(tok, translation.translated_ids), parts=parts, stats=stats,
        baseline_logp=baseline_logp, neg_entropy=neg_entropy, tokenizer=tok, top_k=top_k,
        tracked_ids=tracked_ids, notes=notes, truncated=truncated, target="elm" if elm is not None else "whp",
        scale=scale, hidden=kept, lens_logits=wb.lens_logits if kept else None,
    )


def lens_split(lens: dict[str, list[dict]], text: str, model: str = "unlearned", reference: str = "baseline",
               ratio: float = 0.5) -> dict | None:
    """Where `model`'s lens curve for tracked `text` leaves `reference`'s. A block counts where the
    reference holds the token (at least a tenth of its highest lens probability, and 1e-3); there the
    model follows the reference when it gives at least `ratio` x its probability. {"split": the block
    after the last one it follows (1..L; the first counted block when it follows none), or None when
    its output is not suppressed or the reference never holds the token; "first": the first counted
    block; "model", "reference": P per block}; None when either model or the token is missing."""
    if model not in lens or reference not in lens or text not in lens[reference][0]["tracked"]:
        return None
    pm = [e["tracked"][text] for e in lens[model]]
    pr = [e["tracked"][text] for e in lens[reference]]
    floor = max(1e-3, 0.1 * max(pr))
    counted = [b for b, p in enumerate(pr) if p >= floor]
    first = counted[0] + 1 if counted else None
    follows = [b for b in counted if pm[b] >= ratio * pr[b]]
    split = None
    if counted and pm[-1] < ratio * pr[-1]:
        later = [b for b in counted if not follows or b > follows[-1]]
        split = later[0] + 1 if later else None
    return {"split": split, "first": first, "model": pm, "reference": pr}
