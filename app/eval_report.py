"""An evaluation as one self-contained HTML report: the table, the changes against the baseline, the
notes and the plots (Plotly, its script embedded once, so the file opens offline). Pure: a result
dict in, a string out."""
from __future__ import annotations

import html

import plotly.graph_objects as go

from app import charts
from engine.evaluation.table import metric


def _table(rows: list[list[str]], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def figures(result: dict) -> list[go.Figure]:
    """The report's plots: the forget / keep trade-off, relearning curves, the probe at every block."""
    models = result["models"]
    base = models.get("baseline", {})
    out = []
    pts = [(n, v.get("familiarity_probability"), v.get("retain_probability")) for n, v in models.items()
           if v.get("familiarity_probability") is not None and v.get("retain_probability") is not None]
    if pts:
        out.append(charts.tradeoff(pts, (base.get("familiarity_probability"), base.get("retain_probability")), True,
                                   metric("familiarity_probability").label, metric("retain_probability").label))
    curves = go.Figure()
    for n, v in models.items():
        c = v.get("relearn_curve")
        for src, entry in (c or {}).get("sources", {}).items() if isinstance(c, dict) else ():
            curves.add_scatter(x=c["steps"], y=entry["familiarity"], mode="lines+markers", name=f"{n} · {src}")
    if curves.data:
        curves.update_layout(title="Relearning: held-out familiarity by step", xaxis_title="relearning step",
                             yaxis_title="P(answer)")
        out.append(curves)
    probe = go.Figure()
    for n, v in models.items():
        c = v.get("probe_curve")
        if isinstance(c, dict):
            probe.add_scatter(x=c["layers"], y=c["accuracy"], mode="lines+markers", name=n)
    if probe.data:
        probe.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
        probe.update_layout(title="Linear probe at every block", xaxis_title="block", yaxis_title="balanced accuracy")
        out.append(probe)
    return out


def html_report(result: dict, name: str, columns: dict[str, str]) -> str:
    """columns: label -> metric key, in the page table's order."""
    models = result["models"]
    base = models.get("baseline", {})
    head = ["model", *columns]
    rows = [[n, *(_fmt(v.get(k)) for k in columns.values())] for n, v in models.items()]
    changes = [[n, *("–" if not base.get(k) or v.get(k) is None or not isinstance(v.get(k), (int, float))
                     else f"{(v[k] / base[k] - 1) * 100:+.1f}%" for k in columns.values())]
               for n, v in models.items() if n != "baseline"]
    plots = "".join(f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figures(result)))
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
    seconds = f" · {result['seconds']:.0f} s" if result.get("seconds") is not None else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Evaluation {html.escape(name)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}}table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body><h1>Evaluation {html.escape(name)}</h1>
<p>model <b>{html.escape(str(result.get("model", "?")))}</b> · {len(models)} models{seconds}</p>
<h2>Metrics</h2>{_table(rows, head)}
<h2>Change against the baseline</h2>{_table(changes, head) if changes else "<p>The baseline alone.</p>"}
<h2>Notes</h2><ul>{notes}</ul><h2>Plots</h2>{plots}</body></html>"""
