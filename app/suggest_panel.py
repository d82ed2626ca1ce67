"""The Anchors page's "suggest" panel: draft terms with an LLM or offline, review, add to the editor.

Layout only: the work is `engine.suggest.suggest_llm / suggest_offline / accept_rows` (also
`python -m engine anchors suggest`). Nothing here writes the saved dictionary: "Add accepted"
returns the merged dictionary to the page, which puts it in its editor, where Save is explicit.
The API key field lives in this browser session only (st.session_state, in memory); it is never
written, logged or shown again.
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.anchors import AnchorDictionary
from engine.boundary import allowed_endpoints, shown_url
from engine.errors import UserError
from engine.secrets import env_key_for
from engine.suggest import LLMConfig, Suggestions, accept_rows, suggest_llm, suggest_offline

COLUMNS = ["accept", "term", "translation", "status", "score", "count", "example", "source"]


def _store(key: str, result: Suggestions, what: str, current: AnchorDictionary) -> None:
    """The review rows, each marked against the dictionary: a term it already has is left unticked
    (ticking it adds only the candidates it lacks; nothing is ever replaced)."""
    rows = []
    for r in result.rows():
        cands = [c.strip() for c in str(r["translation"] or "").split("|") if c.strip()]
        status = current.status_of(r["term"], cands)
        rows.append({**r, "status": status, "accept": bool(r["accept"]) and status == "new"})
    st.session_state[f"{key}_rows"] = rows
    st.session_state[f"{key}_report"] = result.report
    st.session_state[f"{key}_failures"] = result.failures
    st.session_state[f"{key}_what"] = what
    st.session_state[f"{key}_gen"] = st.session_state.get(f"{key}_gen", 0) + 1


def _clear(key: str) -> None:
    for k in ("rows", "report", "failures", "what"):
        st.session_state.pop(f"{key}_{k}", None)


def _run(key: str, label: str, call, current: AnchorDictionary) -> None:
    """Run one suggestion with a progress bar; a UserError is shown and nothing changes."""
    with st.status(label, expanded=True) as status:
        bar = st.progress(0.0, text="starting…")

        def progress(done: int, total: int) -> None:
            bar.progress(done / max(total, 1), text=f"{done} of {total}")

        try:
            result = call(progress)
        except UserError as e:
            status.update(label=f"{label}: failed", state="error")
            st.error(f"{e}. Nothing was added.")
            return
        status.update(label=f"{label}: {len(result.items)} terms to review", state="complete", expanded=False)
    _store(key, result, label, current)


def render_suggest_panel(current: AnchorDictionary, wb=None, expert: str | None = None, corpus: str = "",
                         key: str = "suggest") -> AnchorDictionary | None:
    """Draw the panel; returns `current` merged with the accepted rows on the click that adds them, else None.

    current: the dictionary the accepted rows are merged into (the page's editor contents).
    wb: the loaded Workbench (offline route); None disables that route.
    expert: an adapter name loaded in `wb`; the offline route then ranks by baseline -> expert rise.
    corpus: the default text to read (e.g. the demo corpus); the user may upload another.
    """
    upload = st.file_uploader("Text to read (default: the demo corpus)", type=["txt", "md"], key=f"{key}_corpus",
                              help="UTF-8 plain text of what should be forgotten")
    text = corpus
    if upload is not None:
        try:
            text = upload.getvalue().decode("utf-8-sig")
        except UnicodeDecodeError:
            st.error(f"{upload.name} is not UTF-8 text: save it as UTF-8 and upload it again.")
            text = ""
    st.caption(f"{len(text.split()):,} words to read" + (f" from {upload.name}" if upload is not None else ""))

    llm_tab, offline_tab = st.tabs(["With an LLM", "Offline (no API)"])
    with llm_tab:
        c1, c2 = st.columns(2)
        endpoints = allowed_endpoints()  # the owner's list: a browser user cannot point the server at a new host
        base_url = c1.selectbox("Endpoint", endpoints, key=f"{key}_base_url", format_func=shown_url,
                                help="The OpenAI-compatible chat endpoints this server may call: OPENAI_BASE_URL "
                                     "(api.openai.com when unset) and those its owner lists in OBLIVIATE_ENDPOINTS "
                                     "(a local vLLM or llama.cpp server, say)")
        model = c2.text_input("Model", key=f"{key}_model", placeholder="gpt-4o-mini",
                              help="The chat model's name as the endpoint knows it")
        env_key = env_key_for(base_url) is not None  # the server's key goes only to the URL it was set up for
        api_key = c1.text_input("API key", type="password", key=f"{key}_api_key",
                                placeholder="from the server's OPENAI_API_KEY" if env_key
                                else "this endpoint's key (local servers often need none)",
                                help="Kept for this browser session only, in memory; never saved or logged. The "
                                     "server's own OPENAI_API_KEY is sent only to the endpoint it was configured "
                                     "for (OPENAI_BASE_URL, or api.openai.com).")
        chunk_words = c2.number_input("Words per request", 100, 8000, 800, step=100, key=f"{key}_chunk_words")
        concurrency = c2.number_input("Requests at once", 1, 16, 4, key=f"{key}_concurrency")
        if st.button("Suggest with an LLM", key=f"{key}_llm", type="primary", icon=":material/auto_awesome:",
                     disabled=not text.strip()):
            try:
                config = LLMConfig(base_url, model, chunk_words=int(chunk_words), concurrency=int(concurrency))
            except UserError as e:
                st.error(str(e))
            else:
                _run(key, f"Asking {model}", lambda p: suggest_llm(text, config, api_key=api_key or None, progress=p), current)
    with offline_tab:
        st.caption("Ranks the text's proper names by how improbable the baseline finds them"
                   + (" and how much the expert's log-likelihood rises on them" if expert else "")
                   + "; translations are the baseline's few-shot guesses, marked offline: check them.")
        top_k = st.number_input("Terms to suggest", 5, 500, 60, step=5, key=f"{key}_top_k")
        if wb is None:
            st.info("Load a model in the sidebar to suggest offline.")
        elif st.button("Suggest offline", key=f"{key}_offline", icon=":material/memory:", disabled=not text.strip()):
            _run(key, f"Reading with {wb.name}" + (" and the expert" if expert else ""),
                 lambda p: suggest_offline(wb, text, expert=expert, top_k=int(top_k), progress=p), current)

    for note in st.session_state.pop(f"{key}_notes", []):
        st.info(note)
    rows = st.session_state.get(f"{key}_rows")
    if rows is None:
        return None

    # -- review ---------------------------------------------------------------------------------------
    known = sum(r.get("status", "new") != "new" for r in rows)
    st.markdown(f"**Review** ({len(rows)} suggestions from {st.session_state[f'{key}_what']}): tick the rows "
                "to add, edit translations (`|` between candidates); nothing is saved until you Save above."
                + (f" {known} are already in the dictionary (see *status*) and start unticked: ticking one "
                   "adds only the candidates it lacks, never replaces them." if known else ""))
    for f in st.session_state.get(f"{key}_failures", []):
        st.warning(f"Skipped {f}")
    if report := st.session_state.get(f"{key}_report"):
        with st.expander(f"Consolidation dropped {len(report)} term(s)"):
            st.markdown("\n".join(f"- {r}" for r in report))
    a1, a2, _ = st.columns([1, 1, 4])
    if a1.button("Accept all new", key=f"{key}_all", help="Tick every row whose term is not in the dictionary yet"):
        st.session_state[f"{key}_rows"] = [{**r, "accept": r.get("status", "new") == "new"} for r in rows]
        st.session_state[f"{key}_gen"] += 1
        st.rerun()
    if a2.button("Reject all", key=f"{key}_none"):
        st.session_state[f"{key}_rows"] = [{**r, "accept": False} for r in rows]
        st.session_state[f"{key}_gen"] += 1
        st.rerun()
    edited = st.data_editor(
        pd.DataFrame(rows, columns=COLUMNS), key=f"{key}_editor_{st.session_state[f'{key}_gen']}",
        hide_index=True, width="stretch", height=360, disabled=["status", "score", "count", "example", "source"],
        column_config={
            "accept": st.column_config.CheckboxColumn("add", help="Add this row to the dictionary"),
            "term": st.column_config.TextColumn("term", help="As written in the text"),
            "translation": st.column_config.TextColumn(
                "translation", width="medium", help="Generic stand-ins separated by |; blank rows are not added"),
            "status": st.column_config.TextColumn("status", help="new, or already in the dictionary (and what "
                                                                  "ticking it would add)"),
            "score": st.column_config.NumberColumn("score", format="%.2f",
                                                   help="LLM: chunks naming it; offline: surprisal or rise x log count"),
            "count": st.column_config.NumberColumn("count", help="Occurrences in the text"),
            "example": st.column_config.TextColumn("example", width="large"),
            "source": st.column_config.TextColumn("source", help="llm, or offline (the baseline's guess)"),
        })
    chosen = edited[edited["accept"]].to_dict("records")
    b1, b2, _ = st.columns([2, 1, 3])
    add = b1.button(f"Add {len(chosen)} accepted to dictionary", key=f"{key}_add", type="primary",
                    disabled=not chosen)
    if b2.button("Discard suggestions", key=f"{key}_discard"):
        _clear(key)
        st.rerun()
    if not add:
        return None
    merged, skipped = accept_rows(chosen, current)
    _clear(key)
    st.session_state[f"{key}_notes"] = [f"Not added: {s}" for s in skipped]  # the page says what was added
    return merged
