"""The one whole-word matcher: a term as a whole word in running text.

Used wherever text is searched for a term: completion familiarity (a completion naming a term),
the suggestion's evidence (how often, and where), the corpus split of the relearning attack.
A term matches when no letter, digit, apostrophe or hyphen runs into it from the left and no letter,
digit or hyphen continues it on the right: "Ron" is not in "Ronald", "Death" is not in "Death-Eater",
"Frodo" is in "Frodo's". Terms that end in punctuation ("Mr.") still anchor.
"""
from __future__ import annotations

import re
from functools import lru_cache

_LEFT = r"(?<![\w'\u2019-])"
_RIGHT = r"(?![\w-])"


@lru_cache(maxsize=50_000)
def word_pattern(term: str, capitalised_too: bool = False) -> re.Pattern:
    """The compiled pattern of `term`; capitalised_too: a lower-case term also matches with a capital
    first letter (at a sentence start)."""
    body = re.escape(term)
    if capitalised_too and term[:1].islower():
        body = f"[{re.escape(term[0])}{re.escape(term[0].upper())}]" + re.escape(term[1:])
    return re.compile(_LEFT + body + _RIGHT)


def mentions(text: str, term: str, capitalised_too: bool = True) -> bool:
    """Whether `text` contains `term` as a whole word."""
    term = term.strip()
    return bool(term) and word_pattern(term, capitalised_too).search(text) is not None


def find_all(text: str, term: str) -> list[re.Match]:
    """Every whole-word occurrence of `term` as written (case-sensitive)."""
    return list(word_pattern(term).finditer(text))
