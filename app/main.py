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

import streamlit as st  # noqa: E402  (engine and app are installed by `make setup`: pip install -e .)

from app import state  # noqa: E402
from engine.config import PRECISIONS  # noqa: E402
from engine.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Whatever config the server was started with: error details never reach a browser user.
st.set_option("client.showErrorDetails", "none")
st.set_page_config(page_title="Obliviate", page_icon=":material/auto_fix_high:", layout="wide")

PAGES = [  # (file, title, icon)
    ("inspect.py", "Inspect", ":material/search:"),
    ("anchors.py", "Anchors", ":material/translate:"),
    ("runs.py", "Runs", ":material/model_training:"),
    ("evaluate.py", "Evaluate", ":material/analytics:"),
]


def adapter_picker(kind: str, label: str, help: str) -> str | None:
    """none / a run's adapter / a typed path -> the chosen directory or None."""
    options = [state.NONE, *state.run_adapters(kind), state.PATH]
    if st.session_state.get(kind) not in options:
        st.session_state[kind] = state.NONE  # a run was deleted since, or first run
    choice = st.selectbox(label, options, key=kind, format_func=state.adapter_label, help=help)
    if choice == state.PATH:
        path = st.text_input(f"{label} directory", key=f"{kind}_path",
                             placeholder="/path/to/adapter (adapter_config.json inside)")
        return path.strip() or None
    return None if choice == state.NONE else choice


def sidebar() -> state.Context:
    state.apply_pending()
    st.sidebar.title("Obliviate")
    st.sidebar.caption("Who's Harry Potter? approximate unlearning, one token at a time.")
    with st.sidebar:
        st.subheader("Model", divider="gray")
        model = st.text_input(
            "Base model", value=state.default_model(), key=state.MODEL,
            help="`embedded` = SmolLM2-135M-Instruct, shipped with Obliviate. Or a local directory "
                 "or a Hugging Face hub id of a causal LM (safetensors).")
        c1, c2 = st.columns(2)
        precision = c1.selectbox("Precision", PRECISIONS, key=state.PRECISION,
                                 help="auto: NF4 on a GPU for models over 1B parameters, bf16 on a "
                                      "smaller GPU model, fp32 on the CPU. nf4 and int8 also run on the "
                                      "CPU (bitsandbytes), about 5x slower than fp32: for checking the "
                                      "4-bit path, not for speed.")
        device = c2.selectbox("Device", ("auto", "cpu", "cuda"), key=state.DEVICE)
        model_key = f"{model.strip()}|{precision}|{device}"
        wb, error = None, None
        try:
            wb = state.load_workbench(model.strip(), precision, device)
        except UserError as e:
            error = str(e)
            st.error(f"{e}. Fix the model name or path above (`embedded` always works).")
        if wb is not None:
            mem = wb.memory()
            extra = f" · CUDA {mem['cuda_allocated_mib']:.0f} MiB" if "cuda_allocated_mib" in mem else ""
            st.caption(f"**{wb.name}** · {wb.precision} on {wb.device.type} · "
                       f"{mem['parameters_mib']:.0f} MiB of weights{extra} · "
                       f"{len(wb.adapters)} adapter(s) loaded")
            if wb.device.type == "cpu" and wb.precision in ("nf4", "int8"):
                st.caption(f"{wb.precision} on the CPU works but is slow (about 5x fp32): choose fp32 "
                           "here for speed.")

        st.subheader("Compare", divider="gray")
        expert_dir = adapter_picker(
            "expert", "Expert",
            "The baseline reinforced on the target text (a LoRA adapter from a run's "
            "adapters/expert, or any adapter directory). Its logits rise where the text is idiosyncratic.")
        unlearned_dir = adapter_picker(
            "unlearned", "Unlearned",
            "A model after an unlearning run (its adapters/unlearned), shown next to the others.")
        alpha = st.slider(
            "alpha", 0.0, 20.0, 5.0, 0.5, key=state.ALPHA,
            help="generic = baseline(translated) − alpha · relu(expert − baseline(translated)). "
                 "The paper used 5. Changing it never runs the model again.")
        expert = unlearned = None
        if wb is not None:
            try:
                expert = state.ensure_adapter(wb, "expert", expert_dir) if expert_dir else None
                unlearned = state.ensure_adapter(wb, "unlearned", unlearned_dir) if unlearned_dir else None
            except UserError as e:
                st.error(f"{e}. Pick another adapter, or none.")
        adapters_key = f"{expert}|{unlearned}"
    return state.Context(wb, model_key, expert, unlearned, adapters_key, float(alpha), error)


def main() -> None:
    pages = [st.Page(str(ROOT / "pages" / f), title=t, icon=i, default=(f == "inspect.py"))
             for f, t, i in PAGES if (ROOT / "pages" / f).exists()]
    nav = st.navigation(pages)
    state.set_context(sidebar())
    nav.run()


main()
