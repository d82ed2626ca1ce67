"""Pure helpers the pages share: token strip and alignment HTML, top-k rows, anchor-table rows.

No Streamlit calls and no torch here: plain data in, strings and rows out, so they are unit-testable.
"""
from __future__ import annotations

import html
import math

MODELS = ("baseline", "expert", "generic", "unlearned")
METRICS = {
    "logp": "log-prob of the actual next token (baseline)",
    "expert_gain": "expert − baseline log-prob of the actual next token",
    "kl": "KL(baseline ‖ generic)",
    "label_differs": "generic label differs from the actual next token",
}
METRIC_LEGEND = {
    "logp": "Redder = the baseline found the next token more surprising.",
    "expert_gain": "Orange = the expert expects the next token more than the baseline (idiosyncratic "
                   "text); blue = less.",
    "kl": "Darker = generic moves further from the baseline here (where unlearning will change the model).",
    "label_differs": "Red = training would teach a different next token here; hatched = no label "
                     "(dropped: inside an anchored term, or just before a repeated one).",
}

CSS = """
<style>
.obl-strip{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:1.05rem;line-height:2.2;}
.obl-strip .tok{white-space:pre;padding:2px 1px;margin:0 1px;border-radius:4px;border-bottom:3px solid transparent;}
.obl-strip .tok.term{border-bottom-color:#7c3aed;font-weight:600;}
.obl-strip .tok.sel{outline:2px solid #111;outline-offset:1px;}
.obl-strip .tok.nolabel{background-image:repeating-linear-gradient(135deg,rgba(0,0,0,.10) 0 3px,transparent 3px 6px);}
.obl-legend{font-size:0.8rem;color:#555;margin-top:2px;}
.obl-align{display:flex;flex-wrap:wrap;gap:2px 1px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.88rem;}
.obl-align .cell{display:flex;flex-direction:column;border-radius:4px;padding:1px 2px;}
.obl-align .cell.term{background:#f3e8ff;border:1px solid #c4b5fd;}
.obl-align .o,.obl-align .t{white-space:pre;}
.obl-align .t{color:#1d4ed8;}
.obl-align .drop{color:#b5b5b5;text-decoration:line-through;}
.obl-align .cell.term .t{font-weight:600;color:#6d28d9;}
</style>
"""


def show(token: str) -> str:
    """A token as it should read on screen: escaped, line breaks and tabs visible."""
    return html.escape(token.replace("\n", "↵").replace("\t", "⇥"))


# -- the token strip -------------------------------------------------------------------------------
def metric_values(view: dict, metric: str) -> list[float | None]:
    """Per position, the value the strip colours by (None: not defined there)."""
    out: list[float | None] = []
    for p in view["positions"]:
        b, e = p.get("baseline_next"), p.get("expert_next")
        if metric == "logp":
            out.append(math.log(max(b["prob"], 1e-12)) if b and b["prob"] is not None else None)
        elif metric == "expert_gain":
            ok = b and e and b["prob"] is not None and e["prob"] is not None
            out.append(math.log(max(e["prob"], 1e-12)) - math.log(max(b["prob"], 1e-12)) if ok else None)
        elif metric == "kl":
            out.append(p["kl_baseline_generic"])
        elif metric == "label_differs":
            if p["generic"] is None or p["next_token"] is None:
                out.append(None)
            else:
                out.append(float(p["generic"][0]["token"] != p["next_token"]))
        else:
            raise ValueError(f"unknown metric {metric!r}")
    return out


def _colour(metric: str, v: float | None) -> str:
    if v is None:
        return "transparent"
    if metric == "logp":  # 0 (certain) .. -10 or below (very surprising)
        return f"rgba(239,68,68,{min(1.0, -v / 10) * 0.75:.2f})"
    if metric == "expert_gain":  # log-ratio, clamped to +-4
        a = min(1.0, abs(v) / 4) * 0.8
        return f"rgba(249,115,22,{a:.2f})" if v > 0 else f"rgba(59,130,246,{a:.2f})"
    if metric == "kl":
        return f"rgba(124,58,237,{min(1.0, v / 3) * 0.75:.2f})"
    return "rgba(239,68,68,0.55)" if v else "transparent"


def token_strip_html(view: dict, metric: str, selected: int | None = None) -> str:
    """The prompt's tokens coloured by `metric`; anchored terms underlined; `selected` outlined.

    Each token is `<span class="tok" data-pos=i data-value=v>` so tests and users can find it.
    """
    values = metric_values(view, metric)
    spans = []
    for p, v in zip(view["positions"], values):
        i = p["index"]
        classes = ["tok"]
        if p["term"]:
            classes.append("term")
        if i == selected:
            classes.append("sel")
        if p["aligned_to"] < 0:
            classes.append("nolabel")
        tip = [f"#{i} {p['token']!r}"]
        if p["next_token"] is not None:
            tip.append(f"next {p['next_token']!r}")
        for m in MODELS:
            nx = p.get(f"{m}_next")
            if p.get(m) and nx and nx["prob"] is not None:
                tip.append(f"{m}: p={nx['prob']:.3f} rank {nx['rank']}")
        if p["kl_baseline_generic"] is not None:
            tip.append(f"KL(b‖g)={p['kl_baseline_generic']:.3f}")
        if p["term"]:
            tip.append(f"anchored term {p['term']!r}")
        if p["aligned_to"] < 0:
            tip.append("no generic label (dropped)")
        data_v = "" if v is None else f"{v:.4f}"
        spans.append(
            f'<span class="{" ".join(classes)}" data-pos="{i}" data-value="{data_v}" '
            f'title="{html.escape(" · ".join(tip))}" style="background-color:{_colour(metric, v)}">'
            f"{show(p['token'])}</span>"
        )
    legend = METRIC_LEGEND[metric] + " Purple underline = anchored term; outlined = selected position."
    return (f'{CSS}<div class="obl-strip" data-metric="{metric}">{"".join(spans)}</div>'
            f'<div class="obl-legend">{html.escape(legend)}</div>')


# -- the top-k table -------------------------------------------------------------------------------
def rank_change(token_id: int, rank: int, baseline: list[dict] | None) -> str:
    """How far a token moved relative to the baseline's top-k: ▲n up, ▼n down, = same, new."""
    if baseline is None:
        return ""
    ids = [t["id"] for t in baseline]
    if token_id not in ids:
        return "new"
    delta = ids.index(token_id) + 1 - rank
    return "=" if delta == 0 else (f"▲{delta}" if delta > 0 else f"▼{-delta}")


def topk_rows(position: dict, model: str) -> list[dict]:
    """Rows (rank, token, prob, vs baseline) of one model's top-k at one position."""
    top = position.get(model)
    if not top:
        return []
    base = position.get("baseline") if model != "baseline" else None
    return [
        {"rank": r, "token": repr(t["token"]), "p": t["prob"],
         **({"vs baseline": rank_change(t["id"], r, base)} if model != "baseline" else {})}
        for r, t in enumerate(top, start=1)
    ]


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


def rows_to_entries(rows: list[dict]) -> tuple[dict[str, list[str]], set[str], list[str]]:
    """Editor rows -> (entries, disabled, problems the dictionary itself cannot express).

    A candidates cell is split on "|"; blank rows are skipped; a term typed twice is reported.
    """
    entries: dict[str, list[str]] = {}
    disabled: set[str] = set()
    problems: list[str] = []
    for n, row in enumerate(rows, start=1):
        term = row.get("term")
        term = "" if term is None or (isinstance(term, float) and math.isnan(term)) else str(term)
        cands_cell = row.get("candidates")
        cands_cell = "" if cands_cell is None or (isinstance(cands_cell, float) and math.isnan(cands_cell)) \
            else str(cands_cell)
        if not term.strip() and not cands_cell.strip():
            continue
        if not term.strip():
            problems.append(f"row {n}: empty term (candidates {cands_cell!r})")
            continue
        if term in entries:
            problems.append(f"row {n}: {term!r} is already in row "
                            f"{1 + [r.get('term') for r in rows].index(term)}; merge the two rows")
            continue
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
