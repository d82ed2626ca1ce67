"""Inspect: what baseline, expert, generic and unlearned predict at every token of a prompt.

One batched forward per (model, adapters, prompt, dictionary version, top-k, pinned tokens), kept
in `st.cache_resource`; alpha only re-views that result (`Inspection.view(alpha)`). The prompt,
position, pinned tokens, colouring, adapters and alpha live in the URL (app/state.py), so a
reload, another page or a shared link comes back to the same view.
"""
from __future__ import annotations

from urllib.parse import urlencode

import streamlit as st

from app import anchor_views, charts, inspect_views, state
from app.heatmap import heatmap, heatmap_data
from app.strip import token_strip
from engine.errors import UserError, as_user_error
from engine.generation import complete_all
from engine.inspection import PAGE_PROMPT_TOKENS, inspect, lens_split
from engine.methods.elm import ElmOptions
from engine.probes import load_probes

COLOURS = {"baseline": "#64748b", "expert": "#ea580c", "generic": "#7c3aed", "unlearned": "#16a34a"}
POS, PROMPT, PINNED = "inspect_pos", "inspect_prompt", "inspect_pinned"
TARGET, CONCEPT = "inspect_target", "inspect_concept"

ctx = state.require_workbench()
wb = ctx.wb
for err in ctx.adapter_errors or []:  # where the eyes are, not only in the sidebar
    st.error(err)


@st.cache_data(show_spinner=False)
def examples() -> dict[str, list[str]]:
    """Example prompt -> the words it pins (its probe's target, or a completion probe's references)."""
    path = state.ASSETS / "probes.json"
    if not path.exists():
        return {"Harry Potter's two best friends are Ron and": ["Hermione"]}
    probes = load_probes(path)  # the engine's one probe loader: the page knows no file format
    picks = [(p["prompt"], [p["target"].strip()]) for p in probes.probability[:4]]
    picks += [(p["prompt"], list(p.get("references", []))[:2]) for p in probes.completion[:2]]
    picks += [(p["prompt"], [p["target"].strip()]) for p in probes.retain[:1]]
    return dict(picks)


def _use_example(chosen: str) -> None:
    st.session_state[PROMPT] = chosen
    st.session_state[PINNED] = ", ".join(examples().get(chosen, [])) or st.session_state.get(PINNED, "")


def example_buttons(columns: int) -> None:
    """One button per example prompt (it fills the prompt box and pins its probe's target)."""
    cols = st.columns(columns)
    for i, text in enumerate(examples()):
        cols[i % columns].button(text, key=f"inspect_example_{i}", on_click=_use_example, args=(text,),
                                 width="stretch")


for key in (PROMPT, PINNED, "inspect_metric", "inspect_top_k", "inspect_use_anchors", state.ALPHA, "inspect_lens",
            "inspect_scale"):
    state.restore(key)

first_open = not st.session_state.get(PROMPT, "").strip()
t1, t2 = st.columns([5, 1], vertical_alignment="bottom")
t1.title("Inspect")
if first_open:
    st.markdown("**Start here:** pick the first example. The bars show how likely each model finds "
                "“Hermione” after *…Ron and*: the baseline knows it, generic and the unlearned model "
                "should not. Then click any token of the prompt to see what every model expects there.")
    example_buttons(3)
else:  # the examples stay one click away without pushing the results down
    with t2.popover("Examples", icon=":material/list:", width="stretch"):
        example_buttons(1)
c1, c2, c3 = st.columns([6, 3, 2.4])
prompt = c1.text_input("Prompt", key=PROMPT, placeholder="Harry Potter's two best friends are Ron and",
                       help="Press Enter to inspect. The last position's predictions are what the "
                            "models would say next.")
pinned = c2.text_input("Pinned tokens", key=PINNED,
                       help="Comma-separated words whose probability is shown at the selected position "
                            "and along the prompt; each is read as it appears in running text (with a "
                            "leading space), first token only.")
metric = c3.selectbox("Colour tokens by", list(inspect_views.METRICS), format_func=inspect_views.METRICS.get,
                      key="inspect_metric")
for key, value in ((PROMPT, prompt), (PINNED, pinned), ("inspect_metric", metric)):
    state.keep(key, value)
track = tuple(dict.fromkeys(" " + w.strip() for w in pinned.split(",") if w.strip()))

if not prompt.strip():
    st.info("Type a prompt above and press Enter, or pick an example.")
    st.stop()
if len(prompt) > state.MAX_PROMPT_CHARS:
    st.error(f"The prompt is {len(prompt):,} characters; the Inspect page takes at most "
             f"{state.MAX_PROMPT_CHARS:,}. Paste a shorter passage.")
    st.stop()

n_tokens = len(wb.tokenizer(prompt, add_special_tokens=True)["input_ids"])  # milliseconds: before any forward
if n_tokens > PAGE_PROMPT_TOKENS:
    st.error(f"The prompt is {n_tokens:,} tokens; the Inspect page draws at most {PAGE_PROMPT_TOKENS:,}. Paste a "
             f"shorter passage, or inspect it from a terminal: `python -m engine inspect PROMPT --json`.")
    st.stop()
use_anchors = bool(st.session_state.get("inspect_use_anchors", True))
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
                track: tuple[str, ...], concept: str | None, lens: bool, scale: float, _wb, _anchors, expert, unlearned):
    """Keyed by what changes the forward; `_wb` and `_anchors` are what those keys name. A concept
    makes the generic row the ELM-style target (the baseline after novice and expert personas). The
    lens keeps the same forward's hidden states; each adapter scale is its own cached forward."""
    elm = ElmOptions.make(concept=concept) if concept is not None else None
    return inspect(_wb, prompt, _anchors, expert=expert, unlearned=unlearned, top_k=top_k, track=track, elm=elm,
                   lens=lens, scale=scale)


state.restore(TARGET)
if st.session_state[TARGET] == "elm":  # the concept only exists (and goes into the URL) for the ELM-style target
    state.restore(CONCEPT, load_probes(state.ASSETS / "probes.json").concept)
# What the whole page was drawn with: a change to either (inside the fragment below) redraws the page.
FULL = (use_anchors, st.session_state[TARGET])
st.session_state["_inspect_full"] = FULL


def _load(alpha: float):
    """The cached inspection for the current settings and its view at `alpha`; None after an error shown."""
    lens_on = bool(st.session_state.get("inspect_lens", False))
    scale = float(st.session_state.get("inspect_scale", 1.0)) if ctx.unlearned else 1.0
    elm_target = st.session_state[TARGET] == "elm"
    concept = (st.session_state.get(CONCEPT) or "").strip() or None if elm_target else None
    if elm_target and concept is None:
        st.error("Type the concept the ELM-style target erases (e.g. 'the Harry Potter books').")
        return None
    try:
        inspection = _inspection(ctx.model_key, ctx.adapters_key, prompt, anchors.version() if anchors else "",
                                 int(st.session_state.get("inspect_top_k") or 5), track, concept, lens_on, scale, wb,
                                 anchors, ctx.expert, ctx.unlearned)
        return inspection, inspection.view(alpha)
    except UserError as e:
        st.error(f"{e}")
    except (MemoryError, RuntimeError) as e:
        if (err := as_user_error(e, "Inspecting this prompt")) is None:
            raise
        st.error(f"{err}.")
    return None


@st.fragment
def position_view() -> None:
    """Everything a click on a token, the position slider, alpha, top-k, the lens and the adapter
    scale change: a fragment, so those rerun it alone (the prompt row, the alignment and the
    completions are not redrawn; a 405-token prompt's click took 5-7 s as a whole-page rerun)."""
    use_now = bool(st.session_state.get("inspect_use_anchors", True))
    if (use_now, st.session_state[TARGET]) != st.session_state.get("_inspect_full"):
        st.rerun(scope="app")  # translation or the target changed: the alignment below changes too
    elm_target = st.session_state[TARGET] == "elm"
    knob = state.ETA if elm_target else state.ALPHA  # eta and alpha are two settings, never one value read twice
    state.restore(knob)
    alpha = float(st.session_state.get(knob, state.URL_DEFAULTS[knob]))
    loaded = _load(alpha)
    if loaded is None:
        return
    inspection, view = loaded
    DRAWN.update(inspection=inspection, alpha=alpha)
    lens_on = inspection.has_lens
    positions = view["positions"]
    T = len(positions)
    tokens = [q["token"] for q in positions]
    for note in view["notes"]:
        st.caption(f"ℹ️ {note}")

    # -- the token strip: the position control ------------------------------------------------------
    if state.kept("inspect_pos_prompt") != prompt:  # a new prompt: its last position (what comes next)
        st.session_state[POS] = T - 1
        state.keep("inspect_pos_prompt", prompt)
    elif POS not in st.session_state:
        st.session_state[POS] = state.kept(POS, T - 1)
    st.session_state[POS] = min(max(int(st.session_state[POS]), 0), T - 1)
    pos = st.session_state[POS]
    state.keep(POS, pos)
    state.write_url()  # the position is settled only now (a new prompt starts at its last token)
    for note in state.url_notes():
        st.caption(f"ℹ️ {note}")
    state.url_notes().clear()

    def _clicked() -> None:
        value = (st.session_state.get("inspect_strip") or {}).get("clicked")
        if isinstance(value, int) and 0 <= value < T:
            st.session_state[POS] = value

    if metric == "expert_gain" and ctx.expert is None:
        st.caption("Pick an expert in the sidebar to colour by expert − baseline.")
    token_strip(inspect_views.strip_data(view, metric, pos, alpha), key="inspect_strip", on_click=_clicked)
    s1, s2, s3, s4 = st.columns([6.2, 1.1, 1.9, 1.5], vertical_alignment="bottom")
    s1.select_slider("Position", options=list(range(T)), key=POS, label_visibility="collapsed",
                     format_func=lambda i: f"position {i} · {positions[i]['token']!r}",
                     help="Or click a token above. The predictions below are the ones each model makes after it.")
    s2.number_input("Top-k", 1, 50, key="inspect_top_k")
    s3.toggle("Anchors", key="inspect_use_anchors",
              help="Translate the anchored terms of the saved dictionary (Anchors page) before the baseline "
                   "reads the prompt for generic.")
    s4.toggle("Lens", key="inspect_lens",
              help="The logit lens: every model's prediction after each block at the selected position (the "
                   "residual stream through the final norm and the unembedding), from the same forward.")
    state.keep("inspect_top_k", inspection.top_k)
    state.keep("inspect_use_anchors", use_anchors)
    state.keep("inspect_lens", lens_on)
    state.keep("inspect_scale", inspection.scale if ctx.unlearned else state.kept("inspect_scale", 1.0))

    # -- at the selected position: every model's top-k, the pinned tokens, alpha ----------------------
    p = positions[pos]
    shown = [m for m in inspect_views.MODELS if m in ("baseline", "generic")
             or (m == "expert" and ctx.expert) or (m == "unlearned" and ctx.unlearned)]
    left, right = st.columns([3, 2], gap="medium")
    with left:
        h1, h2 = st.columns([4, 1.5], vertical_alignment="center")
        nxt = f"next: {p['next_token']!r}" if p["next_token"] is not None else "end of the prompt: what comes next"
        h1.markdown(f"**After {p['token']!r}** · position {pos} · {nxt}"
                    + (f" · inside anchored term **{p['term']}**" if p["term"] else ""))
        word = inspect_views.term_candidate(inspect_views.word_at(tokens, pos), anchors.entries if anchors else ())
        if word and h2.button(f"“{word[:14]}” as term", key="inspect_add_term", icon=":material/add:",
                              width="stretch",
                              help=f"Add {word!r} to the anchored-terms dictionary: opens the Anchors page with it "
                                   "in the editor (you type its generic translation, then Save)"):
            st.session_state.setdefault("anchors_pending_terms", []).append(word)
            st.switch_page(str(state.ROOT / "pages" / "anchors.py"))
        st.html(inspect_views.topk_table_html(p, shown, alpha, knob="η" if elm_target else "α"))
    with right:
        a1, a2 = st.columns([3, 2])
        with a2:
            st.selectbox("Generic target", list(state.TARGETS), key=TARGET, format_func=state.TARGETS.get,
                         help="WHP: the baseline on the translated prompt, pushed away from the expert (needs an "
                              "expert and the dictionary). ELM-style: the baseline after a novice persona minus an "
                              "expert persona on a concept (no expert, no dictionary); alpha is then its eta.")
            state.keep(TARGET, st.session_state[TARGET])
        with a1:
            st.slider("eta" if elm_target else "alpha", 0.0, 20.0, step=0.5, key=knob,
                      disabled=ctx.expert is None and not elm_target,
                      help="ELM-style: log p* = log p(x) + eta · (log p(novice, x) − log p(expert, x)), ramped in "
                           "over the first tokens (engine/methods/elm.py). Never runs the model again." if elm_target
                      else "generic = baseline(translated) − alpha · relu(expert − baseline(translated)). The paper "
                           "used 5. Changes the generic column and bars; never runs the model again.")
        if elm_target:
            st.text_input("Concept", key=CONCEPT,
                          help="What is erased, as the persona prompts name it (the run config's elm.concept).")
            state.keep(CONCEPT, st.session_state[CONCEPT])
        elif ctx.expert is None:
            st.caption("alpha has no effect without an expert: generic is the baseline reading the translated "
                       "prompt. Pick an expert in the sidebar.")
        if ctx.unlearned:
            st.slider("Adapter scale", 0.0, 1.5, step=0.05, key="inspect_scale",
                      help="The unlearned adapter's LoRA update times this: 0 is the baseline, 1 the model as "
                           "trained, above 1 over-applied. How much of the adapter does forgetting need, and does "
                           "more break the rest? Each scale runs the prompt once (then cached).")
        labels = {text: repr(inspection.piece(tid)) for text, tid in inspection.tracked_ids.items()}
        bars = inspect_views.pinned_bars(view, pos, shown)
        if bars:
            st.markdown(inspect_views.pinned_summary([{**b, "token": labels.get(b["token"], b["token"])}
                                                      for b in bars]))
            fig = charts.pinned_bars(bars, labels, COLOURS, one_token=len(track) == 1)
            st.plotly_chart(fig, key="inspect_bars", config={"displayModeBar": False})
        else:
            st.caption("Pin a word (above) to follow its probability here.")
    state.keep(knob, alpha)

    # -- pinned tokens along the prompt ---------------------------------------------------------------
    if view["tracked"]:
        h1, h2 = st.columns([5, 1], vertical_alignment="bottom")
        h1.subheader("Pinned tokens along the prompt")
        log_y = h2.toggle("log scale", key="inspect_log",
                          help="Small probabilities (generic, unlearned) become visible")
        st.caption("The probability that each pinned word (its first token) comes next, after every position. "
                   "Solid: baseline · dotted: expert · dashed: generic · dash-dot: unlearned. The grey line "
                   "marks the selected position; generic has gaps where a position has no label.")
        fig = charts.tracked_along_prompt(view["tracked"], labels, tokens, pos, log_y)
        st.plotly_chart(fig, key="inspect_tracked", config={"displayModeBar": False})

    # -- layer by layer: the logit lens ---------------------------------------------------------------
    if lens_on:
        lens_view(inspection, pos, alpha, labels, tokens, p)

    # -- the link to this view (inside: the position it carries moves with a click) ---------------------
    with st.expander("Share this view", icon=":material/link:"):
        base = (st.context.url or "").split("?")[0]
        st.code(f"{base}?{urlencode(st.query_params.to_dict())}", language=None)  # the copy button at its right
        st.caption("Prompt, position, pinned tokens, colouring, alpha, lens, adapter scale and adapters (as `demo` "
                   "or `run:<name>`, so the link works on another machine with the same runs).")


def lens_view(inspection, pos: int, alpha: float, labels: dict, tokens: list[str], p: dict) -> None:
    """The logit lens at the selected position (blocks x models, HTML) and one pinned token's logit
    at every block and position (a heatmap)."""
    st.subheader("Layer by layer (logit lens)")
    lens = inspection.lens(pos, alpha)
    choices = list(inspection.tracked_ids)
    l1, l2 = st.columns([3, 2], gap="medium")
    with l1:
        token = st.selectbox("Token", choices or [None], key="inspect_lens_token",
                             format_func=lambda t: labels.get(t, repr(t)) if t else "each model's top-1",
                             help="Pin words above to follow them block by block.")
        if token and ctx.unlearned:
            st.markdown(inspect_views.lens_headline(lens_split(lens, token), labels.get(token, token)))
        st.caption(f"After {p['token']!r} (position {pos}): the probability after each block, each cell's "
                   "top-1 token written in it. Where the unlearned column goes dark while the baseline's stays "
                   "bright, the knowledge is computed below and suppressed above.")
        st.html(inspect_views.lens_grid_html(lens, token, labels.get(token, "") if token else ""))
    with l2:
        if token:
            opts = [m for m in ("baseline", "expert", "unlearned") if m in inspection.hidden]
            if ctx.unlearned:
                opts.insert(0, "unlearned − baseline")
            who = st.selectbox("Along the prompt", opts, key="inspect_lens_along")
            if who == "unlearned − baseline":
                u, b = inspection.lens_along("unlearned", token), inspection.lens_along("baseline", token)
                z = [[x - y for x, y in zip(ru, rb)] for ru, rb in zip(u, b)]
            else:
                z = inspection.lens_along(who, token)
            st.caption(f"The logit of {labels.get(token, token)} after each block at every position ({who}); "
                       "blue below zero. The outline is the selected position.")
            heatmap(heatmap_data(z, tokens, pos, "logit", f"logit-lens logit of {labels.get(token, token)} ({who}), "
                                 "blocks x positions"), key="inspect_lens_along_map")


DRAWN: dict = {}  # what the fragment drew in this script run (a whole-page run draws it first)
position_view()
if "inspection" not in DRAWN:  # its error is on screen
    st.stop()
inspection, alpha = DRAWN["inspection"], DRAWN["alpha"]

# -- the translated prompt (drawn with the page, not with each click) ----------------------------------
st.subheader("Translation and alignment")
terms = [vars(o) for o in inspection.translation.occurrences]
if not terms:
    st.caption("No anchored term in this prompt: the baseline reads it unchanged"
               + ("" if anchors else " (translation is off)") + ".")
else:
    st.caption(" · ".join(f"{t['term']} → {t['translation']}" for t in terms))
    st.html(anchor_views.alignment_html(inspection.tokens, inspection.translated_tokens,
                                        inspection.translation.mapping, terms))

# -- side-by-side completions ----------------------------------------------------------------------
st.subheader("Completions")
g1, g2, g3, g4 = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
max_new = int(g1.number_input("New tokens", 1, 200, 20, key="inspect_new_tokens"))
temperature = float(g2.number_input("Temperature", 0.0, 2.0, 0.0, 0.1, key="inspect_temperature",
                                    help="0 = greedy. Generic is always greedy."))
seed = int(g3.number_input("Seed", 0, 2**31 - 1, 0, key="inspect_seed"))
key = (ctx.model_key, ctx.adapters_key, prompt, anchors.version() if anchors else "", alpha, max_new,
       temperature, seed)
models = [m for m in inspect_views.MODELS if m in ("baseline", "generic") or (m == "expert" and ctx.expert)
          or (m == "unlearned" and ctx.unlearned)]
cells = dict(zip(models, st.columns(len(models))))


def show_completion(m: str, text: str | None) -> None:
    cell = cells[m].empty()
    if text is None:
        cell.markdown(f"**{m}**  \n:gray[generating…]")
        return
    cell.markdown(f"**{m}**<div style='font-family:ui-monospace,monospace;font-size:0.9rem'>"
                  f"<span style='color:var(--obl-faint,#888)'>…{inspect_views.show(prompt[-40:])}</span>"
                  f"<b>{inspect_views.show(text)}</b></div>", unsafe_allow_html=True)


if g4.button("Complete the prompt with every model", key="inspect_complete"):
    out: dict[str, str] = {}
    slots = {m: cells[m].empty() for m in models}
    for m in models:
        slots[m].markdown(f"**{m}**  \n:gray[waiting…]")
    try:  # each model's continuation appears as soon as it is done
        for m, text in complete_all(wb, prompt, ctx.expert, ctx.unlearned, alpha, anchors, max_new, temperature, seed):
            out[m] = text
            slots[m].markdown(f"**{m}**<div style='font-family:ui-monospace,monospace;font-size:0.9rem'>"
                              f"<span style='color:var(--obl-faint,#888)'>…{inspect_views.show(prompt[-40:])}</span>"
                              f"<b>{inspect_views.show(text)}</b></div>", unsafe_allow_html=True)
        st.session_state["inspect_completions"] = (key, out)
    except UserError as e:
        st.error(str(e))
    except (MemoryError, RuntimeError) as e:
        if (err := as_user_error(e, "Generating")) is None:
            raise
        st.error(f"{err}.")
else:
    done = st.session_state.get("inspect_completions")
    if done:
        done_key, out = done
        if done_key != key:
            st.caption("Settings changed since these were generated: press the button again to refresh.")
        for m, text in out.items():
            if m in cells:
                show_completion(m, text)

with st.expander("What are baseline, expert, generic and unlearned?"):
    st.markdown(
        "- **baseline**: the model as loaded (it has read Harry Potter).\n"
        "- **expert**: the baseline fine-tuned *further* on the text to forget (the demo's, or one of "
        "your runs, in the sidebar). Where the expert is more confident than the baseline, the text is "
        "idiosyncratic.\n"
        "- **generic**: what a model that never read the text would predict. The baseline reads the "
        "prompt with its **anchored terms translated** (Hogwarts → Mystic Academy, see the Anchors "
        "page), and every token the expert likes more than the baseline is pushed down:  \n"
        "  `generic = baseline(translated) − alpha · relu(expert(original) − baseline(translated))`.  \n"
        "  Unlearning fine-tunes the model towards generic's top token (its *label*) at every position.\n"
        "- **unlearned**: a model after an unlearning run (Runs page), to check it now says what "
        "generic said.\n\n"
        "Click a token to see each model's top predictions after it; the strip's colours show where "
        "the models disagree. Moving **alpha** recomputes generic instantly, without running the model again."
    )
