"""The token strip as a clickable component: a click on a token (or Enter on it: the tokens are one tab
stop, the arrow keys move between them) selects its position.

An `st.components.v2` inline component (no npm build): the strip's HTML comes from
app/inspect_views.token_strip_html (escaped there), the script adds a click handler per token, which
sends the token's position back to Python, and a hover card with every model's p and rank (each
token's `data-card`), placed next to the token and kept inside the window.
"""
from __future__ import annotations

from typing import Callable

import streamlit as st

CSS = """
.obl-host{position:relative}
.obl-card{position:fixed;z-index:1000;display:none;min-width:220px;max-width:340px;padding:8px 10px;
  background:#fff;color:#111;border:1px solid #d4d4d8;border-radius:8px;box-shadow:0 6px 20px rgba(0,0,0,.15);
  font:13px/1.45 ui-sans-serif,system-ui,sans-serif;pointer-events:none}
.obl-card .h{font-weight:600;margin-bottom:4px;font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
.obl-card table{border-collapse:collapse;width:100%}
.obl-card td{padding:1px 6px 1px 0;white-space:nowrap}
.obl-card td.n{text-align:right;font-variant-numeric:tabular-nums}
.obl-card .m{color:#555;font-size:12px;margin-top:4px}
"""

JS = """
export default function(component) {
  const { data, parentElement, setTriggerValue } = component;
  let host = parentElement.querySelector('.obl-host');
  if (!host) {
    host = document.createElement('div');
    host.className = 'obl-host';
    parentElement.appendChild(host);
  }
  host.innerHTML = data.html;
  let card = parentElement.querySelector('.obl-card');
  if (!card) {
    card = document.createElement('div');
    card.className = 'obl-card';
    parentElement.appendChild(card);
  }
  card.style.display = 'none';
  const toks = Array.from(host.querySelectorAll('.tok'));
  toks.forEach((tok, k) => {
    tok.style.cursor = 'pointer';
    tok.addEventListener('click', () => setTriggerValue('clicked', Number(tok.dataset.pos)));
    tok.addEventListener('keydown', (e) => {  // roving tabindex: arrows move the focus, Enter or Space select
      const to = {ArrowRight: k + 1, ArrowDown: k + 1, ArrowLeft: k - 1, ArrowUp: k - 1, Home: 0,
                  End: toks.length - 1}[e.key];
      if (to !== undefined && toks[to]) {
        e.preventDefault();
        tok.tabIndex = -1;
        toks[to].tabIndex = 0;
        toks[to].focus();
      } else if (e.key === 'Enter' || e.key === ' ') {
        e.preventDefault();
        setTriggerValue('clicked', Number(tok.dataset.pos));
      }
    });
    tok.addEventListener('mouseenter', () => {
      card.innerHTML = tok.dataset.card || '';
      card.style.display = 'block';
      const r = tok.getBoundingClientRect(), c = card.getBoundingClientRect();
      const left = Math.min(Math.max(4, r.left), window.innerWidth - c.width - 8);
      const below = r.bottom + 6 + c.height < window.innerHeight;
      card.style.left = left + 'px';
      card.style.top = (below ? r.bottom + 6 : Math.max(4, r.top - c.height - 6)) + 'px';
    });
    tok.addEventListener('mouseleave', () => { card.style.display = 'none'; });
  });
}
"""

_strip = st.components.v2.component("obliviate_token_strip", css=CSS, js=JS, isolate_styles=False)


def token_strip(html: str, key: str, on_click: Callable[[], None]):
    """Mount the strip; `on_click` runs (before the next script run) when a token is clicked, and
    st.session_state[key].clicked holds its position then."""
    return _strip(data={"html": html}, key=key, on_clicked_change=on_click)
