"""Translation of a token block through the anchored terms, and its alignment to the original.

Matching works on token ids, in the forms each term takes in running text as the tokenizer makes
them (" Hogwarts" after a space, "Hogwarts" at a line start or after punctuation, and the
capitalised form of a lower-case term at a sentence start), never by slicing strings. Terms match
whole words only and the longest term wins at each position.

Alignment (reference, step 5): `mapping[i]` is the translated position aligned to original
position i, or -1 (no label):
- ordinary tokens map one to one, shifted by the running length difference;
- a term of n tokens replaced by m tokens: its first n-1 positions map to -1, its last token to
  the translation's last token (both predict the token after the term);
- the position just before a repeated occurrence of a term maps to -1 (else "my name is -> Jon").
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

from .anchors import AnchorDictionary


@dataclass
class Occurrence:
    term: str
    translation: str  # as inserted (capitalised form if the term was)
    start: int  # original token span [start, end)
    end: int
    translated_start: int  # translated token span
    translated_end: int


@dataclass
class Translation:
    original_ids: list[int]
    translated_ids: list[int]
    mapping: list[int]  # len(original_ids); translated position or -1
    occurrences: list[Occurrence] = field(default_factory=list)
    forbidden: list[tuple[int, list[int]]] = field(default_factory=list)
    """(translated position p, token ids): from row p on, these ids are forbidden in generic rows."""
    choice: dict[str, str] = field(default_factory=dict)  # term -> chosen candidate for this block
    unlabel_before: bool = False
    """A chunk of a longer text only: it opens with a repeated term, so the position before it (the last
    of the previous chunk) has no label."""

    @property
    def dropped(self) -> list[int]:
        """Original positions with no generic label."""
        return [i for i, j in enumerate(self.mapping) if j < 0]

    @property
    def is_identity(self) -> bool:
        return self.translated_ids == self.original_ids


CHUNK_CHARS = 1 << 20  # characters per tokenizer call on a long text: one call over 50 MB peaks at ~6 GB
# A cut just before a line break that a non-space follows: a byte-level BPE's pre-tokenizer makes that
# line break its own piece (in ".\n\nHe" too: ".", "\n", "\n", "He"), so nothing merges across the cut;
# anchored terms hold no line break, so none spans it.
_BOUNDARY = re.compile(r"\n(?=\S)")


def split_text(text: str, size: int = CHUNK_CHARS) -> list[str]:
    """`text` cut into pieces of about `size` characters, each cut just before a line break that a
    non-space follows (a text with no such break stays whole)."""
    pieces, start = [], 0
    while len(text) - start > size:
        m = _BOUNDARY.search(text, start + size)
        if m is None:
            break
        pieces.append(text[start: m.start()])
        start = m.start()
    pieces.append(text[start:])
    return pieces


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


class Translator:
    """Holds a tokenizer's token forms of every enabled term; translates blocks of token ids."""

    def __init__(self, tokenizer, anchors: AnchorDictionary):
        self.tokenizer = tokenizer
        self.entries = anchors.enabled
        self.special = set(tokenizer.all_special_ids)
        # first token id -> [(form ids, term, leading space?, capitalised?)], longest term first
        self.index: dict[int, list[tuple[tuple[int, ...], str, bool, bool]]] = {}
        for term in self.entries:
            variants = [(term, False)]
            if term[:1].islower():
                variants.append((_capitalise(term), True))
            for written, cap in variants:
                for space in (True, False):
                    ids = tuple(self._encode((" " if space else "") + written))
                    if ids:
                        self.index.setdefault(ids[0], []).append((ids, term, space, cap))
        for forms in self.index.values():
            forms.sort(key=lambda f: (len(f[1]), len(f[0])), reverse=True)
        self._piece = lru_cache(maxsize=None)(self._decode_one)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _decode_one(self, token_id: int) -> str:
        return "" if token_id in self.special else self.tokenizer.decode([token_id])

    def _word_before(self, ids: list[int], i: int) -> bool:
        """Does the token before position i end inside a word?"""
        if i == 0:
            return False
        piece = self._piece(ids[i - 1])
        return bool(piece) and (piece[-1].isalnum() or piece[-1] == "_")

    def _word_after(self, ids: list[int], j: int) -> bool:
        """Does the token at position j continue the word before it?"""
        if j >= len(ids):
            return False
        piece = self._piece(ids[j])
        return bool(piece) and (piece[0].isalnum() or piece[0] == "_")

    def choose(self, seed: int | str) -> dict[str, str]:
        """One candidate per term for a block, from a seeded generator (the same seed, the same choice)."""
        rng = random.Random(seed)
        return {t: rng.choice(self.entries[t]) for t in sorted(self.entries)}

    def translate(self, ids: list[int], seed: int | str = 0, seen: tuple[set, set] | None = None) -> Translation:
        """seen: the (terms, translations) met in the text before `ids`, when `ids` continues it (a
        chunk of a long text); updated in place."""
        choice = self.choose(seed)
        out: list[int] = []
        mapping: list[int] = [-1] * len(ids)
        occurrences: list[Occurrence] = []
        forbidden: list[tuple[int, list[int]]] = []
        seen_terms, seen_translations = seen if seen is not None else (set(), set())
        unlabel_before = False
        i = 0
        while i < len(ids):
            match = None
            for form, term, space, cap in self.index.get(ids[i], ()):
                n = len(form)
                if tuple(ids[i: i + n]) != form or self._word_after(ids, i + n):
                    continue
                if not space and self._word_before(ids, i):
                    continue
                match = (form, term, space, cap)
                break
            if match is None:
                mapping[i] = len(out)
                out.append(ids[i])
                i += 1
                continue
            form, term, space, cap = match
            translation = _capitalise(choice[term]) if cap else choice[term]
            t_ids = self._encode((" " if space else "") + translation)
            n, t = len(form), len(out)
            out.extend(t_ids)
            mapping[i + n - 1] = t + len(t_ids) - 1  # positions i .. i+n-2 stay -1
            if term in seen_terms and i > 0:
                mapping[i - 1] = -1
            elif term in seen_terms and seen is not None:
                unlabel_before = True
            seen_terms.add(term)
            key = choice[term].lower()
            if key not in seen_translations:
                seen_translations.add(key)
                forbidden.append((t, self._first_tokens(choice[term], t_ids)))
            occurrences.append(Occurrence(term, translation, i, i + n, t, t + len(t_ids)))
            i += n
        return Translation(list(ids), out, mapping, occurrences, forbidden, choice, unlabel_before)

    def _first_tokens(self, translation: str, inserted: list[int]) -> list[int]:
        """The first token of the translation in running text (both cases) and as inserted."""
        firsts = {inserted[0]}
        for written in {translation, _capitalise(translation)}:
            ids = self._encode(" " + written)
            if ids:
                firsts.add(ids[0])
        return sorted(firsts)

    def translate_text(self, text: str, seed: int | str = 0) -> Translation:
        return self.translate(self._encode(text), seed)

    def splits_exactly(self, pieces: list[str]) -> bool:
        """Whether encoding the pieces one by one gives the tokens of the whole text, checked on the
        lines around the first cuts (a SentencePiece tokenizer that prefixes every call with a space does not)."""
        for left, right in list(zip(pieces, pieces[1:]))[:8]:
            before, after = left[-2000:], right[:2000]
            if self._encode(before + after) != self._encode(before) + self._encode(after):
                return False
        return True

    def translate_chunks(self, text: str, seed: int | str = 0) -> Iterator[tuple[int, int, Translation]]:
        """(original offset, translated offset, Translation) for each piece of a long text, in order:
        together the tokens, alignment and occurrences of `translate_text` (positions relative to the
        piece; add the offsets), but the tokenizer and the lists never hold more than one piece."""
        pieces = split_text(text)
        if not self.splits_exactly(pieces):
            pieces = [text]
        seen: tuple[set, set] = (set(), set())
        start = t_start = 0
        for piece in pieces:
            tr = self.translate(self._encode(piece), seed, seen)
            yield start, t_start, tr
            start, t_start = start + len(tr.original_ids), t_start + len(tr.translated_ids)
