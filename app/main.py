"""Obliviate workbench: `streamlit run app/main.py` (or `make run`).

The entry point owns the sidebar (model panel) so its widgets keep their values on every page;
the pages in pages/ only lay out and call into the engine. A page appears when its file exists,
so pages written later plug in without touching this file.
"""
from __future__ import annotations

import os
from pathlib import Path

# Before torch loads (through engine): OpenMP threads that spin while waiting starve each other
# on a busy CPU. Measured on 2 shared cores: inspect of 67 tokens 5.7-19 s -> 1.4 s, and a new
# alpha's view 225 -> 40 ms. Idle machines lose nothing measurable.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# A browser user must not make the server call a new host: no hub downloads unless the machine's
# owner opts in (OBLIVIATE_HUB=on). Set before huggingface_hub reads it at import.
if os.environ.get("OBLIVIATE_HUB") != "on":  # engine.boundary.hub_allowed, read before torch loads
    os.environ["HF_HUB_OFFLINE"] = "1"

import streamlit as st  # noqa: E402  (engine and app are installed by `make setup`: pip install -e .)

ROOT = Path(__file__).resolve().parents[1]

# Whatever config the server was started with: error details never reach a browser user.
st.set_option("client.showErrorDetails", "none")
st.set_page_config(page_title="Obliviate", page_icon=":material/auto_fix_high:", layout="wide")
# Results above the fold at 1280 x 720: less of Streamlit's default top padding and title size.
st.html("<style>[data-testid='stMainBlockContainer']{padding-top:4rem;padding-bottom:3rem}"
        "h1{font-size:2.1rem !important;padding-top:0.2rem !important}</style>")
from app.inspect_views import theme_css  # noqa: E402  (pure: no torch)

st.html(theme_css(getattr(st.context.theme, "type", None)))  # the strip, tables and cards follow the theme

# The first script run imports torch and transformers (seconds) and loads the model: say so at once
# instead of a blank page. Cleared as soon as the sidebar has its model.
_booting = st.empty()
_booting.info("Starting the workbench: loading torch and the model (the first time takes about 10 s)…",
              icon=":material/hourglass_top:")

from app import state  # noqa: E402
from engine import jobs  # noqa: E402
from engine.sections import EMBEDDED_KEYS, PRECISIONS  # noqa: E402
from engine.errors import UserError  # noqa: E402

PAGES = [  # (file, title, icon)
    ("inspect.py", "Inspect", ":material/search:"),
    ("anchors.py", "Anchors", ":material/translate:"),
    ("runs.py", "Runs", ":material/model_training:"),
    ("evaluate.py", "Evaluate", ":material/analytics:"),
]


def _picked(kind: str) -> None:
    st.session_state[f"_picked_{kind}"] = True  # the user chose: the demo default no longer applies


def _unload(kind: str, name: str | None) -> None:
    """Unload a chosen adapter from the shared model (any tab that needs it again reloads it)."""
    st.session_state[kind] = state.NONE
    st.session_state[f"_picked_{kind}"] = True
    ctx = st.session_state.get("_context")
    if name and ctx is not None and ctx.wb is not None and name in ctx.wb.adapters:
        ctx.wb.remove_adapter(name)


def adapter_picker(kind: str, label: str, help: str, model: str) -> str | None:
    """none / a run's adapter (the demo's first) / a typed path -> the chosen directory or None."""
    options = [state.NONE, *state.run_adapters(kind, model), state.PATH]
    demo = state.demo_adapter(kind, model)
    if st.session_state.get(kind) not in options:
        st.session_state[kind] = state.NONE  # a run was deleted since, or first run
    if demo and demo in options and not st.session_state.get(f"_picked_{kind}") and st.session_state[kind] == state.NONE:
        st.session_state[kind] = demo  # the story on first open: the demo's expert and unlearned model
    choice = st.selectbox(label, options, key=kind, format_func=state.adapter_label, help=help,
                          on_change=_picked, args=(kind,))
    if choice == state.PATH:
        path = st.text_input(f"{label} directory", key=f"{kind}_path",
                             placeholder="/path/to/adapter (adapter_config.json inside)")
        return path.strip() or None
    return None if choice == state.NONE else choice


@st.fragment(run_every=3.0)
def demo_progress(model: str) -> None:
    """The demo run's progress while it builds; the whole app reruns once when it is done."""
    demo = jobs.find_demo(model)
    if demo is None or not demo.active:
        if demo is not None and st.session_state.pop("_demo_building", False):
            st.rerun()  # finished: the pickers select its adapters
        return
    st.session_state["_demo_building"] = True
    eta = jobs.eta_s(demo)
    left = f" · about {max(1, round(eta / 60))} min left" if eta else ""
    text = f"Building the demo adapters: {demo.phase or demo.state}" + (
        f" {demo.step}/{demo.total}" if demo.total else "") + left
    st.progress(min(demo.step / demo.total, 1.0) if demo.total else 0.0, text=text)


def demo_panel(model: str, wb) -> jobs.Status | None:
    """Start the demo run once for the embedded model (OBLIVIATE_DEMO=off: never), show its progress;
    for another model, offer to build it."""
    demo = jobs.find_demo(model)
    auto = model == "embedded" and os.environ.get("OBLIVIATE_DEMO", "on") != "off"
    try:
        if demo is None and auto:
            demo = jobs.launch_demo(model)
        if demo is not None and demo.active:
            demo_progress(model)
        elif demo is not None and demo.state != "finished":
            st.warning(f"The demo run {demo.state}: {demo.error or 'no adapters'}.")
            if st.button("Build the demo adapters again", key="demo_rebuild"):
                demo = jobs.launch_demo(model)
                st.rerun()
        elif demo is None and wb is not None:
            st.caption("No demo adapters for this model yet: the demo config (assets/demo.yaml) builds an "
                       "expert and an unlearned model in the background.")
            if st.button("Build the demo adapters", key="demo_build", icon=":material/play_arrow:"):
                demo = jobs.launch_demo(model)
                st.rerun()
    except UserError as e:
        st.error(str(e))
    return demo


def sidebar() -> state.Context:
    state.read_url()
    state.apply_pending()
    st.sidebar.title("Obliviate")
    st.sidebar.caption("Who's Harry Potter? approximate unlearning, one token at a time.")
    with st.sidebar:
        st.subheader("Model", divider="gray")
        if state.MODEL not in st.session_state:
            st.session_state[state.MODEL] = state.default_model()
        model = st.text_input(
            "Base model", key=state.MODEL,
            help="`embedded` = SmolLM2-135M-Instruct, shipped with Obliviate; `embedded:gemma3-270m` = Gemma 3 "
                 "270M (`make setup-gemma`). Or a local directory or a Hugging Face hub id of a causal LM "
                 "(safetensors).").strip()
        st.pills("Embedded", EMBEDDED_KEYS, key="model_pick", label_visibility="collapsed",
                 format_func=lambda k: {"embedded": "SmolLM2-135M", "embedded:gemma3-270m": "Gemma 3 270M"}.get(k, k),
                 on_change=lambda: st.session_state.update({state.MODEL: st.session_state["model_pick"]})
                 if st.session_state.get("model_pick") else None)
        c1, c2 = st.columns(2)
        precision = c1.selectbox("Precision", PRECISIONS, key=state.PRECISION,
                                 help="auto: NF4 on a GPU for models over 1B parameters, bf16 on a "
                                      "smaller GPU model, fp32 on the CPU. nf4 and int8 also run on the "
                                      "CPU (bitsandbytes), about 5x slower than fp32: for checking the "
                                      "4-bit path, not for speed.")
        device = c2.selectbox("Device", ("auto", "cpu", "cuda"), key=state.DEVICE)
        model_key = f"{model}|{precision}|{device}"
        wb, error = None, None
        try:
            wb = state.load_workbench(model, precision, device)
        except UserError as e:
            error = str(e)
            st.error(f"{e}. Fix the model name or path above (`embedded` always works).")
        _booting.empty()
        loaded_caption = st.empty()

        st.subheader("Compare", divider="gray")
        expert_dir = adapter_picker(
            "expert", "Expert",
            "The baseline reinforced on the target text (a LoRA adapter from a run's "
            "adapters/expert, or any adapter directory). Its logits rise where the text is idiosyncratic.", model)
        unlearned_dir = adapter_picker(
            "unlearned", "Unlearned",
            "A model after an unlearning run (its adapters/unlearned), shown next to the others.", model)
        demo = demo_panel(model, wb)
        expert = unlearned = None
        errors: list[str] = []
        if wb is not None:
            for kind, path in (("expert", expert_dir), ("unlearned", unlearned_dir)):
                if not path:
                    continue
                try:  # each on its own: a bad path never drops the other, valid adapter
                    name = state.ensure_adapter(wb, kind, path)
                except UserError as e:
                    errors.append(f"{e}. Pick another {kind} adapter, or none.")
                    st.error(errors[-1])
                    continue
                if kind == "expert":
                    expert = name
                else:
                    unlearned = name
            state.hold_adapters(wb, {n for n in (expert, unlearned) if n})
            loaded = [(k, n) for k, n in (("expert", expert), ("unlearned", unlearned)) if n]
            if loaded:
                cols = st.columns(len(loaded))
                for col, (kind, name) in zip(cols, loaded):
                    col.button(kind, key=f"unload_{kind}", on_click=_unload, args=(kind, name), width="stretch",
                               icon=":material/eject:", help=f"Unload the {kind}: set it to none and free its memory")
            mem = wb.memory()
            extra = f" · CUDA {mem['cuda_allocated_mib']:.0f} MiB" if "cuda_allocated_mib" in mem else ""
            loaded_caption.caption(f"**{wb.name}** · {wb.precision} on {wb.device.type} · "
                                   f"{mem['parameters_mib']:.0f} MiB of weights{extra} · "
                                   f"{len(wb.adapters)} adapter(s) loaded")
            if wb.device.type == "cpu" and wb.precision in ("nf4", "int8"):
                st.caption(f"{wb.precision} on the CPU works but is slow (about 5x fp32): choose fp32 "
                           "here for speed.")
        adapters_key = f"{expert}|{unlearned}"
    state.write_url(expert_dir, unlearned_dir)
    alpha = float(st.session_state.get(state.ALPHA, state.kept(state.ALPHA, state.DEFAULT_ALPHA)))
    return state.Context(wb, model_key, expert, unlearned, adapters_key, alpha, error, errors, demo)


def main() -> None:
    pages = [st.Page(str(ROOT / "pages" / f), title=t, icon=i, default=(f == "inspect.py"))
             for f, t, i in PAGES if (ROOT / "pages" / f).exists()]
    nav = st.navigation(pages)
    state.set_context(sidebar())
    nav.run()


main()
