"""Anchors: edit the anchored-terms dictionary, see its diff and problems, save, import/export, preview.

The editor's input frame lives in session state and is replaced only on load, import, consolidate,
resolve, discard or save (each bumps the editor's key); edits are read from the editor's return
value, never fed back as its input (that loses every second edit). Merges never overwrite: an
import merges by default (replace says how many terms it removes), suggestions mark the terms
already there, and every change is reported (engine.anchors: merged_with, replaced_by, changes).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from app import anchor_views, state
from app.suggest_panel import render_suggest_panel
from engine.anchors import AnchorDictionary, changes, save_anchors
from engine.coverage import coverage
from engine.errors import UserError
from engine.translation import Translator

ctx = state.context()
BASE, GEN, FLASH = "anchors_base", "anchors_gen", "anchors_flash"
PENDING = "anchors_pending_terms"  # words sent by "add as term" (Inspect, the coverage list)

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


def dictionary_rows(d: AnchorDictionary) -> list[dict]:
    return anchor_views.anchor_rows(d.entries, d.disabled)


base = st.session_state.get(BASE)
if base is None or (base["source"] == "saved" and base["saved_version"] != saved_version):
    # First visit, or another tab saved a new version while this one had no import pending.
    load_into_editor(dictionary_rows(saved), "saved")
    base = st.session_state[BASE]
if pending := st.session_state.pop(PENDING, None):  # "add as term": appended rows, the user types the translation
    have = {r["term"] for r in base["rows"]}
    new = [w for w in dict.fromkeys(pending) if w not in have]
    if new:
        load_into_editor(base["rows"] + [{"term": w, "candidates": "", "enabled": True} for w in new],
                         "added terms" if base["source"] == "saved" else base["source"])
        base = st.session_state[BASE]
        st.session_state[FLASH] = (f"Added {', '.join(map(repr, new))} to the editor: type the generic "
                                   "translation(s) in its candidates cell, then Save.")
    else:
        st.session_state[FLASH] = f"{', '.join(map(repr, pending))} is already in the dictionary."

if flash := st.session_state.pop(FLASH, None):
    st.success(flash)
st.caption(f"Editing `{path}`" + ("" if base["source"] == "saved" else f" · loaded from **{base['source']}**, "
                                  "not saved yet"))

# -- the editor ------------------------------------------------------------------------------------
frame = pd.DataFrame(base["rows"], columns=["term", "candidates", "enabled"])
frame.index = pd.RangeIndex(1, len(frame) + 1)  # row numbers the problems below point at
edited_df = st.data_editor(
    frame, key=f"anchors_editor_{st.session_state[GEN]}", num_rows="dynamic", width="stretch", height=420,
    hide_index=False,  # Streamlit hides a RangeIndex by default: the row numbers every problem cites
    column_config={
        "_index": st.column_config.NumberColumn("row", width="small", help="The row number problems refer to"),
        "term": st.column_config.TextColumn("term", default="", help="As written in the text, e.g. Hogwarts"),
        "candidates": st.column_config.TextColumn(
            "candidates", width="large", default="",
            help="Generic translations separated by |; one is picked per training block"),
        "enabled": st.column_config.CheckboxColumn("enabled", default=True,
                                                   help="Disabled terms stay in the file but are not translated"),
    })
rows = edited_df.to_dict("records")
entries, disabled, row_problems = anchor_views.rows_to_entries(rows)
edited = AnchorDictionary(entries, disabled)
row_of = {r.get("term"): n for n, r in enumerate(rows, start=1)}
problems = [{"row": n, "term": t, "problem": msg} for n, t, msg in row_problems]
problems += [{"row": row_of.get(p.term), "term": p.term, "problem": p.message} for p in edited.validate()]
diff_rows = anchor_views.diff((saved.entries, saved.disabled), (entries, disabled))
collisions = edited.case_collisions()

left, right = st.columns([2, 3])
with left:
    st.markdown(f"**{len(entries)} terms**, {len(entries) - len(disabled & set(entries))} enabled, "
                f"{sum(len(c) > 1 for c in entries.values())} with several candidates")
    b1, b2, b3 = st.columns(3)
    save = b1.button("Save", type="primary", key="anchors_save", disabled=not diff_rows or bool(problems),
                     help="Atomic write; the previous version is kept as a .bak file")
    consolidate = b2.button("Consolidate", key="anchors_consolidate",
                            help="Drop X's when X is a term, and multi-word terms whose words are all terms")
    discard = b3.button("Discard changes", key="anchors_discard", disabled=not diff_rows and base["source"] == "saved",
                        help="Back to the saved file: every unsaved edit, import and suggestion is dropped")
    if collisions:
        resolve = st.button(f"Resolve {len(collisions)} case variant(s)", key="anchors_resolve",
                            icon=":material/merge:",
                            help="A lower-case term also matches its capitalised spelling ('muggle' matches "
                                 "'Muggle'), so the two entries collide: fold each capitalised spelling into its "
                                 "lower-case term with the candidates of both. Variants that differ beyond the "
                                 "first letter ('Invisibility Cloak' / 'invisibility cloak') match different "
                                 "text and stay separate terms.")
    else:
        resolve = False
with right:
    if problems:
        st.error(f"{len(problems)} problem(s) to fix before saving; the rows (numbered as in the editor):")
        shown = pd.DataFrame(problems)
        cands = {n: r.get("candidates") for n, r in enumerate(rows, start=1)}
        shown.insert(2, "candidates", [anchor_views.cell_text(cands.get(n)) for n in shown["row"]])
        shown["row"] = shown["row"].map(lambda n: "" if n is None or pd.isna(n) else str(int(n)))
        st.dataframe(shown.style.set_properties(**{"background-color": "#fef2f2"}), hide_index=True,
                     width="stretch", key="anchors_problems")
    elif diff_rows:
        st.info(f"{len(diff_rows)} unsaved change(s):")
    else:
        st.caption("No unsaved changes.")
    if diff_rows:
        st.dataframe(pd.DataFrame(diff_rows), hide_index=True, width="stretch", key="anchors_diff")

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
if discard:
    load_into_editor(dictionary_rows(saved), "saved")
    st.session_state[FLASH] = f"Discarded the unsaved changes: the editor holds the saved {len(saved)} terms again."
    st.rerun()
if resolve:
    resolved, report = edited.resolve_case_variants()
    load_into_editor(dictionary_rows(resolved), "case resolution")
    st.session_state[FLASH] = "Resolved case variants: " + "; ".join(report) + ". Review, then Save."
    st.rerun()
if consolidate:
    if problems:
        st.error("Fix the problems first: consolidation works on a valid dictionary.")
    else:
        merged, report = edited.consolidate()
        load_into_editor(dictionary_rows(merged), "consolidation")
        st.session_state[FLASH] = ("Consolidated: " + "; ".join(report)) if report else "Nothing to consolidate."
        st.rerun()

# -- import / export -------------------------------------------------------------------------------
with st.expander("Import and export"):
    i1, i2 = st.columns(2)
    with i1:
        upload = st.file_uploader("Import a dictionary (.json or .csv)", type=["json", "csv"], key="anchors_upload",
                                  help='JSON {"term": ["candidate", ...]} or CSV rows term,translation')
        imported, import_error = None, None
        if upload is not None:
            try:
                imported = AnchorDictionary.from_bytes(upload.getvalue(), upload.name)
            except UserError as e:
                import_error = f"{e}. Nothing was changed."
        mode = st.radio("How", ["merge", "replace"], horizontal=True, key="anchors_import_mode",
                        format_func={"merge": "Merge into the editor (keeps every term; known terms gain "
                                              "new candidates)", "replace": "Replace the editor's contents"}.get)
        if imported is not None and mode == "replace":
            removed = len(edited.replaced_by(imported).removed)
            if removed:
                st.warning(f"Replace keeps only the {len(imported)} terms of {upload.name}: it removes {removed} "
                           f"of the editor's {len(edited)} terms.")
        if upload is not None and st.button("Import", key="anchors_import", type="primary"):
            if import_error:
                st.error(import_error)
            elif mode == "replace":
                report = edited.replaced_by(imported)
                load_into_editor(dictionary_rows(imported), upload.name)
                st.session_state[FLASH] = (f"Replaced the editor's contents with {upload.name}: {report.summary()}. "
                                           "Review, then Save (the saved file is untouched until then).")
                st.rerun()
            else:
                merged, report = edited.merged_with(imported)
                load_into_editor(dictionary_rows(merged), f"{upload.name} (merged)")
                st.session_state[FLASH] = (f"Merged {upload.name} into the editor: {report.summary()}. Review, "
                                           "then Save (the saved file is untouched until then).")
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
        report = changes(edited, merged)
        load_into_editor(dictionary_rows(merged), "suggestions")
        st.session_state[FLASH] = f"Suggestions added to the editor: {report.summary()}. Review, then Save."
        st.rerun()

# -- preview ---------------------------------------------------------------------------------------
LIVE_PREVIEW_TERMS = 300  # past this many terms the preview waits for a Save (or the toggle)
st.subheader("Preview")
if ctx.wb is None:
    st.info("Load a model in the sidebar to preview translations (they use its tokenizer).")
    st.stop()
# A large dictionary re-translates for seconds (2,500 terms: ~4 s on the demo corpus): its preview follows
# the saved file unless asked to follow every edit; a small one follows every edit.
live = st.toggle("Follow unsaved edits", key="anchors_preview_live",
                 value=len(edited.entries) <= LIVE_PREVIEW_TERMS,
                 help=f"On: the preview re-translates after every edit in the grid. Off (the default past "
                      f"{LIVE_PREVIEW_TERMS} terms, where one translation takes seconds): it shows the saved "
                      "dictionary until you Save.")
if problems:
    st.caption("The preview uses the saved dictionary until the editor's problems are fixed.")
elif not live and edited.version() != saved.version():
    st.caption("The preview shows the saved dictionary: Save, or turn on *Follow unsaved edits*.")
preview_dict = saved if problems or not live else edited
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
n_tokens = max(1, len(tr.original_ids))
shown_tokens = int(p3.number_input("Tokens shown", 1, n_tokens, min(400, n_tokens), step=50,
                                   key=f"anchors_preview_tokens_{n_tokens}"))
st.caption(f"{len(tr.occurrences)} anchored-term occurrences · {len(tr.dropped)} of {len(tr.mapping)} positions "
           f"dropped (no generic label) · {len(tr.original_ids)} → {len(tr.translated_ids)} tokens")
terms = [vars(o) for o in tr.occurrences if o.start < shown_tokens]
st.html(anchor_views.alignment_html([tok.decode([i]) for i in tr.original_ids],
                               [tok.decode([i]) for i in tr.translated_ids], tr.mapping, terms, limit=shown_tokens))

cov = coverage(preview_dict, text, tr)
c1, c2 = st.columns(2)
with c1:
    st.markdown(f"**Terms that never occur in this text** ({len(cov.unused_terms)})")
    st.caption(", ".join(cov.unused_terms) if cov.unused_terms else "Every enabled term occurs.")
with c2:
    st.markdown(f"**Capitalised words with no entry** ({len(cov.uncovered)})")
    if cov.uncovered:
        picked = st.dataframe(pd.DataFrame(cov.uncovered, columns=["word", "count", "example"]), hide_index=True,
                              width="stretch", height=240, key="anchors_uncovered", on_select="rerun",
                              selection_mode="multi-row")
        chosen = [cov.uncovered[i][0] for i in picked.selection.rows]
        if st.button(f"Add {len(chosen)} selected as terms" if chosen else "Select rows to add them as terms",
                     key="anchors_add_uncovered", disabled=not chosen, icon=":material/add:"):
            st.session_state[PENDING] = chosen
            st.rerun()
    else:
        st.caption("None: every mid-sentence capitalised word is covered.")
