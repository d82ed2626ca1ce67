"""Inspect: what baseline, expert, generic and unlearned predict at every token of a prompt.

One batched forward per (model, adapters, prompt, dictionary version, top-k, pinned tokens), kept
in `st.cache_resource`; the alpha slider only re-views that result (`Inspection.view(alpha)`).
"""
from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from app import state, widgets
from engine.errors import UserError
from engine.generation import complete, complete_generic
from engine.inspection import inspect

ctx = state.require_workbench()
wb = ctx.wb

st.title("Inspect")
st.caption("Type a prompt and see, token by token, what each model expects next.")
with st.expander("What are baseline, expert, generic and unlearned?"):
    st.markdown(
        "- **baseline**: the model as loaded (it has read Harry Potter).\n"
        "- **expert**: the baseline fine-tuned *further* on the text to forget (choose one in the "
        "sidebar). Where the expert is more confident than the baseline, the text is idiosyncratic.\n"
        "- **generic**: what a model that never read the text would predict. The baseline reads the "
        "prompt with its **anchored terms translated** (Hogwarts → Mystic Academy, see the Anchors "
        "page), and every token the expert likes more than the baseline is pushed down:  \n"
        "  `generic = baseline(translated) − alpha · relu(expert(original) − baseline(translated))`.  \n"
        "  Unlearning fine-tunes the model towards generic's top token (its *label*) at every position.\n"
        "- **unlearned**: a model after an unlearning run (Runs page), to check it now says what "
        "generic said.\n\n"
        "Select a position to see each model's top predictions after it; the strip's colours show "
        "where the models disagree. Moving **alpha** (sidebar) recomputes generic instantly, without "
        "running the model again."
    )


@st.cache_data(show_spinner=False)
def examples() -> list[str]:
    path = state.ASSETS / "probes.json"
    if not path.exists():
        return ["Harry Potter's two best friends are Ron and"]
    probes = json.loads(path.read_text(encoding="utf-8"))
    picks = [p["prompt"] for p in probes.get("probability", [])[:4]]
    picks += [p["prompt"] for p in probes.get("completion", [])[:2]]
    picks += [p["prompt"] for p in probes.get("retain", [])[:1]]
    return list(dict.fromkeys(picks))


def _use_example() -> None:
    if st.session_state.get("inspect_example"):
        st.session_state["inspect_prompt"] = st.session_state["inspect_example"]


st.pills("Examples", examples(), key="inspect_example", on_change=_use_example, label_visibility="collapsed")
prompt = st.text_input("Prompt", key="inspect_prompt", placeholder="Harry Potter's two best friends are Ron and",
                       help="Press Enter to inspect. The last position's predictions are what the "
                            "models would say next.")

c1, c2, c3, c4 = st.columns([3, 1.2, 1, 2.4])
metric = c1.selectbox("Colour tokens by", list(widgets.METRICS), format_func=widgets.METRICS.get,
                      key="inspect_metric")
use_anchors = c2.toggle("Anchors", value=True, key="inspect_use_anchors",
                        help="Translate the anchored terms of the saved dictionary (Anchors page) "
                             "before the baseline reads the prompt for generic.")
top_k = int(c3.number_input("Top-k", 1, 50, 5, key="inspect_top_k"))
pinned = c4.text_input("Pinned tokens", "Hermione, Emily", key="inspect_pinned",
                       help="Comma-separated words to follow along the prompt; each is read as it "
                            "appears in running text (with a leading space), first token only.")
track = tuple(dict.fromkeys(" " + w.strip() for w in pinned.split(",") if w.strip()))

if not prompt.strip():
    st.info("Type a prompt above and press Enter, or pick an example.")
    st.stop()
if len(prompt) > state.MAX_PROMPT_CHARS:
    st.error(f"The prompt is {len(prompt):,} characters; the Inspect page takes at most "
             f"{state.MAX_PROMPT_CHARS:,}. Paste a shorter passage.")
    st.stop()

anchors = None
if use_anchors:
    try:
        anchors = state.saved_anchors()
        problems = anchors.validate()
        if problems:
            st.warning(f"The saved anchor dictionary has {len(problems)} problem(s) (first: {problems[0]}); "
                       "inspecting without translation. Fix it on the Anchors page.")
            anchors = None
    except UserError as e:
        st.warning(f"{e}; inspecting without translation. Fix or re-import it on the Anchors page.")


@st.cache_resource(max_entries=8, show_spinner="Running the prompt through every model…")
def _inspection(model_key: str, adapters_key: str, prompt: str, anchors_version: str, top_k: int,
                track: tuple[str, ...], _wb, _anchors, expert, unlearned):
    """Keyed by what changes the forward; `_wb` and `_anchors` are what those keys name."""
    return inspect(_wb, prompt, _anchors, expert=expert, unlearned=unlearned, top_k=top_k, track=track)


try:
    inspection = _inspection(ctx.model_key, ctx.adapters_key, prompt, anchors.version() if anchors else "",
                             top_k, track, wb, anchors, ctx.expert, ctx.unlearned)
    view = inspection.view(ctx.alpha)
except UserError as e:
    st.error(f"{e}")
    st.stop()
except (MemoryError, RuntimeError) as e:
    if not state.is_oom(e):
        raise
    st.error(f"Inspecting this prompt ran {state.OOM_HINT}.")
    st.stop()

positions = view["positions"]
T = len(positions)
for note in view["notes"]:
    st.caption(f"ℹ️ {note}")

# -- token strip and position --------------------------------------------------------------------
strip = st.container()
pos = st.select_slider(
    "Position", options=list(range(T)), value=T - 1, key=f"inspect_pos_{hash(prompt)}",
    format_func=lambda i: f"{i} · {positions[i]['token']!r}",
    help="The predictions shown below are the ones each model makes after this token.")
if metric == "expert_gain" and ctx.expert is None:
    strip.caption("Pick an expert in the sidebar to colour by expert − baseline.")
strip.html(widgets.token_strip_html(view, metric, pos).replace(
    'class="obl-strip"', f'class="obl-strip" data-alpha="{ctx.alpha:g}"'))

# -- top-k table at the selected position ----------------------------------------------------------
p = positions[pos]
nxt = f"the actual next token is {p['next_token']!r}" if p["next_token"] is not None else "end of the prompt"
st.markdown(f"**After {p['token']!r}** (position {pos}; {nxt})"
            + (f" · inside anchored term **{p['term']}**" if p["term"] else ""))
shown = [m for m in widgets.MODELS if m == "baseline" or m == "generic"
         or (m == "expert" and ctx.expert) or (m == "unlearned" and ctx.unlearned)]
cols = st.columns(len(shown))
for col, m in zip(cols, shown):
    with col:
        st.markdown(f"**{m}**" + (f" (alpha {ctx.alpha:g})" if m == "generic" else ""))
        rows = widgets.topk_rows(p, m)
        if not rows:
            st.caption("No generic label here: this position is inside an anchored term or just "
                       "before a repeated one, so training leaves it out.")
            continue
        nx = p.get(f"{m}_next")
        if nx and nx["prob"] is not None:
            st.caption(f"actual next: p = {nx['prob']:.3f}, rank {nx['rank']}")
        st.dataframe(
            pd.DataFrame(rows).drop(columns="rank"), hide_index=True, width="stretch", key=f"topk_{m}",
            column_config={
                "token": st.column_config.TextColumn("token"),
                "p": st.column_config.ProgressColumn("probability", min_value=0.0, max_value=1.0, format="%.3f"),
                "vs baseline": st.column_config.TextColumn("vs baseline", width="small",
                                                           help="rank change against the baseline's top-k"),
            })

# -- tracked tokens along the prompt ---------------------------------------------------------------
if view["tracked"]:
    st.subheader("Pinned tokens along the prompt")
    st.caption("The probability that each pinned word (its first token) comes next, after every position. "
               "Solid: baseline · dotted: expert · dashed: generic · dash-dot: unlearned. The grey line "
               "marks the selected position; generic has gaps where a position has no label.")
    fig = go.Figure()
    palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
    dashes = {"baseline": "solid", "expert": "dot", "generic": "dash", "unlearned": "dashdot"}
    x = list(range(T))
    for k, (text, per_model) in enumerate(view["tracked"].items()):
        for m, probs in per_model.items():
            fig.add_trace(go.Scatter(
                x=x, y=probs, mode="lines+markers", name=f"{text!r} · {m}", connectgaps=False,
                line={"color": palette[k % len(palette)], "dash": dashes[m]}, marker={"size": 4}))
    fig.add_vline(x=pos, line_width=1, line_color="#999")
    fig.update_layout(
        height=320, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title="P(next token)",
        xaxis={"tickmode": "array", "tickvals": x, "ticktext": [widgets.show(q["token"]) for q in positions],
               "tickangle": -60},
        legend={"orientation": "h", "y": -0.45})
    st.plotly_chart(fig, key="inspect_tracked", config={"displayModeBar": False})

# -- the translated prompt -------------------------------------------------------------------------
st.subheader("Translation and alignment")
if not view["terms"]:
    st.caption("No anchored term in this prompt: the baseline reads it unchanged"
               + ("" if anchors else " (translation is off)") + ".")
else:
    st.caption(" · ".join(f"{t['term']} → {t['translation']}" for t in view["terms"]))
    st.html(widgets.alignment_html([q["token"] for q in positions], view["translated_tokens"],
                                   view["mapping"], view["terms"]))

# -- side-by-side completions ----------------------------------------------------------------------
st.subheader("Completions")
g1, g2, g3, g4 = st.columns([1, 1, 1, 2])
max_new = int(g1.number_input("New tokens", 1, 200, 20, key="inspect_new_tokens"))
temperature = float(g2.number_input("Temperature", 0.0, 2.0, 0.0, 0.1, key="inspect_temperature",
                                    help="0 = greedy. Generic is always greedy."))
seed = int(g3.number_input("Seed", 0, 2**31 - 1, 0, key="inspect_seed"))
key = (ctx.model_key, ctx.adapters_key, prompt, anchors.version() if anchors else "", ctx.alpha, max_new,
       temperature, seed)
if g4.button("Complete the prompt with every model", key="inspect_complete"):
    try:
        with st.spinner("Generating…"):
            out = {"baseline": complete(wb, [prompt], None, max_new, temperature, seed)[0]}
            if ctx.expert:
                out["expert"] = complete(wb, [prompt], ctx.expert, max_new, temperature, seed)[0]
            out["generic"] = complete_generic(wb, prompt, ctx.expert, ctx.alpha, max_new, anchors)
            if ctx.unlearned:
                out["unlearned"] = complete(wb, [prompt], ctx.unlearned, max_new, temperature, seed)[0]
        st.session_state["inspect_completions"] = (key, out)
    except UserError as e:
        st.error(str(e))
    except (MemoryError, RuntimeError) as e:
        if not state.is_oom(e):
            raise
        st.error(f"Generating ran {state.OOM_HINT}.")
done = st.session_state.get("inspect_completions")
if done:
    done_key, out = done
    if done_key != key:
        st.caption("Settings changed since these were generated: press the button again to refresh.")
    for col, (m, text) in zip(st.columns(len(out)), out.items()):
        col.markdown(f"**{m}**")
        col.markdown(f"<div style='font-family:ui-monospace,monospace;font-size:0.9rem'>"
                     f"<span style='color:#888'>…{widgets.show(prompt[-40:])}</span>"
                     f"<b>{widgets.show(text)}</b></div>", unsafe_allow_html=True)
