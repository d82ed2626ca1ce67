"""What the Inspect page shows, as plain data and HTML: the token strip and its cards, the top-k
table, pinned-token bars and their summary, completions. No Streamlit, no torch: unit-testable."""
from __future__ import annotations

import hashlib
import html
import json
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
.obl-legend{font-size:0.8rem;color:var(--obl-muted,#555);margin-top:2px;}
.obl-align{display:flex;flex-wrap:wrap;gap:2px 1px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.88rem;}
.obl-align .cell{display:flex;flex-direction:column;border-radius:4px;padding:1px 2px;}
.obl-align .cell.term{background:var(--obl-term-bg,#f3e8ff);border:1px solid #c4b5fd;}
.obl-align .o,.obl-align .t{white-space:pre;}
.obl-align .t{color:var(--obl-blue,#1d4ed8);}
.obl-align .drop{color:#b5b5b5;text-decoration:line-through;}
.obl-align .cell.term .t{font-weight:600;color:var(--obl-purple,#6d28d9);}
</style>
"""


# The colours every HTML piece reads (with its light value as the fallback), per Streamlit theme: the
# app sets them once per run (app/main.py), so the strip, tables, cards and lens follow a dark theme.
THEME = {
    "light": {"ink": "#111", "ink2": "#333", "muted": "#555", "faint": "#888", "paper": "#fff",
              "term-bg": "#f3e8ff", "blue": "#1d4ed8", "purple": "#6d28d9", "fam-bg": "#fff7ed"},
    "dark": {"ink": "#f4f4f5", "ink2": "#e4e4e7", "muted": "#b4b4bd", "faint": "#9a9aa5", "paper": "#1f2029",
             "term-bg": "#3b2a5c", "blue": "#93c5fd", "purple": "#d8b4fe", "fam-bg": "#3a2a14"},
}


def theme_css(kind: str | None) -> str:
    """The <style> that sets the colours above for Streamlit's theme ("light", "dark"; None: light)."""
    values = THEME.get(kind or "light", THEME["light"])
    return "<style>:root{" + ";".join(f"--obl-{k}:{v}" for k, v in values.items()) + "}</style>"


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
    if metric == "kl":  # teal: the anchored-term underline is purple, and dark text stays above 4.5:1 on it
        return f"rgba(13,148,136,{min(1.0, v / 3) * 0.6:.2f})"
    return "rgba(239,68,68,0.55)" if v else "transparent"


def strip_data(view: dict, metric: str, selected: int | None = None, alpha: float | None = None) -> dict:
    """The token strip as compact arrays, for app/strip.py's script to draw: the tokens (raw text,
    set as text there, never as HTML), each one's colour under `metric`, the anchored terms, the
    positions without a generic label, and for the hover card every model's p and rank of the token
    that follows and KL(baseline || generic). About 60 bytes a token, where the strip's HTML with a
    card per token was ~0.94 KB: a rerun re-sends it, and a click that only moves `selected` redraws
    nothing but the outline (the script compares `key`)."""
    positions = view["positions"]
    values = metric_values(view, metric)
    models = [m for m in MODELS if any(p.get(m) and p.get(f"{m}_next") for p in positions)]
    nxt = {m: [p.get(f"{m}_next") or {} for p in positions] for m in models}
    data = {
        "metric": metric, "alpha": alpha,
        "legend": METRIC_LEGEND[metric] + " Purple underline = anchored term; outlined = selected position. "
                                          "Click a token to select it; hover it for every model's numbers.",
        "tokens": [p["token"] for p in positions],
        "colours": [_colour(metric, v) for v in values],
        "values": [None if v is None else round(v, 4) for v in values],
        "terms": {str(p["index"]): p["term"] for p in positions if p["term"]},
        "nolabel": [p["index"] for p in positions if p["aligned_to"] < 0],
        "models": models,
        "p": {m: [None if n.get("prob") is None else round(n["prob"], 4) for n in nxt[m]] for m in models},
        "rank": {m: [n.get("rank") for n in nxt[m]] for m in models},
        "kl": [None if p["kl_baseline_generic"] is None else round(p["kl_baseline_generic"], 4) for p in positions],
    }
    data["key"] = hashlib.blake2b(json.dumps(data, sort_keys=True).encode(), digest_size=8).hexdigest()
    data["selected"] = selected  # after the key: a new selection alone redraws only the outline
    return data


def word_at(tokens: list[str], i: int) -> str:
    """The whole word token i belongs to (" Herm" + "ione" -> "Hermione"), for "add as term"."""
    def glued(t: str) -> bool:  # continues the word before it
        return bool(t) and (t[0].isalnum() or t[0] == "-")  # "'s" stays off: "Hogwarts", not "Hogwarts's"

    lo, hi = i, i
    while lo > 0 and glued(tokens[lo]) and tokens[lo - 1].strip() and tokens[lo - 1].strip()[-1:].isalnum():
        lo -= 1
    while hi + 1 < len(tokens) and glued(tokens[hi + 1]) and tokens[hi + 1][:1].isalnum():
        hi += 1
    return "".join(tokens[lo: hi + 1]).strip().strip(".,;:!?\"()[]")


# Function words: never an idiosyncratic term, so never offered as one.
STOP_WORDS = frozenset("""a an the and or but nor so yet for of in on at to from by with without into onto over under
about above below after before between through during until while as if than then that this these those there here
is are was were be been being am do does did have has had having will would shall should can could may might must
i me my mine we us our you your he him his she her it its they them their who whom whose which what when where why
how all any both each few more most other some such no not only own same too very just also s t don now""".split())


def term_candidate(word: str, terms) -> str | None:
    """The word a click on a token offers as a new anchored term, or None: a function word, a word with
    no letter, or one the dictionary has already (in any case) is not offered."""
    if len(word) < 2 or not any(c.isalpha() for c in word) or word.casefold() in STOP_WORDS:
        return None
    if word.casefold() in {t.casefold() for t in terms}:
        return None
    return word


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


TOPK_CSS = """
<style>
.obl-topk{border-collapse:collapse;width:100%;font-size:0.86rem;table-layout:fixed}
.obl-topk th{text-align:left;font-weight:600;padding:2px 6px;border-bottom:1px solid #ddd;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.obl-topk th .sub{font-weight:400;color:var(--obl-muted,#666);font-size:0.75rem}
.obl-topk td{padding:2px 6px;border-bottom:1px solid #f1f1f1;overflow:hidden}
.obl-topk .cell{display:flex;flex-wrap:wrap;align-items:baseline;gap:0 3px;min-width:0}
.obl-topk .cell .t{white-space:pre;min-width:0}
.obl-topk td.r,.obl-topk th.r{color:var(--obl-faint,#888);width:2.2em;text-align:right}
.obl-topk .t{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.obl-topk .p{margin-left:auto;font-variant-numeric:tabular-nums;color:var(--obl-ink2,#333);flex:none}
.obl-topk .d{font-size:0.72rem;flex:none}
.obl-topk .d.up{color:#15803d}.obl-topk .d.down{color:#b91c1c}.obl-topk .d.new{color:#7c3aed}
.obl-topk td.hit{font-weight:700}
</style>
"""


def topk_table_html(position: dict, models: list[str], alpha: float | None = None, knob: str = "α") -> str:
    """One compact table: a column per model, a row per rank; each cell the token, its probability
    as a bar behind it, and its rank change against the baseline. The token that actually follows is
    bold. Above each column: that model's p and rank of the actual next token.

    Cells carry data-model, data-rank, data-token (repr) and data-p, for tests and users alike.
    """
    cols = [m for m in models if position.get(m)]
    k = max((len(position[m]) for m in cols), default=0)
    head = []
    for m in cols:
        nx = position.get(f"{m}_next")
        sub = f"next: p {nx['prob']:.3f}, #{nx['rank']}" if nx and nx["prob"] is not None else ""
        name = f"{m} ({knob} {alpha:g})" if m == "generic" and alpha is not None else m
        head.append(f'<th data-model="{m}">{html.escape(name)}<br><span class="sub">{sub}</span></th>')
    missing = [m for m in models if m not in cols]
    body = []
    nxt = position.get("next_token")
    for r in range(k):
        cells = ['<td class="r">' + str(r + 1) + "</td>"]
        for m in cols:
            top = position[m]
            if r >= len(top):
                cells.append("<td></td>")
                continue
            t = top[r]
            ch = rank_change(t["id"], r + 1, position.get("baseline")) if m != "baseline" else ""
            cls = "up" if ch.startswith("▲") else "down" if ch.startswith("▼") else "new" if ch == "new" else ""
            delta = f'<span class="d {cls}">{ch}</span>' if ch and ch != "=" else ""
            bar = f"background:linear-gradient(90deg,rgba(37,99,235,.16) {t['prob'] * 100:.1f}%,transparent 0)"
            hit = " hit" if nxt is not None and t["token"] == nxt else ""
            cells.append(f'<td class="c{hit}" style="{bar}" data-model="{m}" data-rank="{r + 1}" '
                         f'data-token="{html.escape(repr(t["token"]), quote=True)}" data-p="{t["prob"]:.6g}">'
                         f'<div class="cell"><span class="t">{show(repr(t["token"]))}</span>{delta}'
                         f'<span class="p">{t["prob"]:.3f}</span></div></td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = ""
    if "generic" in missing:
        note = ('<div class="obl-legend">No generic column here: this position is inside an anchored term '
                "or just before a repeated one, so training leaves it out.</div>")
    return (f'{TOPK_CSS}<table class="obl-topk"><thead><tr><th class="r">#</th>{"".join(head)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>{note}')


NEAR_ZERO = 5e-4  # a probability shown as "~0"


def pinned_bars(view: dict, pos: int, models: list[str]) -> list[dict]:
    """Per pinned token at one position: each model's probability and its change from the baseline.

    [{"token": " Herm", "model": "generic", "p": 0.017, "change": -0.98}, ...]; change is relative
    (p / baseline - 1), None for the baseline itself or where there is no value.
    """
    out = []
    for text, per_model in view["tracked"].items():
        base = per_model.get("baseline", [None] * (pos + 1))[pos]
        for m in models:
            series = per_model.get(m)
            if series is None:
                continue
            p = series[pos]
            # A ratio to a near-zero baseline (+71436%) says nothing: the summary shows "~0 -> 0.129".
            change = None if m == "baseline" or p is None or not base or base < NEAR_ZERO else p / base - 1
            out.append({"token": text, "model": m, "p": p, "change": change, "base": base})
    return out


def pinned_summary(bars: list[dict]) -> str:
    """"P(' Herm'): 0.745 / 0.817 / ~0 / 0.017 (baseline / expert / generic / unlearned), −98%"
    (bars' tokens as they should read, e.g. their repr)."""
    lines = []
    for text in dict.fromkeys(b["token"] for b in bars):
        row = [b for b in bars if b["token"] == text and b["p"] is not None]
        if not row:
            continue
        probs = " / ".join("~0" if b["p"] < NEAR_ZERO else f"{b['p']:.3f}" for b in row)
        names = " / ".join(b["model"] for b in row)
        last = row[-1]
        change = f", {last['change']:+.0%} for {last['model']}" if last["change"] is not None else ""
        if last["change"] is None and last["model"] != "baseline" and last.get("base") is not None \
                and last["base"] < NEAR_ZERO <= last["p"]:
            change = f", ~0 → {last['p']:.3f} for {last['model']}"
        lines.append(f"**P({text})**: {probs} ({names}){change}")
    return "  \n".join(lines)


def highlight(text: str, words: list[str]) -> str:
    """Escaped text with each whole-word occurrence of `words` marked (<mark>)."""
    import re

    escaped = show(text)
    for w in sorted({w for w in words if w.strip()}, key=len, reverse=True):
        pattern = r"(?<![\w])" + re.escape(html.escape(w)) + r"(?![\w])"
        escaped = re.sub(pattern, lambda m: f"<mark>{m.group(0)}</mark>", escaped)
    return escaped


def completions_html(examples: dict[str, dict]) -> str:
    """Completion probes as a table: one row per prompt, one column per model, the familiar words
    each completion named highlighted (the words familiarity_completion counted)."""
    models = [m for m in examples if examples[m].get("completion")]
    if not models:
        return ""
    prompts = list(dict.fromkeys(e["prompt"] for m in models for e in examples[m]["completion"]))
    by = {m: {e["prompt"]: e for e in examples[m]["completion"]} for m in models}
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for pr in prompts:
        cells = []
        for m in models:
            e = by[m].get(pr)
            if e is None:
                cells.append("<td></td>")
                continue
            cls = ' class="fam"' if e.get("familiar") else ""
            cells.append(f"<td{cls}>{highlight(e['completion'], e.get('familiar') or [])}</td>")
        rows.append(f'<tr><td class="pr">{show(pr)}</td>{"".join(cells)}</tr>')
    css = ("<style>.obl-comp{border-collapse:collapse;width:100%;font-size:0.85rem}"
           ".obl-comp th,.obl-comp td{border-bottom:1px solid #eee;padding:4px 6px;vertical-align:top;text-align:left}"
           ".obl-comp td.pr{color:var(--obl-muted,#555);width:24%}.obl-comp td.fam{background:var(--obl-fam-bg,#fff7ed)}"
           ".obl-comp mark{background:#fde68a;padding:0 1px;border-radius:2px}</style>")
    return f'{css}<table class="obl-comp"><thead><tr><th>prompt</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def lens_headline(split: dict | None, label: str) -> str:
    """The lens's one line for a pinned token: where the unlearned curve leaves the baseline's
    (engine.inspection.lens_split)."""
    if split is None:
        return ""
    pm, pr, b, first = split["model"], split["reference"], split["split"], split["first"]
    if first is None:
        return f"The baseline never computes **{label}** here (its lens probability stays under 0.001)."
    if b is None:
        return (f"**{label}** is not suppressed at the output: the unlearned model gives it {pm[-1]:.3f} "
                f"(baseline {pr[-1]:.3f}).")
    if b == first:
        return (f"**{label}** is suppressed wherever the baseline computes it (from block {first} on, the "
                f"baseline's {pr[first - 1]:.3f} against {pm[first - 1]:.3f}): {pm[-1]:.3f} at the output, "
                f"baseline {pr[-1]:.3f}.")
    return (f"**{label}** is computed up to block {b - 1} (unlearned {pm[b - 2]:.3f}, baseline {pr[b - 2]:.3f}) "
            f"and suppressed from block {b} on: {pm[-1]:.3f} at the output, baseline {pr[-1]:.3f}.")


# -- the logit lens at one position: blocks x models, as HTML ---------------------------------------
VIRIDIS = ((68, 1, 84), (72, 40, 120), (62, 74, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
           (53, 183, 121), (109, 205, 89), (180, 222, 44), (253, 231, 37))  # Plotly's Viridis, 10 stops


def viridis(v: float) -> str:
    """P in [0, 1] as Viridis's colour (0 dark purple, 1 yellow)."""
    x = min(max(v, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(x), len(VIRIDIS) - 2)
    f = x - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(VIRIDIS[i], VIRIDIS[i + 1]))
    return f"rgb({r},{g},{b})"


LENS_CSS = """
<style>
.obl-lens{border-collapse:collapse;font-size:0.74rem;width:100%;table-layout:fixed}
.obl-lens th{font-weight:600;padding:1px 4px;text-align:center;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.obl-lens th.b,.obl-lens td.b{width:3.2em;text-align:right;color:var(--obl-muted,#666);font-weight:400;padding-right:6px}
.obl-lens td.c{padding:0 3px;height:15px;line-height:15px;text-align:center;white-space:pre;overflow:hidden;
  text-overflow:ellipsis;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;border:1px solid #fff}
.obl-lens-scale{font-size:0.74rem;color:var(--obl-muted,#555);margin-top:3px}
.obl-lens-scale span{display:inline-block;width:90px;height:8px;vertical-align:middle;margin:0 4px;
  background:linear-gradient(90deg,rgb(68,1,84),rgb(38,130,142),rgb(109,205,89),rgb(253,231,37))}
</style>
"""


def lens_grid_html(lens: dict[str, list[dict]], token: str | None, label: str) -> str:
    """Blocks x models at one position: each cell coloured by P(token) after that block (the logit lens;
    without a token, the top-1 token's own P) and the top-1 token written in it; a hover names both.
    HTML, not a chart: a click on a token redraws it, and ~(L x models) cells draw in a few ms where a
    Plotly heatmap with text took a few hundred (the lens click's budget is 1.2x a plain click)."""
    models = list(lens)
    L = len(next(iter(lens.values())))
    what = f"P({label})" if token else "P(top-1)"
    head = "".join(f'<th data-model="{m}">{html.escape(m)}</th>' for m in models)
    body = []
    for b in range(L):
        cells = []
        for m in models:
            e = lens[m][b]
            top = e["top"][0]
            p = e["tracked"].get(token) if token else top["prob"]
            p = 0.0 if p is None else p
            ink = "#111" if p > 0.55 else "#fff"
            tip = f"block {b + 1} · {m}: {what} {p:.3f}; top-1 {top['token']!r} {top['prob']:.3f}"
            cells.append(f'<td class="c" data-model="{m}" data-block="{b + 1}" data-p="{p:.4g}" '
                         f'style="background:{viridis(p)};color:{ink}" title="{html.escape(tip, quote=True)}">'
                         f'{show(top["token"])[:10]}</td>')
        body.append(f'<tr><td class="b">{b + 1}</td>{"".join(cells)}</tr>')
    return (f'{LENS_CSS}<table class="obl-lens"><thead><tr><th class="b">block</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            f'<div class="obl-lens-scale">{html.escape(what)}: 0<span></span>1 · each cell: the top-1 token '
            f'after that block</div>')
