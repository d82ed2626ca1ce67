"""How well an anchor dictionary covers a corpus: terms that never occur, names with no entry.

Pure text work (no model): the Anchors page preview and `python -m engine translate` both use it.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .anchors import AnchorDictionary
from .translation import Translation

# Capitalised words that are ordinary English wherever they stand, not names.
_COMMON = {
    "I", "I'm", "I've", "I'll", "I'd", "Mr", "Mrs", "Ms", "Dr", "Sir", "Lady", "Lord", "Professor",
    "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "January", "February",
    "March", "April", "May", "June", "July", "August", "September", "October", "November", "December",
    "English", "British", "Britain", "England", "London", "Scotland", "United", "States", "Christmas",
}
_WORD = re.compile(r"[A-Z][A-Za-z'\u2019-]*[A-Za-z]|[A-Z]")
_SENTENCE_END = re.compile(r"[.!?:\"\u201c\u201d(\n]\s*$")


@dataclass
class Coverage:
    unused_terms: list[str] = field(default_factory=list)
    """Enabled terms that never occur in the text (as the translator matches them)."""
    uncovered: list[tuple[str, int, str]] = field(default_factory=list)
    """(word, count, example) capitalised mid-sentence words with no entry, most frequent first."""
    matched: int = 0
    """Anchored-term occurrences in the text."""
    missed: int = 0
    """Occurrences of every uncovered name (each seen at least min_count times, before the limit)."""

    @property
    def share(self) -> float | None:
        """Of the name occurrences in the text (anchored terms and uncovered names), the share the
        dictionary covers; None when the text has none."""
        total = self.matched + self.missed
        return self.matched / total if total else None


def coverage(anchors: AnchorDictionary, text: str, translation: Translation, min_count: int = 2,
             limit: int = 50) -> Coverage:
    """`translation` is the text translated through `anchors` (its occurrences say what matched)."""
    occurrences = len(translation.occurrences)
    matched = {o.term for o in translation.occurrences}
    unused = [t for t in anchors.enabled if t not in matched]
    known = {w.lower() for term in anchors.entries for w in re.findall(r"[\w'\u2019-]+", term)}
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for m in _WORD.finditer(text):
        word = re.sub(r"['\u2019]s$", "", m.group())
        before = text[max(0, m.start() - 3): m.start()]
        if m.start() == 0 or _SENTENCE_END.search(before) or not before.strip():
            continue  # a sentence start: capitalised for grammar, not because it is a name
        if word in _COMMON or word.lower() in known or len(word) < 2:
            continue
        counts[word] += 1
        if word not in examples:
            lo, hi = text.rfind(".", 0, m.start()) + 1, text.find(".", m.end())
            examples[word] = " ".join(text[lo: hi + 1 if hi >= 0 else None].split())[:160]
    frequent = [(w, c) for w, c in counts.most_common() if c >= min_count]
    uncovered = [(w, c, examples[w]) for w, c in frequent][:limit]
    return Coverage(unused, uncovered, occurrences, sum(c for _, c in frequent))
