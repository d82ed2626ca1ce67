"""Anchors: edit the anchored-terms dictionary, see its diff and problems, save, import/export, preview.

The editor's input frame lives in session state and is replaced only on load, import, consolidate
or save (each bumps the editor's key); edits are read from the editor's return value, never fed back
as its input (that loses every second edit).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import state, widgets
from app.suggest_panel import render_suggest_panel
from engine.anchors import AnchorDictionary, save_anchors
from engine.coverage import coverage
from engine.errors import UserError
from engine.translation import Translator

ctx = state.context()
BASE, GEN, FLASH = "anchors_base", "anchors_gen", "anchors_flash"

st.title("Anchors")
st.caption("The anchored-terms dictionary: idiosyncratic expressions of the text to forget, each with "
           "generic stand-ins (Hogwarts → Mystic Academy). Generic predictions read the prompt with "
           "these translated, so the baseline answers as if the story were a different one.")

path = state.anchors_path()
try:
    saved = state.saved_anchors()
    saved_version = saved.version()
except UserError as e:
    st.error(f"{e}. Fix the file by hand, restore {path.name}.bak next to it, or import a dictionary "
             "below and Save (the broken file is kept as the backup).")
    saved, saved_version = AnchorDictionary(), "unreadable"


def load_into_editor(rows: list[dict], source: str) -> None:
    st.session_state[BASE] = {"rows": rows, "source": source, "saved_version": saved_version}
    st.session_state[GEN] = st.session_state.get(GEN, 0) + 1


base = st.session_state.get(BASE)
if base is None or (base["source"] == "saved" and base["saved_version"] != saved_version):
    # First visit, or another tab saved a new version while this one had no import pending.
    load_into_editor(widgets.anchor_rows(saved.entries, saved.disabled), "saved")
    base = st.session_state[BASE]

if flash := st.session_state.pop(FLASH, None):
    st.success(flash)
st.caption(f"Editing `{path}`" + ("" if base["source"] == "saved" else f" · loaded from **{base['source']}**, "
                                  "not saved yet"))

# -- the editor ------------------------------------------------------------------------------------
edited_df = st.data_editor(
    pd.DataFrame(base["rows"], columns=["term", "candidates", "enabled"]),
    key=f"anchors_editor_{st.session_state[GEN]}", num_rows="dynamic", hide_index=True, width="stretch",
    height=420,
    column_config={
        "term": st.column_config.TextColumn("term", help="As written in the text, e.g. Hogwarts"),
        "candidates": st.column_config.TextColumn(
            "candidates", width="large",
            help="Generic translations separated by |; one is picked per training block"),
        "enabled": st.column_config.CheckboxColumn("enabled", default=True,
                                                   help="Disabled terms stay in the file but are not translated"),
    })
rows = edited_df.to_dict("records")
entries, disabled, row_problems = widgets.rows_to_entries(rows)
edited = AnchorDictionary(entries, disabled)
row_of = {r.get("term"): n for n, r in enumerate(rows, start=1)}
problems = [{"row": None, "term": "", "problem": p} for p in row_problems]
problems += [{"row": row_of.get(p.term), "term": p.term, "problem": p.message} for p in edited.validate()]
changes = widgets.diff((saved.entries, saved.disabled), (entries, disabled))

left, right = st.columns([2, 3])
with left:
    st.markdown(f"**{len(entries)} terms**, {len(entries) - len(disabled & set(entries))} enabled, "
                f"{sum(len(c) > 1 for c in entries.values())} with several candidates")
    b1, b2 = st.columns(2)
    save = b1.button("Save", type="primary", key="anchors_save", disabled=not changes or bool(problems),
                     help="Atomic write; the previous version is kept as a .bak file")
    consolidate = b2.button("Consolidate", key="anchors_consolidate",
                            help="Drop X's when X is a term, and multi-word terms whose words are all terms")
with right:
    if problems:
        st.error(f"{len(problems)} problem(s) to fix before saving:")
        st.dataframe(pd.DataFrame(problems), hide_index=True, width="stretch", key="anchors_problems")
    elif changes:
        st.info(f"{len(changes)} unsaved change(s):")
    else:
        st.caption("No unsaved changes.")
    if changes:
        st.dataframe(pd.DataFrame(changes), hide_index=True, width="stretch", key="anchors_diff")

if save:
    try:
        save_anchors(edited, path)
    except UserError as e:
        st.error(f"Not saved: {e}")
    except OSError as e:
        st.error(f"Not saved: cannot write {path}: {e.strerror}")
    except UnicodeDecodeError:
        st.error(f"Not saved: the file on disk is not UTF-8, so it cannot be kept as the backup; move {path} "
                 "away and Save again.")
    else:
        st.session_state[FLASH] = f"Saved {len(entries)} terms to {path} (previous version kept as {path.name}.bak)."
        st.session_state.pop(BASE, None)  # reloads from the file just written
        st.rerun()
if consolidate:
    if problems:
        st.error("Fix the problems first: consolidation works on a valid dictionary.")
    else:
        merged, report = edited.consolidate()
        load_into_editor(widgets.anchor_rows(merged.entries, merged.disabled), "consolidation")
        st.session_state[FLASH] = ("Consolidated: " + "; ".join(report)) if report else "Nothing to consolidate."
        st.rerun()

# -- import / export -------------------------------------------------------------------------------
with st.expander("Import and export"):
    i1, i2 = st.columns(2)
    with i1:
        upload = st.file_uploader("Import a dictionary (.json or .csv)", type=["json", "csv"], key="anchors_upload",
                                  help='JSON {"term": ["candidate", ...]} or CSV rows term,translation')
        if upload is not None and st.button("Replace the editor's contents with this file", key="anchors_import"):
            try:
                imported = AnchorDictionary.from_bytes(upload.getvalue(), upload.name)
            except UserError as e:
                st.error(f"{e}. Nothing was changed.")
            else:
                load_into_editor(widgets.anchor_rows(imported.entries, imported.disabled), upload.name)
                st.session_state[FLASH] = (f"Loaded {len(imported)} terms from {upload.name}: review, then Save "
                                           "(the saved file is untouched until then).")
                st.rerun()
    with i2:
        st.markdown("Export the editor's current contents")
        st.download_button("anchors.json", edited.to_json(), "anchors.json", "application/json",
                           key="anchors_export_json", icon=":material/download:")
        st.download_button("anchors.csv", edited.to_csv(), "anchors.csv", "text/csv",
                           key="anchors_export_csv", icon=":material/download:")

with st.expander("Suggest terms (an LLM, or offline from the models)"):
    merged = render_suggest_panel(edited, ctx.wb, ctx.expert, state.demo_corpus())
    if merged is not None:
        added = len(merged) - len(edited)
        load_into_editor(widgets.anchor_rows(merged.entries, merged.disabled), "suggestions")
        st.session_state[FLASH] = f"Added {added} suggested term(s) to the editor: review, then Save."
        st.rerun()

# -- preview ---------------------------------------------------------------------------------------
st.subheader("Preview")
if ctx.wb is None:
    st.info("Load a model in the sidebar to preview translations (they use its tokenizer).")
    st.stop()
if problems:
    st.caption("The preview uses the saved dictionary until the editor's problems are fixed.")
preview_dict = saved if problems else edited
p1, p2, p3 = st.columns([2, 1, 1])
source = p1.radio("Passage", ["demo corpus", "my own text"], horizontal=True, key="anchors_preview_source")
seed = int(p2.number_input("Seed", 0, 10_000, 0, key="anchors_preview_seed",
                           help="Which candidate each term gets (one per term per block)"))
if source == "demo corpus":
    text = state.demo_corpus()
    if not text:
        st.info("assets/demo_corpus.txt is missing; paste your own text.")
        st.stop()
else:
    text = st.text_area("Text", key="anchors_preview_text", height=150,
                        placeholder="Harry walked into Hogwarts with Ron and Hermione.")
    if not text.strip():
        st.stop()


@st.cache_resource(max_entries=4, show_spinner="Translating…")
def _translate(model_key: str, version: str, text: str, seed: int, _tok, _anchors):
    return Translator(_tok, _anchors).translate_text(text, seed)


tok = ctx.wb.tokenizer
tr = _translate(ctx.model_key, preview_dict.version(), text, seed, tok, preview_dict)
shown = int(p3.number_input("Tokens shown", 50, max(50, len(tr.original_ids)), min(400, len(tr.original_ids)),
                            step=50, key="anchors_preview_tokens"))
st.caption(f"{len(tr.occurrences)} anchored-term occurrences · {len(tr.dropped)} of {len(tr.mapping)} positions "
           f"dropped (no generic label) · {len(tr.original_ids)} → {len(tr.translated_ids)} tokens")
terms = [vars(o) for o in tr.occurrences if o.start < shown]
st.html(widgets.alignment_html([tok.decode([i]) for i in tr.original_ids],
                               [tok.decode([i]) for i in tr.translated_ids], tr.mapping, terms, limit=shown))

cov = coverage(preview_dict, text, tr)
c1, c2 = st.columns(2)
with c1:
    st.markdown(f"**Terms that never occur in this text** ({len(cov.unused_terms)})")
    st.caption(", ".join(cov.unused_terms) if cov.unused_terms else "Every enabled term occurs.")
with c2:
    st.markdown(f"**Capitalised words with no entry** ({len(cov.uncovered)})")
    if cov.uncovered:
        st.dataframe(pd.DataFrame(cov.uncovered, columns=["word", "count", "example"]), hide_index=True,
                     width="stretch", height=240, key="anchors_uncovered")
    else:
        st.caption("None: every mid-sentence capitalised word is covered.")
