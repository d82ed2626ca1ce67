"""The token strip as a clickable component: a click on a token (or Enter on it: the tokens are one tab
stop, the arrow keys move between them) selects its position.

An `st.components.v2` inline component (no npm build). Python sends compact arrays
(app/inspect_views.strip_data: tokens, colours, terms, each model's p and rank of the next token);
the script builds a span per token (its text set as text, never parsed as HTML), a click handler,
and the hover card from those arrays when the pointer reaches a token. A rerun whose data has the
same `key` (a click, which only moves the selection) moves the outline and redraws nothing else.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

CSS = """
.obl-host{position:relative}
.obl-strip{color:var(--obl-ink,#111);font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:1.05rem;line-height:2.2;
  white-space:normal;overflow-wrap:anywhere;word-break:break-word;max-width:100%}
.obl-strip .tok{white-space:pre-wrap;display:inline-block;padding:0 1px;margin:1px 1px;border-radius:4px;
  border-bottom:3px solid transparent;line-height:1.7;cursor:pointer}
.obl-strip .tok:empty{min-width:5px;min-height:1.2em;vertical-align:bottom}
.obl-strip .tok:focus-visible{outline:2px solid #1d4ed8;outline-offset:1px}
.obl-strip .tok.term{border-bottom-color:#7c3aed;font-weight:600}
.obl-strip .tok.sel{outline:2px solid #111;outline-offset:1px}
.obl-strip .tok.nolabel{background-image:repeating-linear-gradient(135deg,rgba(0,0,0,.10) 0 3px,transparent 3px 6px)}
.obl-strip-legend{font-size:0.8rem;color:var(--obl-muted,#555);margin-top:2px}
.obl-card{position:fixed;z-index:1000;display:none;min-width:220px;max-width:340px;padding:8px 10px;
  background:var(--obl-paper,#fff);color:var(--obl-ink,#111);border:1px solid #d4d4d8;border-radius:8px;box-shadow:0 6px 20px rgba(0,0,0,.15);
  font:13px/1.45 ui-sans-serif,system-ui,sans-serif;pointer-events:none}
.obl-card .h{font-weight:600;margin-bottom:4px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.obl-card table{border-collapse:collapse;width:100%}
.obl-card td{padding:1px 6px 1px 0;white-space:nowrap}
.obl-card td.n{text-align:right;font-variant-numeric:tabular-nums}
.obl-card .m{color:var(--obl-muted,#555);font-size:12px;margin-top:4px}
"""

JS = """
const show = (t) => "'" + t.replace(/\\n/g, '↵').replace(/\\t/g, '⇥') + "'";
const esc = (t) => t.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function card(d, i) {  // every model's p and rank of the next token, KL, the anchored term
  const n = d.tokens.length, nxt = i + 1 < n ? d.tokens[i + 1] : null;
  let out = '<div class="h">#' + i + ' ' + esc(show(d.tokens[i])) + '</div>';
  out += nxt === null ? '<div class="m">end of the prompt: what the models say next</div>'
                      : '<div class="m">next token ' + esc(show(nxt)) + '</div>';
  let rows = '';
  for (const m of d.models) {
    const p = d.p[m][i];
    if (p !== null && p !== undefined) rows += '<tr><td>' + m + '</td><td class="n">p ' + p.toFixed(3) +
      '</td><td class="n">rank ' + d.rank[m][i] + '</td></tr>';
  }
  out += '<table>' + rows + '</table>';
  if (d.kl[i] !== null) out += '<div class="m">KL(baseline ‖ generic) ' + d.kl[i].toFixed(3) + '</div>';
  if (d.terms[i] !== undefined) out += '<div class="m">inside the anchored term ' + esc(show(d.terms[i])) + '</div>';
  if (d.nolabel.includes(i)) out += '<div class="m">no generic label here (dropped from training)</div>';
  return out;
}

function label(d, i) {  // what a screen reader says: the card's headline numbers
  let s = 'position ' + i + ', ' + show(d.tokens[i]);
  if (i + 1 < d.tokens.length) s += ', next ' + show(d.tokens[i + 1]);
  const b = d.p.baseline ? d.p.baseline[i] : null;
  if (b !== null && b !== undefined) s += ', baseline p ' + b.toFixed(3) + ' rank ' + d.rank.baseline[i];
  return s;
}

function select(host, sel) {  // the outline and the one tab stop follow the selected position
  host.querySelectorAll('.tok.sel').forEach((t) => t.classList.remove('sel'));
  const toks = host.querySelectorAll('.tok');
  toks.forEach((t) => { t.tabIndex = -1; });
  const at = toks[sel === null || sel === undefined ? 0 : sel];
  if (at) {
    at.tabIndex = 0;
    if (sel !== null && sel !== undefined) at.classList.add('sel');
  }
}

export default function(component) {
  const { data, parentElement, setTriggerValue } = component;
  let host = parentElement.querySelector('.obl-host');
  if (!host) {
    host = document.createElement('div');
    host.className = 'obl-host';
    parentElement.appendChild(host);
  }
  let cardEl = parentElement.querySelector('.obl-card');
  if (!cardEl) {
    cardEl = document.createElement('div');
    cardEl.className = 'obl-card';
    parentElement.appendChild(cardEl);
  }
  host.obl = data;  // the handlers below read the latest arrays
  if (host.dataset.key === data.key) {  // same tokens and colours: only the selection moved
    select(host, data.selected);
    return;
  }
  cardEl.style.display = 'none';
  const strip = document.createElement('div');
  strip.className = 'obl-strip';
  strip.dataset.metric = data.metric;
  if (data.alpha !== null) strip.dataset.alpha = String(data.alpha);
  const terms = new Set(Object.keys(data.terms).map(Number)), nolabel = new Set(data.nolabel);
  const frag = document.createDocumentFragment();
  data.tokens.forEach((text, i) => {
    const tok = document.createElement('span');
    tok.className = 'tok' + (terms.has(i) ? ' term' : '') + (nolabel.has(i) ? ' nolabel' : '');
    tok.dataset.pos = i;
    tok.dataset.value = data.values[i] === null ? '' : String(data.values[i]);
    tok.setAttribute('role', 'button');
    tok.setAttribute('aria-label', label(data, i));
    tok.style.backgroundColor = data.colours[i];
    tok.textContent = text.replace(/\\n/g, '↵').replace(/\\t/g, '⇥');
    frag.appendChild(tok);
  });
  strip.appendChild(frag);
  const legend = document.createElement('div');
  legend.className = 'obl-strip-legend';
  legend.textContent = data.legend;
  host.replaceChildren(strip, legend);
  host.dataset.key = data.key;
  select(host, data.selected);
  const toks = Array.from(strip.children);
  // One listener each on the strip (event delegation), not three per token.
  strip.addEventListener('click', (e) => {
    const tok = e.target.closest('.tok');
    if (tok) setTriggerValue('clicked', Number(tok.dataset.pos));
  });
  strip.addEventListener('keydown', (e) => {  // roving tabindex: arrows move the focus, Enter or Space select
    const tok = e.target.closest('.tok');
    if (!tok) return;
    const k = Number(tok.dataset.pos);
    const to = {ArrowRight: k + 1, ArrowDown: k + 1, ArrowLeft: k - 1, ArrowUp: k - 1, Home: 0,
                End: toks.length - 1}[e.key];
    if (to !== undefined && toks[to]) {
      e.preventDefault();
      tok.tabIndex = -1;
      toks[to].tabIndex = 0;
      toks[to].focus();
    } else if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      setTriggerValue('clicked', k);
    }
  });
  strip.addEventListener('mouseover', (e) => {
    const tok = e.target.closest('.tok');
    if (!tok) return;
    cardEl.innerHTML = card(host.obl, Number(tok.dataset.pos));
    cardEl.style.display = 'block';
    const r = tok.getBoundingClientRect(), c = cardEl.getBoundingClientRect();
    const left = Math.min(Math.max(4, r.left), window.innerWidth - c.width - 8);
    const below = r.bottom + 6 + c.height < window.innerHeight;
    cardEl.style.left = left + 'px';
    cardEl.style.top = (below ? r.bottom + 6 : Math.max(4, r.top - c.height - 6)) + 'px';
  });
  strip.addEventListener('mouseleave', () => { cardEl.style.display = 'none'; });
}
"""

_strip = st.components.v2.component("obliviate_token_strip", css=CSS, js=JS, isolate_styles=False)


def token_strip(data: dict, key: str, on_click: Callable[[], None]):
    """Mount the strip on app/inspect_views.strip_data's arrays; `on_click` runs (before the next
    script run) when a token is clicked, and st.session_state[key].clicked holds its position then."""
    return _strip(data=data, key=key, on_clicked_change=on_click)
