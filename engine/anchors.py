"""The anchored-terms dictionary: term -> candidate generic translations.

Formats
- JSON: {"Hogwarts": ["Mystic Academy", "Arcane College"], "Ron": "Mark"}; a bare string is one
  candidate; {"term": {"translations": [...], "enabled": false}} keeps a disabled row.
- CSV: `term,translation` rows (an optional header); a repeated term merges its candidates.

Consolidation follows the original pipeline: drop `X's` when `X` is a term, and drop a multi-word
term whose words are all terms ("Diagon Alley" goes when "Diagon" and "Alley" are there).
"""
from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .io import atomic_write_text, parse_json, read_bytes_file, short

MAX_DICTIONARY_BYTES = 16 << 20  # the paper's 1,676-term dictionary is ~100 kB
MAX_TERM_CHARS = 200


def _control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _decapitalise(s: str) -> str:
    """'Commoner' -> 'commoner'; 'UK' and 'McGuffin' stay (the capital is not just a sentence start)."""
    first = s.split(" ")[0]
    return s[:1].lower() + s[1:] if s[:1].isupper() and not any(ch.isupper() for ch in first[1:]) else s


def _folded(cands) -> tuple:
    return tuple(sorted({c.lower() for c in cands if isinstance(c, str)}))


@dataclass
class Changes:
    """What turning one dictionary into another does, term by term (a merge, a replace, an accept)."""

    added: list[str] = field(default_factory=list)
    extended: dict[str, list[str]] = field(default_factory=dict)  # term -> the candidates it gained
    changed: list[str] = field(default_factory=list)  # candidates replaced or removed, or switched on/off
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0

    def summary(self) -> str:
        """One line: '14 new terms; 3 gained candidates (Weasley + the dragon); 39 already there, unchanged'."""
        parts = []
        if self.added:
            parts.append(f"{len(self.added)} new term{'s' * (len(self.added) != 1)}")
        if self.extended:
            shown = "; ".join(f"{t} + {' | '.join(c)}" for t, c in list(self.extended.items())[:3])
            more = f"; +{len(self.extended) - 3} more" if len(self.extended) > 3 else ""
            parts.append(f"{len(self.extended)} existing term{'s' * (len(self.extended) != 1)} gained "
                         f"candidates ({shown}{more})")
        if self.changed:
            parts.append(f"{len(self.changed)} changed")
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        if self.unchanged:
            parts.append(f"{self.unchanged} already there, unchanged")
        return "; ".join(parts) or "no change"


def changes(before: "AnchorDictionary", after: "AnchorDictionary") -> Changes:
    """Term by term, what differs between two dictionaries."""
    out = Changes()
    for term, cands in after.entries.items():
        old = before.entries.get(term)
        if old is None:
            out.added.append(term)
        elif old == cands and (term in before.disabled) == (term in after.disabled):
            out.unchanged += 1
        elif cands[: len(old)] == old and (term in before.disabled) == (term in after.disabled):
            out.extended[term] = cands[len(old):]
        else:
            out.changed.append(term)
    out.removed = [t for t in before.entries if t not in after.entries]
    return out


@dataclass
class Problem:
    term: str
    message: str

    def __str__(self) -> str:
        return f"{self.term!r}: {self.message}" if self.term else self.message


@dataclass
class AnchorDictionary:
    """Ordered term -> candidates, plus the terms a user switched off (kept, not translated)."""

    entries: dict[str, list[str]] = field(default_factory=dict)
    disabled: set[str] = field(default_factory=set)

    # -- views -------------------------------------------------------------------------------
    @property
    def enabled(self) -> dict[str, list[str]]:
        return {t: c for t, c in self.entries.items() if t not in self.disabled}

    def __len__(self) -> int:
        return len(self.entries)

    def version(self) -> str:
        """A short content hash: caches key on it, so an edit invalidates them."""
        import hashlib

        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> list[Problem]:
        """Every problem that makes the dictionary unusable, one per (term, reason)."""
        problems: list[Problem] = []
        terms = {t.strip() for t in self.entries if isinstance(t, str)}
        for term, cands in self.entries.items():
            if not isinstance(term, str) or not term.strip():
                problems.append(Problem(str(term), "empty term"))
                continue
            if term != term.strip():
                problems.append(Problem(term, "term has leading or trailing spaces"))
            if len(term) > MAX_TERM_CHARS:
                problems.append(Problem(term[:40] + "…", f"term longer than {MAX_TERM_CHARS} characters"))
                continue
            if _control(term):
                problems.append(Problem(term, "term contains a control character (a NUL, a tab, a line break...)"))
            if not isinstance(cands, list) or not cands:
                problems.append(Problem(term, "no translation"))
                continue
            for c in cands:
                if not isinstance(c, str):
                    problems.append(Problem(term, f"translation {short(c)} is not text"))
                elif len(c) > MAX_TERM_CHARS:
                    problems.append(Problem(term, f"translation longer than {MAX_TERM_CHARS} characters"))
                elif _control(c):
                    problems.append(Problem(term, "translation contains a control character"))
                elif not c.strip():
                    problems.append(Problem(term, "empty translation"))
                elif c.strip() == term.strip():
                    problems.append(Problem(term, "translation equals the term"))
                elif c.strip() in terms and c.strip() != term.strip():
                    problems.append(Problem(term, f"translation {c.strip()!r} is itself an anchored term: the "
                                                  "generic text would put one forgotten term in place of another"))
        for lower, capital in self.case_collisions():
            if _folded(self.entries[lower]) != _folded(self.entries[capital]):
                problems.append(Problem(capital, f"appears with different case ({capital!r}, {lower!r}) and different "
                                                 f"translations: the lower-case term also matches {capital!r}, so the "
                                                 "text has two translations (Resolve case variants merges them)"))
        return problems

    def check(self) -> "AnchorDictionary":
        """Raise a one-line UserError if anything is invalid; returns self for chaining."""
        problems = self.validate()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"invalid anchor dictionary: {problems[0]}{more}")
        return self

    def consolidate(self) -> tuple["AnchorDictionary", list[str]]:
        """The original pipeline's two drops; returns the new dictionary and what was dropped, and why."""
        terms = set(self.entries)
        keep: dict[str, list[str]] = {}
        report: list[str] = []
        for term, cands in self.entries.items():
            for suffix in ("'s", "\u2019s"):
                if term.endswith(suffix) and term[: -len(suffix)] in terms:
                    report.append(f"dropped {term!r}: possessive of the term {term[:-len(suffix)]!r}")
                    break
            else:
                words = term.split()
                if len(words) > 1 and all(w in terms for w in words):
                    report.append(f"dropped {term!r}: every word is a term itself")
                else:
                    keep[term] = cands
        return AnchorDictionary(keep, {t for t in self.disabled if t in keep}), report

    # -- combining dictionaries --------------------------------------------------------------
    def merged_with(self, other: "AnchorDictionary") -> tuple["AnchorDictionary", Changes]:
        """Self plus other: new terms appended, a known term keeps its candidates and gains the
        other's new ones (never replaced); a term disabled in either stays as self has it."""
        entries = {t: list(c) for t, c in self.entries.items()}
        for term, cands in other.entries.items():
            if term in entries:  # a candidate that differs only in case is no new candidate ("mystic academy")
                have = {c.casefold() for c in entries[term]}
                entries[term] += [c for c in cands if c.casefold() not in have and not have.add(c.casefold())]
            else:
                entries[term] = list(cands)
        disabled = set(self.disabled) | {t for t in other.disabled if t not in self.entries}
        merged = AnchorDictionary(entries, disabled)
        return merged, changes(self, merged)

    def replaced_by(self, other: "AnchorDictionary") -> Changes:
        """What replacing self with other would do (how many terms it removes, above all)."""
        return changes(self, other)

    def status_of(self, term: str, candidates: list[str]) -> str:
        """Where a proposed row stands against this dictionary: 'new', 'in the dictionary',
        'in the dictionary, adds: x | y', or 'as <spelling> in the dictionary' (a case collision)."""
        term = term.strip()
        if term in self.entries:
            have = {c.casefold() for c in self.entries[term]}
            extra = [c for c in candidates if c.casefold() not in have]
            return "in the dictionary" + (f", adds: {' | '.join(extra)}" if extra else "")
        for other in (term[:1].lower() + term[1:], _capitalise(term)):
            if other != term and other in self.entries and (other[:1].islower() or term[:1].islower()):
                return f"as {other!r} in the dictionary"
        return "new"

    def case_collisions(self) -> list[tuple[str, str]]:
        """(lower-case term, its capitalised spelling) pairs that are both terms. The Translator
        matches a term as written and, when it starts lower-case, also capitalised ("muggle" matches
        "Muggle"): the capitalised text then has two entries. Other case variants ("Invisibility
        Cloak" / "invisibility cloak") never match the same text and are no collision."""
        return [(t, _capitalise(t)) for t in self.entries
                if isinstance(t, str) and t[:1].islower() and _capitalise(t) in self.entries]

    def resolve_case_variants(self) -> tuple["AnchorDictionary", list[str]]:
        """Fold each capitalised spelling into its lower-case term, which already matches both:
        one entry, the candidates of both (the capitalised spelling's decapitalised, since the
        Translator capitalises a translation where the text is capitalised), so "Muggle" and
        "muggle" get the same stand-in in a block. Variants that differ beyond the first letter
        match different text and stay separate terms. Returns the dictionary and what was done."""
        fold = dict((capital, lower) for lower, capital in self.case_collisions())
        entries: dict[str, list[str]] = {}
        disabled: set[str] = set()
        report: list[str] = []
        for term, cands in self.entries.items():
            target = fold.get(term, term)
            if target in entries:
                continue  # placed with its partner, below
            if term in fold or target in fold.values():
                lower, capital = target, _capitalise(target)
                merged = list(self.entries[lower])
                merged += [c for c in (_decapitalise(x) for x in self.entries[capital])
                           if c.lower() not in {m.lower() for m in merged}]
                entries[lower] = merged
                if lower in self.disabled and capital in self.disabled:
                    disabled.add(lower)
                report.append(f"{capital!r} folded into {lower!r} (which also matches {capital!r}): "
                              f"{' | '.join(merged)}")
            else:
                entries[term] = list(cands)
                if term in self.disabled:
                    disabled.add(term)
        groups: dict[str, list[str]] = {}
        for term in entries:
            groups.setdefault(term.lower(), []).append(term)
        kept = [g for g in groups.values() if len(g) > 1]
        if kept:
            shown = ", ".join(" / ".join(map(repr, g)) for g in kept[:3]) + (f" and {len(kept) - 3} more" if len(kept) > 3 else "")
            report.append(f"kept {len(kept)} case variant group(s) as separate terms, since they never match the "
                          f"same text: {shown}")
        return AnchorDictionary(entries, disabled), report

    # -- formats -----------------------------------------------------------------------------
    def to_json(self) -> str:
        obj: dict[str, object] = {}
        for term, cands in self.entries.items():
            obj[term] = {"translations": cands, "enabled": False} if term in self.disabled else cands
        return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["term", "translation"])
        for term, cands in self.entries.items():
            for c in cands:
                w.writerow([term, c])
        return buf.getvalue()

    @classmethod
    def from_json(cls, text: str, name: str = "anchor dictionary") -> "AnchorDictionary":
        obj = parse_json(text, name)  # duplicate keys, deep nesting and huge numbers: one line each
        if not isinstance(obj, dict):
            raise UserError(f'{name} must be a JSON object {{"term": ["translation", ...]}}')
        entries: dict[str, list] = {}
        disabled: set[str] = set()
        for term, value in obj.items():
            enabled = True
            if isinstance(value, dict):
                enabled = value.get("enabled", True)
                if not isinstance(enabled, bool):  # "false" as a string would leave the term on
                    raise UserError(f"{name}: {short(term)}: enabled must be true or false, not {short(enabled)}")
                value = value.get("translations", [])
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list):
                value = [value]  # validate() names it as "not text"
            entries[term] = list(value)
            if not enabled:
                disabled.add(term)
        return cls(entries, disabled)

    @classmethod
    def from_csv(cls, text: str, name: str = "anchor dictionary") -> "AnchorDictionary":
        entries: dict[str, list[str]] = {}
        # strict: an unterminated quote is an error, not a field that silently swallows the rows after it
        reader = csv.reader(io.StringIO(text), strict=True)
        try:
            for i, row in enumerate(reader):
                if not row or all(not c.strip() for c in row):
                    continue
                if i == 0 and [c.strip().lower() for c in row[:2]] == ["term", "translation"]:
                    continue
                if len(row) < 2:
                    raise UserError(f"{name}: CSV row {reader.line_num} has no translation column "
                                    "(expected term,translation)")
                term, translation = row[0].strip(), row[1].strip()
                if len(term) > MAX_TERM_CHARS or len(translation) > MAX_TERM_CHARS:
                    raise UserError(f"{name}: CSV row {reader.line_num} has a cell over {MAX_TERM_CHARS} characters")
                cands = entries.setdefault(term, [])
                if translation not in cands:
                    cands.append(translation)
        except csv.Error as e:  # a field over the csv module's limit, an unterminated quote, a NUL byte
            raise UserError(f"{name}: CSV line {reader.line_num}: {e}") from None
        return cls(entries)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "anchors.json") -> "AnchorDictionary":
        """Parse an upload or a file's bytes; the format follows the name's suffix."""
        if len(data) > MAX_DICTIONARY_BYTES:
            raise UserError(f"{name} is {len(data) / 2**20:.0f} MiB; a dictionary is at most "
                            f"{MAX_DICTIONARY_BYTES / 2**20:.0f} MiB")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise UserError(f"{name} is not UTF-8 text; save it as UTF-8 and try again") from None
        return cls.from_csv(text, name) if name.lower().endswith(".csv") else cls.from_json(text, name)


def load_anchors(path: str | Path) -> AnchorDictionary:
    path = Path(path)
    return AnchorDictionary.from_bytes(read_bytes_file(path, "anchor dictionary", MAX_DICTIONARY_BYTES), path.name)


def save_anchors(anchors: AnchorDictionary, path: str | Path, backup: bool = True) -> None:
    """Validate, keep the previous version as `<name>.bak`, then write atomically."""
    anchors.check()
    path = Path(path)
    text = anchors.to_csv() if path.suffix.lower() == ".csv" else anchors.to_json()
    if backup and path.exists():
        atomic_write_text(path.with_name(path.name + ".bak"), path.read_text(encoding="utf-8"))
    atomic_write_text(path, text)
