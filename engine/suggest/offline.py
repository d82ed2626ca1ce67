"""The offline route: idiosyncratic terms ranked by the models themselves, translations proposed
by the baseline through a few-shot prompt. No API, no key."""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Callable

from ..errors import UserError
from .base import SuggestProgress, Suggestion, Suggestions, consolidated, evidence


# Capitalised words, optionally joined by "of" or "of the" ("Ministry of Magic", "Order of the
# Phoenix"). "and" and a bare "the" do not join ("Harry and Ron", "Buckbeak the Hippogriff"
# are two names each).
_WORD = r"[A-Za-z]+(?:[-'\u2019][A-Za-z]+)*"
_CAP = r"[A-Z][A-Za-z]*(?:[-'\u2019][A-Za-z]+)*"
_NAME_RE = re.compile(rf"(?<![\w'\u2019-]){_CAP}(?:(?:[ \t]+(?:of the|of))?[ \t]+{_CAP})*(?![\w-])")
_WORD_RE = re.compile(rf"(?<![\w'\u2019-]){_WORD}(?![\w-])")
_CONNECTORS = ("of", "and", "the")
# Words that open sentences; with the corpus's own lowercase words they tell a capital by position
# ("When Voldemort came") from a name, also in texts too short to contain "when" in lowercase.
_OPENERS = set("""a an the this that these those there then when while where after before during
since until as at by for from in into on onto over under with without of to but and or so yet if
though although because once he she it they we you i his her its their our my your however meanwhile
later soon still even also only all some many most each every both no not""".split())
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)[\"'\u201c\u2018(]?$")
PRIOR_PREFIX = "Word:"
"""What the baseline reads before a term when we ask how improbable the term is on its own."""

FEW_SHOT = (
    "Each name from a story is replaced by a plain, generic equivalent.\n"
    "Frodo -> Tom\nBaggins -> Smith\nGaladriel -> Helen\nMordor -> the eastern land\nGandalf -> Walter\n"
    "Rivendell -> the valley town\nmithril -> silver\nSamwise -> Sam\nlembas -> bread\nGollum -> the creature\n"
)


def _strip_possessive(span: str) -> str:
    for suffix in ("'s", "\u2019s", "'", "\u2019"):
        if span.endswith(suffix):
            return span[: -len(suffix)]
    return span


def _candidates(text: str, with_lowercase: bool = False) -> dict[str, list[tuple[int, int]]]:
    """term -> its (start, end) char spans: proper names (capitalised spans whose words the corpus never
    writes in lowercase, and their single words), plus every lowercase word when an expert can judge it."""
    lower_words = Counter(m.group(0) for m in _WORD_RE.finditer(text) if m.group(0)[0].islower())
    spans: dict[str, set[tuple[int, int]]] = {}
    inside: dict[str, set[tuple[int, int]]] = {}
    for m in _NAME_RE.finditer(text):
        words = [w for w in _WORD_RE.finditer(text, m.start(), m.end())]
        # "The Dursleys", "When Voldemort": at a sentence start, a leading word the corpus also writes
        # in lowercase is capitalised by its position, not because it is a name ("Death Eaters" is one).
        if _SENTENCE_START.search(text, 0, m.start()) or m.start() == 0:
            while words and (lower_words[words[0].group(0).lower()] or words[0].group(0).lower() in _OPENERS):
                words = words[1:]
        while words and words[-1].group(0) in _CONNECTORS:
            words = words[:-1]
        if not words:
            continue
        term = _strip_possessive(text[words[0].start(): words[-1].end()])
        if len(term) > 1:
            spans.setdefault(term, set()).add((words[0].start(), words[0].start() + len(term)))
        parts = [_strip_possessive(w.group(0)) for w in words if w.group(0) not in _CONNECTORS]
        if len(parts) > 1 and not any(lower_words[p.lower()] for p in parts):
            for w in words:
                word = _strip_possessive(w.group(0))
                if word not in _CONNECTORS and len(word) > 1:
                    inside.setdefault(word, set()).add((w.start(), w.start() + len(word)))
    for word, found in inside.items():  # the words of a name are candidates too ("Harry", "Potter")
        spans.setdefault(word, set()).update(found)
    if with_lowercase:
        for m in _WORD_RE.finditer(text):
            if m.group(0)[0].islower() and len(m.group(0)) > 2:
                spans.setdefault(m.group(0), set()).add(m.span())
    return {t: sorted(s) for t, s in spans.items()}


def _consolidated_offline(items: list[Suggestion]) -> tuple[list[Suggestion], list[str]]:
    """The reference's two drops, then one more for names: "Harry's Expelliarmus" goes when
    "Harry" and "Expelliarmus" are terms (every word a term once its possessive is cut)."""
    items, report = consolidated(items)
    terms = {s.term for s in items}
    kept = []
    for s in items:
        words = [_strip_possessive(w) for w in s.term.split()]
        if len(words) > 1 and all(w in terms for w in words):
            report.append(f"dropped {s.term!r}: every word is a term itself (possessives aside)")
        else:
            kept.append(s)
    return kept, report


def _prior_surprisal(wb, terms: list[str], batch_size: int = 64,
                     tick: Callable[[], None] = lambda: None) -> dict[str, float]:
    """-log p(term | PRIOR_PREFIX) under the baseline, in nats, summed over the term's tokens."""
    import torch

    tok = wb.tokenizer
    prefix = tok(PRIOR_PREFIX, add_special_tokens=False)["input_ids"]
    seqs = {t: prefix + tok(" " + t, add_special_tokens=False)["input_ids"] for t in terms}
    order = sorted(terms, key=lambda t: len(seqs[t]))  # similar lengths together: less padding
    out: dict[str, float] = {}
    for i in range(0, len(order), batch_size):
        batch = order[i: i + batch_size]
        logits = wb.logits([(seqs[t], None) for t in batch])  # [(T_i, V)]
        for t, lg in zip(batch, logits):
            s = seqs[t]
            lp = torch.log_softmax(lg[len(prefix) - 1: -1].float(), dim=-1)  # predictions of the term's tokens
            out[t] = float(-lp.gather(1, torch.tensor(s[len(prefix):], device=lp.device)[:, None]).sum())
        tick()
    return out


def _token_rise(wb, ids: list[int], expert: str, block: int, context: int,
                tick: Callable[[], None] = lambda: None) -> "torch.Tensor":
    """log p_expert - log p_baseline of every corpus token given the text before it; (N,).

    Blocks of `block` scored tokens, each read after `context` tokens of the text before it; the
    baseline and the expert of a block share one batched forward.
    """
    import torch

    n = len(ids)
    rise = torch.zeros(n)
    starts = list(range(0, n, block))
    for s in starts:
        lo = max(0, s - context)
        seq = ids[lo: s + block]
        base, exp = wb.logits([(seq, None), (seq, expert)])  # (T, V) each
        tgt = torch.tensor(seq[1:], device=base.device)[:, None]
        lp_b = torch.log_softmax(base[:-1].float(), -1).gather(1, tgt)[:, 0]  # (T-1,) predicts seq[1:]
        lp_e = torch.log_softmax(exp[:-1].float(), -1).gather(1, tgt)[:, 0]
        first = s - lo - 1 if s > 0 else 0  # the positions this block scores (the rest is context)
        rise[lo + 1 + first: lo + len(seq)] = (lp_e - lp_b)[first:].cpu()
        tick()
    return rise


def propose_translations(wb, terms: list[str], max_new_tokens: int = 8, avoid: set[str] = frozenset(),
                         tick: Callable[[], None] = lambda: None) -> dict[str, str]:
    """The baseline's few-shot generic counterpart per term (greedy, cut at the line end); '' where it
    proposed nothing usable: nothing, the term itself, a fragment of it, or a word of another of
    `terms` or of `avoid` (the corpus's names: "Weasley -> Harry" would teach the text's own names)."""
    if not terms:
        return {}
    tok = wb.tokenizer
    prefix = tok(FEW_SHOT, add_special_tokens=False)["input_ids"]
    suffixes = [tok(f"{t} ->", add_special_tokens=False)["input_ids"] for t in terms]
    texts = dict(zip(terms, wb.continue_after(prefix, suffixes, max_new_tokens, stop="\n", tick=tick)))
    names = {_strip_possessive(w) for t in (*terms, *avoid) for w in t.split()
             if w[:1].isupper() and w.lower() not in _OPENERS}  # "The" of "The Quibbler" is no name
    proposals = {}
    for term in terms:
        tr = texts[term].split("\n")[0].strip().strip(".,;:\"'").strip()
        low = tr.lower()
        if (not tr or "->" in tr or len(tr) > 40 or term.lower() in low or low in term.lower()
                or any(_strip_possessive(w) in names for w in re.findall(r"[\w'\u2019-]+", tr))):
            tr = ""  # left for the user
        proposals[term] = tr
    return proposals


def suggest_offline(wb, corpus: str, expert: str | None = None, top_k: int = 60, min_count: int = 2,
                    translate: bool = True, block: int = 512, context: int = 32,
                    progress: SuggestProgress | None = None) -> Suggestions:
    """Idiosyncratic terms of the corpus ranked by the models themselves, with evidence.

    With an expert adapter (the baseline reinforced on the corpus): every word span, scored by its
    mean log-likelihood rise from baseline to expert in context (nats, summed over its tokens) times
    log(1 + count): what reinforcement on this text taught most, and often. One pass over the corpus.
    Without one: proper names (capitalised spans the corpus never writes in lowercase), scored by
    their baseline surprisal on their own (-log p(term | "Word:"), nats) times log(1 + count):
    frequent in this text, improbable to a model that never read it. One short forward per name.
    Generic translations come from the baseline through a few-shot prompt (source "offline";
    blank where it proposed nothing usable, for the user to fill).
    """
    if not corpus or not corpus.strip():
        raise UserError("the corpus is empty: give a UTF-8 text file with the text to unlearn")
    if top_k < 1 or min_count < 1:
        raise UserError("top-k and min-count must be at least 1")
    if expert is not None and expert not in wb.adapters:
        raise UserError(f"no adapter named {expert!r} is loaded")
    spans = {t: s for t, s in _candidates(corpus, with_lowercase=expert is not None).items() if len(s) >= min_count}
    if not spans:
        raise UserError(f"no candidate term occurs {min_count} times or more in the corpus: "
                        "give a longer corpus or lower --min-count")
    block = max(16, min(block, wb.max_length - context))  # a block and its context fit the model
    enc = wb.tokenizer(corpus, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    batches = math.ceil(len(enc["input_ids"]) / block) if expert else math.ceil(len(spans) / 64)
    steps = [0, batches + (math.ceil(top_k / 64) if translate else 0)]

    def tick() -> None:
        steps[0] += 1
        if progress:
            progress(*steps)

    if progress:
        progress(*steps)
    with wb.lock:
        if expert is None:
            prior = _prior_surprisal(wb, list(spans), tick=tick)
            score = {t: prior[t] * math.log1p(len(s)) for t, s in spans.items()}
        else:
            import bisect

            ends = [b for _, b in enc["offset_mapping"]]
            starts = [a for a, _ in enc["offset_mapping"]]
            rise = _token_rise(wb, enc["input_ids"], expert, block, context, tick)
            score = {}
            for t, ss in spans.items():
                # the tokens overlapping a span (byte-level tokens carry their leading space)
                vals = [float(rise[bisect.bisect_right(ends, a): bisect.bisect_left(starts, b)].sum()) for a, b in ss]
                score[t] = sum(vals) / len(vals) * math.log1p(len(ss))
        ranked = [Suggestion(t, [], score[t], len(spans[t]), "", "offline")
                  for t in sorted(spans, key=lambda t: (-score[t], t))]
        # The drops apply to the dictionary being suggested: "Diagon Alley" goes only if "Diagon" and
        # "Alley" both make it in. Take the best terms until top_k survive consolidation.
        chosen: list[Suggestion] = []
        items, report = [], []
        for sug in ranked:
            if len(items) >= top_k:
                break
            chosen.append(sug)
            items, report = _consolidated_offline(chosen)
        for s in items:
            s.example = evidence(corpus, s.term)[1]
        steps[1] = batches + (math.ceil(len(items) / 64) if translate else 0)
        if translate:
            proposals = propose_translations(wb, [s.term for s in items], avoid=set(spans), tick=tick)
            for s in items:
                s.candidates = [proposals[s.term]] if proposals[s.term] else []
    return Suggestions(items, report, [])


