"""A blocks x positions heatmap drawn on a canvas: the logit lens along the prompt.

An `st.components.v2` inline component like the token strip (app/strip.py). Python sends the values
once as one flat rounded array; the script paints one rectangle per cell (30 blocks x 1,024 positions
paint in milliseconds, where a Plotly heatmap redrawn on every click cost about a third of a second in
Chromium), outlines the selected column, and names the cell under the pointer.
"""
from __future__ import annotations

import streamlit as st

CSS = """
.obl-heat{position:relative;font:11px/1.3 ui-sans-serif,system-ui,sans-serif;color:var(--obl-ink2,#333)}
.obl-heat canvas{display:block;width:100%;cursor:crosshair}
.obl-heat .tip{position:absolute;display:none;pointer-events:none;background:var(--obl-paper,#fff);border:1px solid #d4d4d8;
  border-radius:6px;padding:3px 6px;box-shadow:0 4px 12px rgba(0,0,0,.12);white-space:nowrap;z-index:5}
.obl-heat .scale{margin-top:3px;color:var(--obl-muted,#555)}
.obl-heat .scale span{display:inline-block;width:90px;height:8px;vertical-align:middle;margin:0 4px;
  background:linear-gradient(90deg,rgb(5,48,97),rgb(247,247,247),rgb(103,0,31))}
"""

JS = """
function colour(v, top) {  // RdBu: blue below zero, red above, white at zero
  const x = Math.max(-1, Math.min(1, v / top));
  const lo = [5, 48, 97], mid = [247, 247, 247], hi = [103, 0, 31];
  const to = x < 0 ? lo : hi, f = Math.abs(x);
  return 'rgb(' + mid.map((m, i) => Math.round(m + (to[i] - m) * f)).join(',') + ')';
}

function paint(host) {
  const d = host.obl, cv = host.querySelector('canvas');
  const left = 34, top = 4, bottom = 64, width = Math.max(200, host.clientWidth);
  const cellH = 10, h = top + d.rows * cellH + bottom;
  const dpr = window.devicePixelRatio || 1;
  cv.width = width * dpr; cv.height = h * dpr; cv.style.height = h + 'px';
  const g = cv.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, width, h);
  const cellW = (width - left - 4) / d.cols;
  host.geom = {left, top, cellW, cellH};
  for (let r = 0; r < d.rows; r++) {
    for (let c = 0; c < d.cols; c++) {
      g.fillStyle = colour(d.z[r * d.cols + c], d.top);
      g.fillRect(left + c * cellW, top + r * cellH, Math.ceil(cellW), cellH);
    }
  }
  g.fillStyle = '#555'; g.textAlign = 'right'; g.textBaseline = 'middle'; g.font = '10px sans-serif';
  const ystep = Math.max(1, Math.ceil(d.rows / 10));
  for (let r = 0; r < d.rows; r += ystep) g.fillText(String(r + 1), left - 4, top + (r + 0.5) * cellH);
  const xstep = Math.max(1, Math.ceil(d.cols / 40));
  g.save();
  for (let c = 0; c < d.cols; c += xstep) {
    g.save();
    g.translate(left + (c + 0.5) * cellW, top + d.rows * cellH + 4);
    g.rotate(-Math.PI / 3);
    g.fillText(d.x[c].slice(0, 8), 0, 0);
    g.restore();
  }
  g.restore();
  if (d.selected !== null && d.selected < d.cols) {
    g.strokeStyle = '#111'; g.lineWidth = 1.5;
    g.strokeRect(left + d.selected * cellW, top, Math.max(cellW, 2), d.rows * cellH);
  }
}

export default function(component) {
  const { data, parentElement } = component;
  let host = parentElement.querySelector('.obl-heat');
  if (!host) {
    host = document.createElement('div');
    host.className = 'obl-heat';
    host.innerHTML = '<canvas role="img"></canvas><div class="tip"></div><div class="scale"></div>';
    parentElement.appendChild(host);
    const cv = host.querySelector('canvas'), tip = host.querySelector('.tip');
    cv.addEventListener('mousemove', (e) => {
      const d = host.obl, gm = host.geom, b = cv.getBoundingClientRect();
      const c = Math.floor((e.clientX - b.left - gm.left) / gm.cellW), r = Math.floor((e.clientY - b.top - gm.top) / gm.cellH);
      if (c < 0 || r < 0 || c >= d.cols || r >= d.rows) { tip.style.display = 'none'; return; }
      tip.textContent = 'block ' + (r + 1) + ' · after ' + JSON.stringify(d.x[c]) + ' (position ' + c + '): ' +
        d.z[r * d.cols + c].toFixed(2);
      tip.style.display = 'block';
      tip.style.left = Math.min(e.clientX - b.left + 12, b.width - tip.offsetWidth - 4) + 'px';
      tip.style.top = (e.clientY - b.top + 12) + 'px';
    });
    cv.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
    new ResizeObserver(() => host.obl && paint(host)).observe(host);
  }
  host.obl = data;
  host.dataset.selected = String(data.selected);
  host.querySelector('canvas').setAttribute('aria-label', data.title);
  host.querySelector('.scale').innerHTML = '';
  host.querySelector('.scale').append(data.unit + ': −' + data.top.toFixed(1), document.createElement('span'),
                                      '+' + data.top.toFixed(1));
  paint(host);
}
"""

_heatmap = st.components.v2.component("obliviate_heatmap", css=CSS, js=JS, isolate_styles=False)


def heatmap_data(z: list[list[float]], labels: list[str], selected: int | None, unit: str, title: str) -> dict:
    """(rows, cols) values -> the component's data: flat, rounded to 2 decimals, symmetric colour range."""
    rows, cols = len(z), len(z[0]) if z else 0
    flat = [round(v, 2) for row in z for v in row]
    top = max((abs(v) for v in flat), default=1.0) or 1.0
    data = {"rows": rows, "cols": cols, "z": flat, "x": labels, "top": top, "unit": unit, "title": title}
    data["selected"] = selected
    return data


def heatmap(data: dict, key: str):
    """Mount the canvas heatmap on heatmap_data's output."""
    return _heatmap(data=data, key=key)
