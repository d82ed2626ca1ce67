"""The Anchors page through streamlit's AppTest, on the tiny model (its real tokenizer)."""
from __future__ import annotations

import json

import pytest

from conftest import open_page

EDITOR = "anchors_editor_1"  # the first load of a session is generation 1


@pytest.fixture()
def anchors_file(app_env, monkeypatch, tmp_path):
    path = tmp_path / "anchors.json"
    path.write_text(json.dumps({"Harry": ["Jon", "Ben"], "Hogwarts": ["Mystic Academy"], "Ron": "Mark"}))
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(path))
    return path


def _app():
    return open_page("anchors", timeout=60)


def _edit(at, edited_rows=None, added_rows=None, deleted_rows=None):
    at.session_state[EDITOR] = {"edited_rows": edited_rows or {}, "added_rows": added_rows or [],
                                "deleted_rows": deleted_rows or []}
    return at.run()


def test_renders_rows_preview_and_coverage(anchors_file):
    at = _app()
    assert [t.value for t in at.main.title] == ["Anchors"]
    editor = at.data_editor[0].value
    assert editor["term"].tolist() == ["Harry", "Hogwarts", "Ron"]
    assert editor["candidates"].tolist() == ["Jon | Ben", "Mystic Academy", "Mark"]
    assert any("No unsaved changes" in c.value for c in at.caption)
    # The preview translates the demo corpus and lists names the dictionary lacks.
    align = [h.value for h in at.html if "obl-align" in h.value]
    assert align and "Mystic Academy" in align[0]
    uncovered = [d.value for d in at.dataframe if "word" in d.value.columns][0]
    assert "Hermione" in uncovered["word"].tolist()  # in the corpus, not in this 3-term dictionary
    assert "Save" in [b.label for b in at.button] and at.button(key="anchors_save").disabled


def test_edit_shows_diff_and_save_writes_atomically_with_backup(anchors_file):
    before = anchors_file.read_text()
    at = _app()
    at = _edit(at, edited_rows={1: {"candidates": "Arcane College | Mystic Academy"}},
               added_rows=[{"term": "Quidditch", "candidates": "Skyball", "enabled": True}])
    assert not at.exception, at.exception
    diff = [d.value for d in at.dataframe if "change" in d.value.columns][0]
    assert sorted(diff["change"]) == ["added", "changed"]
    assert anchors_file.read_text() == before, "nothing is written before Save"

    at.button(key="anchors_save").click().run()
    assert not at.exception, at.exception
    saved = json.loads(anchors_file.read_text())
    assert saved["Hogwarts"] == ["Arcane College", "Mystic Academy"] and saved["Quidditch"] == ["Skyball"]
    assert (anchors_file.parent / "anchors.json.bak").read_text() == before
    assert any("Saved 4 terms" in s.value for s in at.success)
    # The editor now starts from the saved file, and a second edit on top of it is kept too.
    assert at.data_editor[0].value["term"].tolist() == ["Harry", "Hogwarts", "Ron", "Quidditch"]
    at.session_state["anchors_editor_2"] = {"edited_rows": {0: {"enabled": False}}, "added_rows": [],
                                            "deleted_rows": []}
    at.run()
    at.button(key="anchors_save").click().run()
    assert json.loads(anchors_file.read_text())["Harry"] == {"translations": ["Jon", "Ben"], "enabled": False}


def test_invalid_edits_block_save_with_row_messages(anchors_file):
    before = anchors_file.read_text()
    at = _app()
    at = _edit(at, edited_rows={2: {"candidates": "Ron"}}, added_rows=[{"term": "Snape", "candidates": ""}])
    assert not at.exception, at.exception
    problems = [d.value for d in at.dataframe if "problem" in d.value.columns][0]
    if hasattr(problems, "data"):  # a Styler (the rows are highlighted)
        problems = problems.data
    assert set(problems["term"]) == {"Ron", "Snape"}
    assert "translation equals the term" in problems["problem"].tolist()
    assert sorted(problems["row"]) == ["3", "4"], "problems point at the editor's row numbers"
    assert "None" not in problems.astype(str).to_numpy().ravel().tolist(), "empty cells are blank, not None"
    assert at.button(key="anchors_save").disabled
    assert anchors_file.read_text() == before


def test_import_merges_by_default_and_replace_says_what_it_removes(anchors_file):
    before = anchors_file.read_text()
    at = _app()
    at.file_uploader(key="anchors_upload").upload("anchors.json", b"\xff\xfe\x00bad", "application/json").run()
    at.button(key="anchors_import").click().run()
    assert not at.exception, at.exception
    assert any("not UTF-8" in e.value for e in at.error)
    assert anchors_file.read_text() == before

    csv = "term,translation\nDumbledore,Whitfield\nDumbledore,Ashworth\nHarry,Tom\n".encode()
    at.file_uploader(key="anchors_upload").upload("new.csv", csv, "text/csv").run()
    assert at.radio(key="anchors_import_mode").value == "merge"
    at.button(key="anchors_import").click().run()
    assert not at.exception, at.exception
    editor = at.data_editor[0].value
    assert editor["term"].tolist() == ["Harry", "Hogwarts", "Ron", "Dumbledore"]
    assert editor["candidates"].tolist() == ["Jon | Ben | Tom", "Mystic Academy", "Mark", "Whitfield | Ashworth"]
    assert any("1 new term; 1 existing term gained candidates (Harry + Tom); 2 already there" in s.value
               for s in at.success)
    assert anchors_file.read_text() == before, "an import is not saved until Save"

    at.radio(key="anchors_import_mode").set_value("replace").run()
    assert any("it removes 2 of the editor's 4 terms" in w.value for w in at.warning)  # Hogwarts, Ron
    at.button(key="anchors_import").click().run()
    assert at.data_editor[0].value["term"].tolist() == ["Dumbledore", "Harry"]
    assert any("1 changed; 2 removed; 1 already there, unchanged" in s.value for s in at.success)


def test_discard_changes_goes_back_to_the_saved_file(anchors_file):
    at = _app()
    at = _edit(at, added_rows=[{"term": "Quidditch", "candidates": "Skyball", "enabled": True}])
    assert any("1 unsaved change" in i.value for i in at.info)
    at.button(key="anchors_discard").click().run()
    assert at.data_editor[0].value["term"].tolist() == ["Harry", "Hogwarts", "Ron"]
    assert any("No unsaved changes" in c.value for c in at.caption)


def test_case_variants_are_resolved_in_one_click(anchors_file):
    at = _app()
    paper = {"Muggle": ["Commoner"], "muggle": ["outsider"], "Invisibility Cloak": ["Shadow Cape"],
             "invisibility cloak": ["vanishing shawl"]}
    at.file_uploader(key="anchors_upload").upload("paper.json", json.dumps(paper).encode(), "application/json").run()
    at.radio(key="anchors_import_mode").set_value("replace").run()
    at.button(key="anchors_import").click().run()
    problems = [d.value for d in at.dataframe if "problem" in getattr(d.value, "data", d.value).columns]
    assert len(problems) == 1 and at.button(key="anchors_save").disabled
    at.button(key="anchors_resolve").click().run()
    assert not at.exception, at.exception
    editor = at.data_editor[0].value
    assert editor["term"].tolist() == ["muggle", "Invisibility Cloak", "invisibility cloak"]
    assert editor["candidates"].tolist()[0] == "outsider | commoner"
    flash = next(s.value for s in at.success if s.value.startswith("Resolved case variants"))
    assert "folded into 'muggle'" in flash and "separate terms" in flash
    assert not at.button(key="anchors_save").disabled


def test_unreadable_saved_file_keeps_the_app_running(anchors_file):
    anchors_file.write_text("{not json")
    at = _app()
    assert any("not valid JSON" in e.value for e in at.error)
    assert anchors_file.read_text() == "{not json"


def test_coverage_in_the_engine_and_the_cli(tmp_path, tokenizer):
    """The preview's lists, without the UI: unused terms, and mid-sentence names with no entry."""
    from conftest import run_cli
    from engine.anchors import AnchorDictionary
    from engine.coverage import coverage
    from engine.translation import Translator

    anchors = AnchorDictionary({"Harry": ["Jon"], "Hogwarts": ["Mystic Academy"], "Quidditch": ["Skyball"]})
    text = ("Harry met Neville at Hogwarts. Then Harry and Neville saw Luna. Later Neville and Luna left. "
            "Neville's toad was lost.")
    cov = coverage(anchors, text, Translator(tokenizer, anchors).translate_text(text))
    assert cov.unused_terms == ["Quidditch"]
    words = {w: c for w, c, _ in cov.uncovered}
    assert words == {"Neville": 3, "Luna": 2}  # sentence starts ("Then", "Neville's toad") do not count
    path = tmp_path / "text.txt"
    path.write_text(text)
    dic = tmp_path / "a.json"
    dic.write_text(anchors.to_json())
    r = run_cli("translate", "--anchors", str(dic), "--text", str(path), "--coverage", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unused_terms"] == ["Quidditch"] and out["uncovered"][0]["word"] == "Neville"


def test_accepted_suggestions_land_in_the_editor_not_the_file(anchors_file, monkeypatch):
    """The suggest panel (app/suggest_panel.py, tested on its own) hands back a merged dictionary
    on the click that accepts rows; the page puts it in the editor and leaves Save to the user."""
    import app.suggest_panel
    from engine.anchors import AnchorDictionary

    clicks = []

    def panel(current, wb=None, expert=None, corpus="", key="suggest"):
        if clicks:
            return None
        clicks.append(len(current))
        return AnchorDictionary({**current.entries, "Quidditch": ["Skyball"]}, set(current.disabled))

    before = anchors_file.read_text()
    monkeypatch.setattr(app.suggest_panel, "render_suggest_panel", panel)
    at = _app()
    assert clicks == [3]
    assert at.data_editor[0].value["term"].tolist() == ["Harry", "Hogwarts", "Ron", "Quidditch"]
    assert any("Suggestions added to the editor: 1 new term; 3 already there, unchanged" in s.value
               for s in at.success)
    assert anchors_file.read_text() == before


def test_suggestions_already_in_the_dictionary_start_unticked():
    from app.suggest_panel import _store
    from engine.anchors import AnchorDictionary
    from engine.suggest import Suggestion, Suggestions
    import streamlit as st

    current = AnchorDictionary({"Weasley": ["Smith"]})
    result = Suggestions([Suggestion("Weasley", ["the dragon"], 1.0, 3), Suggestion("Quidditch", ["Skyball"], 1.0, 2),
                          Suggestion("Hedwig", [], 0.5, 1)])
    _store("t", result, "test", current)
    rows = {r["term"]: r for r in st.session_state["t_rows"]}
    assert rows["Weasley"]["accept"] is False and rows["Weasley"]["status"] == "in the dictionary, adds: the dragon"
    assert rows["Quidditch"]["accept"] is True and rows["Quidditch"]["status"] == "new"
    assert rows["Hedwig"]["accept"] is False  # no translation


def test_preview_of_a_short_text_and_add_uncovered_words_as_terms(anchors_file):
    at = _app()
    at.radio(key="anchors_preview_source").set_value("my own text").run()
    at.text_area(key="anchors_preview_text").input("Harry met Neville.").run()
    assert not at.exception, at.exception
    align = [h.value for h in at.html if "obl-align" in h.value]
    assert align and "met" in align[0] and "Hogwarts" not in align[0]
    at.text_area(key="anchors_preview_text").input("Then Harry met Neville and Luna at Hogwarts. Later Neville saw Luna.").run()
    uncovered = [d.value for d in at.dataframe if "word" in d.value.columns][0]
    assert uncovered["word"].tolist() == ["Neville", "Luna"]
    at.session_state["anchors_uncovered"] = {"selection": {"rows": [0, 1], "columns": []}}
    at.run()
    at.button(key="anchors_add_uncovered").click().run()
    assert not at.exception, at.exception
    editor = at.data_editor[0].value
    assert editor["term"].tolist()[-2:] == ["Neville", "Luna"] and editor["candidates"].tolist()[-2:] == ["", ""]


def test_the_grid_shows_the_row_numbers_its_problems_cite(app_env):
    """Streamlit hides a RangeIndex by default: the problems table says 'row 3' of a grid without numbers."""
    from conftest import open_page

    at = open_page("anchors")
    cols = json.loads(at.data_editor[0].proto.columns)
    assert cols["_index"]["hidden"] is False and cols["_index"]["label"] == "row"
    assert at.data_editor[0].value.index[0] == 1


def test_a_large_dictionary_previews_the_saved_file_until_asked_to_follow_edits(app_env, monkeypatch, tmp_path):
    """The preview re-translated the corpus after every cell edit (4 s at 2,500 terms): past 300 terms it
    shows the saved dictionary until Save, or until "Follow unsaved edits" is turned on."""
    from engine.translation import Translator

    path = tmp_path / "anchors.json"
    path.write_text(json.dumps({f"Wizard{i}": [f"Person{i}"] for i in range(400)} | {"Harry": ["Jon"]}))
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(path))
    calls = []
    original = Translator.translate_text
    monkeypatch.setattr(Translator, "translate_text", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    at = _app().run()
    assert not at.exception, at.exception
    live = at.toggle(key="anchors_preview_live")
    assert live.value is False
    n = len(calls)
    at = _edit(at, edited_rows={1: {"candidates": "Someone Else"}})
    assert not at.exception, at.exception
    assert len(calls) == n, "an edit does not re-translate a large dictionary's preview"
    assert any("shows the saved dictionary" in c.value for c in at.caption)
    at.toggle(key="anchors_preview_live").set_value(True).run()
    assert len(calls) == n + 1, "following the edits translates with them once"
