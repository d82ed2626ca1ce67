"""Every Plotly figure the pages draw, built from engine results (the pages only place them).

Pure functions: data in, a `go.Figure` out; no Streamlit, no engine calls, no file formats.
"""
from __future__ import annotations

import plotly.graph_objects as go

from app.inspect_views import show
from app.run_views import RUN_COLOURS, global_steps

MODEL_DASHES = {"baseline": "solid", "expert": "dot", "generic": "dash", "unlearned": "dashdot"}
PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]


# -- Inspect ------------------------------------------------------------------------------------------
def pinned_bars(bars: list[dict], labels: dict[str, str], colours: dict[str, str], one_token: bool) -> go.Figure:
    """P(pinned token) per model at the selected position, with the change from the baseline."""
    fig = go.Figure()
    for k, text in enumerate(dict.fromkeys(b["token"] for b in bars)):
        row = [b for b in bars if b["token"] == text]
        fig.add_bar(
            name=f"P({labels.get(text, text)})", x=[b["model"] for b in row], y=[b["p"] or 0.0 for b in row],
            marker_color=[colours[b["model"]] for b in row] if one_token else RUN_COLOURS[k % 8],
            text=[("–" if b["p"] is None else "~0" if b["p"] < 5e-4 else f"{b['p']:.3f}")
                  + (f" ({b['change']:+.0%})" if b["change"] is not None else "") for b in row],
            textposition="outside", cliponaxis=False)
    top = max([b["p"] or 0.0 for b in bars] + [0.05])
    fig.update_layout(barmode="group", height=210, margin=dict(l=10, r=10, t=10, b=10), showlegend=not one_token,
                      yaxis=dict(range=[0, min(1.0, top * 1.3)], title="P(next token)", fixedrange=True),
                      xaxis=dict(fixedrange=True), legend=dict(orientation="h", y=1.15, x=0))
    return fig


def tracked_along_prompt(tracked: dict, labels: dict[str, str], tokens: list[str], pos: int, log_y: bool) -> go.Figure:
    """Each pinned token's probability after every position, one line per model (generic has gaps)."""
    fig = go.Figure()
    x = list(range(len(tokens)))
    shown = [show(t) for t in tokens]
    for k, (text, per_model) in enumerate(tracked.items()):
        for m, probs in per_model.items():
            fig.add_trace(go.Scatter(
                x=x, y=probs, mode="lines+markers", name=f"{labels.get(text, text)} · {m}", connectgaps=False,
                customdata=shown, hovertemplate="after %{customdata} (position %{x}): %{y:.4f}",
                line={"color": PALETTE[k % len(PALETTE)], "dash": MODEL_DASHES[m]}, marker={"size": 4}))
    fig.add_vline(x=pos, line_width=1, line_color="#999")
    step = max(1, len(tokens) // 60)  # at most ~60 tick labels: a tick per token of a 405-token prompt drew for seconds
    ticks = sorted(set(range(0, len(tokens), step)) | {pos})
    fig.update_layout(
        height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title="P(next token)",
        yaxis_type="log" if log_y else "linear",
        xaxis={"tickmode": "array", "tickvals": ticks, "ticktext": [shown[i] for i in ticks], "tickangle": -60},
        legend={"orientation": "h", "y": -0.45})
    return fig


# -- Runs ---------------------------------------------------------------------------------------------
def loss_curve(rows: list[dict], title: str = "loss") -> go.Figure:
    fig = go.Figure()
    xs = global_steps(rows)
    for phase in dict.fromkeys(r["phase"] for r in rows):
        pts = [(x, r) for x, r in zip(xs, rows) if r["phase"] == phase and r.get("loss") is not None]
        fig.add_scatter(x=[x for x, _ in pts], y=[r["loss"] for _, r in pts], mode="lines", name=phase)
    fig.update_layout(title=title, xaxis_title="step (all phases)", height=300, margin=dict(t=40, b=30, l=40, r=10))
    return fig


def probe_curves(rows: list[dict], names: list[str]) -> go.Figure:
    fig = go.Figure()
    probed = [(x, r) for x, r in zip(global_steps(rows), rows) if r.get("probes")]
    for phase in dict.fromkeys(r["phase"] for _, r in probed):
        pts = [(x, r) for x, r in probed if r["phase"] == phase]
        for key in ("familiarity", "retain"):
            if any(r.get(key) is not None for _, r in pts):
                fig.add_scatter(x=[x for x, _ in pts], y=[r.get(key) for _, r in pts], mode="lines+markers",
                                name=f"{phase}: mean {key}", line=dict(dash="dot" if key == "retain" else "solid"))
        for n in names:
            fig.add_scatter(x=[x for x, _ in pts], y=[r["probes"].get(n) for _, r in pts], mode="lines+markers",
                            name=f"{phase}: {n}")
    fig.update_layout(title="tracked probabilities", xaxis_title="step (all phases)", yaxis_title="probability",
                      height=340, margin=dict(t=40, b=30, l=40, r=10))
    return fig


def run_comparison(metrics: dict[str, list[dict]], names: dict[str, str], series: str, probe_series: bool) -> go.Figure:
    """One series (loss, familiarity, retain or a probe) of several runs: a colour per run, a dash per phase."""
    fig = go.Figure()
    dashes = ["solid", "dot", "dash", "dashdot"]
    for k, (d, rows) in enumerate(metrics.items()):
        colour = RUN_COLOURS[k % len(RUN_COLOURS)]
        xs = global_steps(rows)
        for j, phase in enumerate(dict.fromkeys(r["phase"] for r in rows)):
            pts = [(x, (r.get("probes") or {}).get(series) if probe_series else r.get(series))
                   for x, r in zip(xs, rows) if r["phase"] == phase]
            pts = [(x, y) for x, y in pts if y is not None]
            if pts:
                fig.add_scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers",
                                name=f"{names[d]} · {phase}", line=dict(color=colour, dash=dashes[j % 4]))
    fig.update_layout(title=series, xaxis_title="step (all phases: reinforce, then unlearn)", height=360,
                      margin=dict(t=40, b=30, l=40, r=10))
    return fig


# -- Evaluate -----------------------------------------------------------------------------------------
def training_probes(rows: list[dict], chosen: list[str], title: str) -> go.Figure:
    fig = go.Figure()
    for k, name in (("familiarity", "familiarity (mean of forget probes)"), ("retain", "retain (mean)")):
        if any(r.get(k) is not None for r in rows):
            fig.add_scatter(x=[r["step"] for r in rows], y=[r.get(k) for r in rows], name=name,
                            mode="lines+markers", line=dict(width=3))
    for name in chosen:
        fig.add_scatter(x=[r["step"] for r in rows], y=[(r.get("probes") or {}).get(name) for r in rows],
                        name=name, mode="lines+markers", line=dict(dash="dot"))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title="probability", height=400, margin=dict(t=40, b=40))
    return fig


def tradeoff(pts: list[tuple[str, float, float]], base: tuple[float | None, float | None], higher_is_better: bool,
             x_title: str, y_title: str) -> go.Figure:
    """Familiarity (x) against utility (y) per model, from zero, with the region a good unlearning
    lands in: familiarity under a quarter of the baseline's, utility within 10% of it."""
    fig = go.Figure()
    bx, by = base
    x_max = max([p[1] for p in pts] + [0.01]) * 1.25
    y_max = max([p[2] for p in pts] + [0.01]) * 1.25
    if bx is not None and by is not None:
        y0, y1 = (by * 0.9, y_max) if higher_is_better else (0, by * 1.1)
        fig.add_shape(type="rect", x0=0, x1=bx * 0.25, y0=y0, y1=y1, line_width=0,
                      fillcolor="rgba(22,163,74,0.12)", layer="below")
        fig.add_annotation(x=bx * 0.125, y=y1, text="target", showarrow=False, yanchor="top",
                           font=dict(color="#15803d", size=11))
    fig.add_scatter(x=[p[1] for p in pts], y=[p[2] for p in pts], mode="markers+text", cliponaxis=False,
                    text=[p[0] for p in pts], textposition="top center", marker=dict(size=12))
    fig.update_layout(title="Familiarity vs utility", xaxis_title=x_title, yaxis_title=y_title,
                      height=400, margin=dict(t=50, b=40, l=60, r=40), showlegend=False,
                      xaxis=dict(range=[0, x_max], fixedrange=True), yaxis=dict(range=[0, y_max], fixedrange=True))
    return fig


def grouped_bars(models: dict[str, dict], keys: list[str], names: dict[str, str], title: str, **layout) -> go.Figure:
    """One bar per model for each metric key (the metrics a model lacks are gaps)."""
    fig = go.Figure([go.Bar(name=names[k], x=list(models), y=[v.get(k) for v in models.values()]) for k in keys])
    fig.update_layout(title=title, barmode="group", height=380, margin=dict(t=40, b=40), **layout)
    return fig
