"""What the Anchors page shows: the alignment HTML, and the dictionary as editable rows (and back,
with the diff against the saved file). No Streamlit, no torch."""
from __future__ import annotations

import html
import math

from app.inspect_views import CSS, show


# -- translation and alignment ---------------------------------------------------------------------
def alignment_html(tokens: list[str], translated_tokens: list[str], mapping: list[int], terms: list[dict],
                   limit: int | None = None) -> str:
    """Original tokens over their translation, one cell per token or anchored term.

    A term's cell holds its original tokens over its translated ones; positions with no generic
    label (mapping -1) are struck through in grey.
    """
    starts = {t["start"]: t for t in terms}
    cells = []
    i = j = 0  # original and translated positions; the translation is a left-to-right rewrite
    n = len(tokens) if limit is None else min(limit, len(tokens))
    while i < n:
        occ = starts.get(i)
        if occ is not None:
            top = "".join(
                f'<span class="o{" drop" if mapping[k] < 0 else ""}">{show(tokens[k])}</span>'
                for k in range(occ["start"], occ["end"]))
            bottom = show("".join(translated_tokens[occ["translated_start"]: occ["translated_end"]]))
            title = html.escape(f"{occ['term']} → {occ['translation']}")
            cells.append(f'<span class="cell term" title="{title}"><span>{top}</span>'
                         f'<span class="t">{bottom}</span></span>')
            j, i = occ["translated_end"], occ["end"]
            continue
        drop = " drop" if mapping[i] < 0 else ""
        t = translated_tokens[j] if j < len(translated_tokens) else ""
        cells.append(f'<span class="cell" data-pos="{i}"><span class="o{drop}">{show(tokens[i])}</span>'
                     f'<span class="t">{show(t)}</span></span>')
        i, j = i + 1, j + 1
    more = f'<div class="obl-legend">… {len(tokens) - n} more tokens not shown</div>' if n < len(tokens) else ""
    legend = ('<div class="obl-legend">Top: original tokens (struck through: dropped from training, '
              'no generic label). Below, in blue: the translated text the baseline reads. '
              'Purple cells: anchored terms.</div>')
    return f'{CSS}<div class="obl-align">{"".join(cells)}</div>{more}{legend}'


# -- the anchor editor -----------------------------------------------------------------------------
SEP = " | "


def anchor_rows(entries: dict[str, list[str]], disabled: set[str]) -> list[dict]:
    return [{"term": t, "candidates": SEP.join(c if isinstance(c, str) else str(c) for c in cands),
             "enabled": t not in disabled} for t, cands in entries.items()]


def cell_text(value) -> str:
    """An editor cell as text: None and NaN (an empty cell) are blank, never "None"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def rows_to_entries(rows: list[dict]) -> tuple[dict[str, list[str]], set[str], list[tuple[int, str, str]]]:
    """Editor rows -> (entries, disabled, problems the dictionary itself cannot express).

    A candidates cell is split on "|"; blank rows are skipped; a term typed twice is reported.
    Problems are (row number from 1, term, message).
    """
    entries: dict[str, list[str]] = {}
    disabled: set[str] = set()
    problems: list[tuple[int, str, str]] = []
    first_row: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        term, cands_cell = cell_text(row.get("term")), cell_text(row.get("candidates"))
        if not term.strip() and not cands_cell.strip():
            continue
        if not term.strip():
            problems.append((n, "", f"empty term (candidates {cands_cell!r})"))
            continue
        if term in entries:
            problems.append((n, term, f"already in row {first_row[term]}; merge the two rows"))
            continue
        first_row[term] = n
        entries[term] = [c.strip() for c in cands_cell.split("|")] if cands_cell.strip() else []
        if row.get("enabled") is False:
            disabled.add(term)
    return entries, disabled, problems


def diff(saved: tuple[dict, set], edited: tuple[dict, set]) -> list[dict]:
    """Rows (change, term, saved, edited) between two (entries, disabled) pairs."""
    (s_e, s_d), (e_e, e_d) = saved, edited

    def cell(entries, disabled, t):
        return SEP.join(entries[t]) + ("  (disabled)" if t in disabled else "")

    out = []
    for t in e_e:
        if t not in s_e:
            out.append({"change": "added", "term": t, "saved": "", "edited": cell(e_e, e_d, t)})
        elif s_e[t] != e_e[t] or (t in s_d) != (t in e_d):
            out.append({"change": "changed", "term": t, "saved": cell(s_e, s_d, t), "edited": cell(e_e, e_d, t)})
    out += [{"change": "removed", "term": t, "saved": cell(s_e, s_d, t), "edited": ""} for t in s_e if t not in e_e]
    return out
