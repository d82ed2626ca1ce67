"""The Evaluate page's "is the forgetting real?" panels: the settings that turn the attacks on, and the
plots of their results (relearning curves, stated/unstated in-context bars, quantisation, the linear
probe, extraction strength, the paper's benchmarks next to the paper's own deltas).

Layout only: the numbers come from an evaluation result (engine.evaluation), their meaning from
engine.evaluation.table.
"""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app.charts import PALETTE
from engine.evaluation.settings import PAPER_TASKS
from engine.evaluation.table import PAPER_WHP, QUANT, SOURCES, metric

ATTACKS = {"summary": "Summary in context", "preamble": "Expert preamble", "few_shot": "Few-shot pairs"}
STEPS = [0, 5, 10, 25, 50, 100]
DASH = {"forget": "solid", "related": "dash", "unrelated": "dot"}


def settings_inputs() -> dict:
    """The widgets of the robustness settings (inside the page's Settings expander) -> EvalSettings fields."""
    st.markdown("**Is the forgetting real?**")
    c1, c2 = st.columns(2)
    curve = c1.multiselect(
        "Relearning curve: steps", STEPS, default=[], key="eval_relearn_curve",
        help="One relearning run per model and source (LoRA, lr 3e-4, on 512 tokens); familiarity of a held-out "
             "probe group whose answers the relearning text never states, at each chosen step. Empty: skip. "
             "About a second per step per model and source on a CPU with the embedded model.")
    sources = c2.multiselect(
        "Relearning sources", list(SOURCES), default=list(SOURCES), key="eval_relearn_sources",
        help="forget: a slice of the corpus; related: other fantasy; unrelated: everyday prose.")
    sweep = st.checkbox("Worst case over a learning-rate sweep (3 rates by model size; 3x the time)", False,
                        key="eval_relearn_sweep", disabled=not curve,
                        help="As the field now attacks: one relearning run per rate (1e-4, 3e-4, 1e-3 for models up "
                             "to 300M parameters), and at each step the most familiarity any rate gave back.")
    q1, q2, q3 = st.columns(3)
    quantize = q1.multiselect(
        "Quantisation", list(QUANT), default=[], format_func=QUANT.get, key="eval_quantize",
        help="Familiarity with each adapter merged into the base and quantised, and unmerged on a quantised base "
             "(bitsandbytes; slow on a CPU).")
    tasks = q2.multiselect("Benchmarks (the paper's seven)", list(PAPER_TASKS), default=[], key="eval_benchmarks",
                           help="lm-evaluation-harness, offline on the local validation splits; zero-shot accuracy.")
    limit = q3.number_input("items per benchmark", 1, 10_000, 50, key="eval_benchmark_limit")
    p1, p2 = st.columns(2)
    probe = p1.checkbox("Linear probe on a middle layer (HP prompts vs other prompts)", True, key="eval_linear_probe")
    every = p2.checkbox("… and at every block (a curve)", False, key="eval_probe_all", disabled=not probe,
                        help="The probe fit and scored at the output of every block from one forward: where is the "
                             "concept still linearly readable, per model?")
    return {"relearn_curve": sorted(int(s) for s in curve), "relearn_sources": list(sources) or list(SOURCES),
            "quantize": list(quantize), "benchmarks": list(tasks), "benchmark_limit": int(limit),
            "linear_probe": bool(probe), "probe_layer": "all" if probe and every else None,
            "relearn_sweep": bool(sweep and curve)}


def show(result: dict) -> None:
    """Every robustness panel the result has data for."""
    models = result["models"]
    _in_context(models)
    _relearning(models)
    c1, c2 = st.columns(2)
    with c1:
        _quantisation(models)
    with c2:
        _representation(models)
    _benchmarks(models)


def _present(models: dict, key: str) -> bool:
    return any(v.get(key) is not None for v in models.values())


def _in_context(models: dict) -> None:
    shown = [a for a in ATTACKS if any(a in (v.get("in_context") or {}) for v in models.values())]
    if not shown:
        return
    st.markdown("**In-context attacks: answers the context states vs answers it does not**")
    st.caption("A context that states an answer is read, not remembered (even a model that never knew it uses it). "
               "Only the *unstated* bars measure knowledge coming back from the weights: compare each with the "
               "plain prompt on the same probes.")
    for col, attack in zip(st.columns(len(shown)), shown):
        fig = go.Figure()
        names = list(models)
        for group, colour in (("stated", "#9ecae1"), ("unstated", "#e6550d")):
            d = [(models[m].get("in_context") or {}).get(attack, {}).get(group, {}) for m in names]
            n = max((x.get("n") or 0 for x in d), default=0)
            fig.add_bar(name=f"{group} (n={n}), plain", x=names, y=[x.get("plain") for x in d],
                        marker_color=colour, opacity=0.4, offsetgroup=group + "p")
            fig.add_bar(name=f"{group}, in context", x=names, y=[x.get("context") for x in d],
                        marker_color=colour, offsetgroup=group)
        fig.update_layout(title=ATTACKS[attack], barmode="group", yaxis_title="P(answer)", height=360,
                          margin=dict(t=40, b=40), legend=dict(orientation="h", y=-0.25))
        with col:
            st.plotly_chart(fig, key=f"eval_ctx_{attack}")


def _relearning(models: dict) -> None:
    curves = {m: v["relearn_curve"] for m, v in models.items() if isinstance(v.get("relearn_curve"), dict)}
    if not any(c.get("sources") for c in curves.values()):
        return
    st.markdown("**Relearning curves**")
    what = st.radio("Show", ["recovered", "familiarity"], horizontal=True, key="eval_relearn_show",
                    format_func={"recovered": "recovered fraction (vs the baseline)",
                                 "familiarity": "held-out familiarity"}.get)
    held = next(iter(curves.values())).get("held_out")
    st.caption(f"One LoRA run per model and source; familiarity of {held} held-out probes whose answers the "
               "relearning text never states. Recovered fraction = (after − model) / (baseline − model): 0 nothing "
               "came back, 1 all of it. The baseline's own curve (familiarity view) is how much an untouched model "
               "moves on the same text.")
    fig = go.Figure()
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for k, (m, c) in enumerate(curves.items()):
        for src, pts in c.get("sources", {}).items():
            y = pts.get(what) or []
            if any(v is not None for v in y):
                fig.add_scatter(x=c["steps"], y=y, name=f"{m} · {src}", mode="lines+markers",
                                line=dict(color=palette[k % len(palette)], dash=DASH.get(src, "solid")))
    fig.update_layout(title="Relearning: " + ("recovered fraction" if what == "recovered" else "held-out familiarity"),
                      xaxis_title="relearning step", yaxis_title="recovered" if what == "recovered" else "P(answer)",
                      height=400, margin=dict(t=40, b=40))
    st.plotly_chart(fig, key="eval_relearn_curves")


def _quantisation(models: dict) -> None:
    keys = [k for q in QUANT for k in (f"familiarity_{q}", f"familiarity_{q}_unmerged") if _present(models, k)]
    if not keys:
        return
    fig = go.Figure([go.Bar(name=metric(k).label if k != "familiarity_probability" else "full precision",
                            x=list(models), y=[v.get(k) for v in models.values()])
                     for k in ("familiarity_probability", *keys)])
    fig.update_layout(title="Quantisation: does familiarity come back?", barmode="group", yaxis_title="P(answer)",
                      height=380, margin=dict(t=40, b=40))
    st.plotly_chart(fig, key="eval_quant")


def _representation(models: dict) -> None:
    keys = [k for k in ("probe_accuracy", "probe_accuracy_own", "extraction_strength") if _present(models, k)]
    if not keys:
        return
    fig = go.Figure([go.Bar(name=metric(k).label, x=list(models), y=[v.get(k) for v in models.values()])
                     for k in keys])
    if any(k.startswith("probe") for k in keys):
        fig.add_hline(y=0.5, line_dash="dash", annotation_text="probe chance")
    fig.update_layout(title="Linear probe and extraction strength", barmode="group", yaxis_range=[0, 1.05],
                      height=380, margin=dict(t=40, b=40))
    st.plotly_chart(fig, key="eval_probe_chart")
    curves = {m: v["probe_curve"] for m, v in models.items() if isinstance(v.get("probe_curve"), dict)}
    if curves:
        fig = go.Figure()
        for k, (m, c) in enumerate(curves.items()):
            colour = PALETTE[k % len(PALETTE)]
            lo = [a - s for a, s in zip(c["accuracy"], c["fold_std"])]
            hi = [a + s for a, s in zip(c["accuracy"], c["fold_std"])]
            fig.add_scatter(x=c["layers"] + c["layers"][::-1], y=hi + lo[::-1], fill="toself", line=dict(width=0),
                            fillcolor=colour, opacity=0.15, hoverinfo="skip", showlegend=False)
            fig.add_scatter(x=c["layers"], y=c["accuracy"], mode="lines+markers", name=m, line=dict(color=colour))
        fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
        fig.update_layout(title="Linear probe at every block (the baseline's probe; band: ± fold spread)",
                          xaxis_title="output of block (0: embeddings)", yaxis_title="balanced accuracy",
                          yaxis_range=[0.3, 1.05], height=380, margin=dict(t=40, b=40))
        st.plotly_chart(fig, key="eval_probe_curve")


def benchmark_table(models: dict) -> pd.DataFrame | None:
    """Rows: tasks; columns: each model's accuracy, each adapter's change vs the baseline, and the
    paper's Llama-2-7b-chat before / after / change."""
    tasks = [t for t in PAPER_TASKS if _present(models, f"bench_{t}")]
    if not tasks:
        return None
    base = models.get("baseline", {})
    rows = []
    for t in tasks:
        row = {m: v.get(f"bench_{t}") for m, v in models.items()}
        for m, v in models.items():
            if m != "baseline" and v.get(f"bench_{t}") is not None and base.get(f"bench_{t}") is not None:
                row[f"Δ {m}"] = v[f"bench_{t}"] - base[f"bench_{t}"]
        paper = PAPER_WHP.get(t)
        row.update({"paper: Llama-2-7b": paper[0] if paper else None, "paper: WHP": paper[1] if paper else None,
                    "paper: Δ": paper[1] - paper[0] if paper else None})
        rows.append(row)
    return pd.DataFrame(rows, index=tasks)


def _benchmarks(models: dict) -> None:
    table = benchmark_table(models)
    if table is None:
        return
    st.markdown("**The paper's benchmarks** (accuracy; Δ = change from the baseline)")
    st.caption("The paper's columns are Llama-2-7b-chat before and after WHP (Eldan & Russinovich 2023): a 7B model "
               "loses about 0.01-0.03 per task. A small model near chance (0.25 on four choices, 0.5 on two) has "
               "little to lose, and a few dozen items move by several points by chance alone.")
    st.dataframe(table.style.format("{:+.3f}", subset=[c for c in table.columns if str(c).startswith(("Δ", "paper: Δ"))],
                                    na_rep="–")
                 .format("{:.3f}", subset=[c for c in table.columns if not str(c).startswith(("Δ", "paper: Δ"))],
                         na_rep="–"), key="eval_bench_table")
