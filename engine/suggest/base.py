"""What both suggestion routes share: the result shape, consolidation, evidence, chunks."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from ..anchors import AnchorDictionary
from ..errors import UserError
from ..text import find_all

SuggestProgress = Callable[[int, int], None]  # (done, total)


# -- result ---------------------------------------------------------------------------------------
@dataclass
class Suggestion:
    term: str
    candidates: list[str] = field(default_factory=list)
    """Generic translations, most frequent first; empty when nothing good was proposed (the user fills it)."""
    score: float = 0.0
    """Why it ranks where it does: LLM = chunks that named it; offline = see `suggest_offline`."""
    count: int = 0
    """Occurrences in the corpus (case-sensitive, whole words)."""
    example: str = ""
    """A sentence of the corpus that contains the term."""
    source: str = "llm"
    """llm, or offline (then the candidates are the baseline model's suggestions)."""


@dataclass
class Suggestions:
    items: list[Suggestion]
    report: list[str] = field(default_factory=list)
    """What consolidation dropped, and why."""
    failures: list[str] = field(default_factory=list)
    """Chunks whose reply stayed unusable after one retry (the other chunks are kept)."""

    def to_anchors(self) -> AnchorDictionary:
        return AnchorDictionary({s.term: list(s.candidates) for s in self.items})

    def rows(self) -> list[dict]:
        """Review rows: accept, term, translation (editable; ' | ' between candidates) and evidence."""
        return [
            {"accept": bool(s.candidates), "term": s.term, "translation": " | ".join(s.candidates),
             "score": round(s.score, 3), "count": s.count, "example": s.example, "source": s.source}
            for s in self.items
        ]

    def to_json(self) -> dict:
        return {"suggestions": self.rows(), "consolidation": self.report, "failures": self.failures}


def accept_rows(rows: list[dict], into: AnchorDictionary | None = None) -> tuple[AnchorDictionary, list[str]]:
    """Merge the accepted review rows into a copy of `into`; returns it and one note per skipped row.

    A term already in `into` keeps its candidates and gains the new ones (no duplicates). Rows with
    no translation are skipped: an anchored term without a translation is not usable.
    """
    entries = {t: list(c) for t, c in (into.entries.items() if into else ())}
    disabled = set(into.disabled) if into else set()
    skipped: list[str] = []
    for row in rows:
        if not row.get("accept"):
            continue
        term = str(row.get("term") or "").strip()
        cands = [c.strip() for c in str(row.get("translation") or "").split("|") if c.strip()]
        if not term:
            continue
        if not cands:
            skipped.append(f"{term!r}: no translation, not added")
            continue
        bad = [c for c in cands if c == term]
        if bad:
            skipped.append(f"{term!r}: translation equals the term, not added")
            continue
        merged = entries.setdefault(term, [])
        merged += [c for c in cands if c not in merged]
    return AnchorDictionary(entries, {t for t in disabled if t in entries}), skipped


# -- corpus helpers -------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_chunks(text: str, chunk_words: int = 800) -> list[str]:
    """Cut at paragraph boundaries (then sentences, then words) into chunks of at most ~chunk_words."""
    if chunk_words < 10:
        raise UserError("chunk size must be at least 10 words")
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if len(para.split()) <= chunk_words:
            pieces.append(para)
            continue
        for sent in _SENTENCE_END.split(para):
            words = sent.split()
            for i in range(0, len(words), chunk_words):  # a "sentence" longer than a chunk
                pieces.append(" ".join(words[i: i + chunk_words]))
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for p in pieces:
        w = len(p.split())
        if cur and n + w > chunk_words:
            chunks.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += w
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def evidence(text: str, term: str) -> tuple[int, str]:
    """(whole-word occurrences, case-sensitive, the first sentence containing one)."""
    matches = find_all(text, term)
    if not matches:
        return 0, ""
    m = matches[0]
    start = max(text.rfind("\n", 0, m.start()), max((x.end() for x in _SENTENCE_END.finditer(text, 0, m.start())), default=0))
    start = max(start, 0)
    end_m = _SENTENCE_END.search(text, m.end())
    nl = text.find("\n", m.end())
    end = min([e for e in (end_m.start() if end_m else -1, nl) if e >= 0], default=len(text))
    sentence = text[start:end].strip()
    return len(matches), sentence[:300]


def consolidated(items: list[Suggestion]) -> tuple[list[Suggestion], list[str]]:
    kept, report = AnchorDictionary({s.term: s.candidates for s in items}).consolidate()
    return [s for s in items if s.term in kept.entries], report
