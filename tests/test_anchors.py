import json

import pytest

from engine.anchors import AnchorDictionary, changes, load_anchors, save_anchors
from engine.errors import UserError


def messages(entries):
    return [str(p) for p in AnchorDictionary(entries).validate()]


def test_json_round_trip_with_bare_strings_and_disabled(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"Hogwarts": ["Mystic Academy", "Arcane College"], "Ron": "Mark",
                                "Snape": {"translations": ["Mr Grey"], "enabled": False}}))
    a = load_anchors(path)
    assert a.entries == {"Hogwarts": ["Mystic Academy", "Arcane College"], "Ron": ["Mark"], "Snape": ["Mr Grey"]}
    assert a.enabled.keys() == {"Hogwarts", "Ron"}
    save_anchors(a, path)
    assert load_anchors(path).entries == a.entries and load_anchors(path).disabled == {"Snape"}


def test_csv_merges_repeated_terms(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("term,translation\nHogwarts,Mystic Academy\nRon,Mark\nHogwarts,Arcane College\nRon,Mark\n")
    a = load_anchors(path)
    assert a.entries == {"Hogwarts": ["Mystic Academy", "Arcane College"], "Ron": ["Mark"]}
    save_anchors(a, tmp_path / "b.csv")
    assert load_anchors(tmp_path / "b.csv").entries == a.entries


@pytest.mark.parametrize("entries, expected", [
    ({"": ["x"]}, "empty term"),
    ({"Ron": [""]}, "empty translation"),
    ({"Ron": []}, "no translation"),
    ({"Ron": ["Ron"]}, "translation equals the term"),
    ({"Ron": [5]}, "is not text"),
    ({"Muggle": ["commoner"], "muggle": ["outsider"]}, "different case"),
])
def test_each_problem_is_named(entries, expected):
    msgs = messages(entries)
    assert len(msgs) == 1 and expected in msgs[0]


def test_same_term_different_case_consistent_is_fine():
    assert messages({"Muggle": ["Commoner"], "muggle": ["commoner"]}) == []


def test_unreadable_inputs_are_one_line_user_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "latin1.json").write_bytes('{"Caf\xe9": ["x"]}'.encode("latin-1"))
    for name, fragment in [("bad.json", "not valid JSON"), ("list.json", "must be a JSON object"),
                           ("latin1.json", "not UTF-8"), ("missing.json", "not found")]:
        with pytest.raises(UserError, match=fragment) as e:
            load_anchors(tmp_path / name)
        assert "\n" not in str(e.value)


def test_consolidation_drops_possessives_and_all_term_phrases():
    a = AnchorDictionary({"Harry": ["Jon"], "Potter": ["Smith"], "Harry Potter": ["Jon Smith"],
                          "Harry's": ["Jon's"], "Diagon Alley": ["Market Lane"], "Sirius's": ["x"]})
    b, report = a.consolidate()
    assert list(b.entries) == ["Harry", "Potter", "Diagon Alley", "Sirius's"]
    assert len(report) == 2 and any("possessive" in r for r in report) and any("every word" in r for r in report)


def test_save_is_refused_when_invalid_and_keeps_the_file(tmp_path):
    path = tmp_path / "a.json"
    save_anchors(AnchorDictionary({"Ron": ["Mark"]}), path)
    before = path.read_text()
    with pytest.raises(UserError):
        save_anchors(AnchorDictionary({"Ron": ["Ron"]}), path)
    assert path.read_text() == before


def test_save_keeps_a_backup_of_the_previous_version(tmp_path):
    path = tmp_path / "a.json"
    save_anchors(AnchorDictionary({"Ron": ["Mark"]}), path)
    save_anchors(AnchorDictionary({"Ron": ["Tom"]}), path)
    assert load_anchors(path).entries == {"Ron": ["Tom"]}
    assert load_anchors(tmp_path / "a.json.bak").entries == {"Ron": ["Mark"]}


def test_version_changes_with_content():
    assert AnchorDictionary({"Ron": ["Mark"]}).version() != AnchorDictionary({"Ron": ["Tom"]}).version()


# -- merges never overwrite (the Anchors page's imports and suggestions) --------------------------------
PAPER_LIKE = {
    "Invisibility Cloak": ["Shadow Cape"], "invisibility cloak": ["vanishing shawl"],
    "Muggle": ["Commoner"], "muggle": ["outsider", "commoner"], "Dark Lord": ["Shadow King"], "dark lord": ["tyrant"],
    "Harry": ["Jon"], "Quaffle": ["ball"], "quaffle": ["ball"],
}


def test_merge_keeps_every_term_and_only_adds_candidates():
    current = AnchorDictionary({"Weasley": ["Smith"], "Hogwarts": ["Mystic Academy"], "Snape": ["Grey"]}, {"Snape"})
    incoming = AnchorDictionary({"Weasley": ["the dragon"], "Hogwarts": ["Mystic Academy"], "Quidditch": ["Skyball"]})
    merged, report = current.merged_with(incoming)
    assert merged.entries == {"Weasley": ["Smith", "the dragon"], "Hogwarts": ["Mystic Academy"], "Snape": ["Grey"],
                              "Quidditch": ["Skyball"]}
    assert merged.disabled == {"Snape"}
    assert report.added == ["Quidditch"] and report.extended == {"Weasley": ["the dragon"]}
    assert report.unchanged == 2 and not report.removed and not report.changed
    assert report.summary() == ("1 new term; 1 existing term gained candidates (Weasley + the dragon); "
                                "2 already there, unchanged")


def test_merge_adds_no_candidate_that_differs_only_in_case():
    current = AnchorDictionary({"Hogwarts": ["Mystic Academy"]})
    incoming = AnchorDictionary({"Hogwarts": ["mystic academy", "MYSTIC ACADEMY", "the Old School", "the old school"]})
    merged, report = current.merged_with(incoming)
    assert merged.entries == {"Hogwarts": ["Mystic Academy", "the Old School"]}
    assert report.extended == {"Hogwarts": ["the Old School"]}
    assert current.status_of("Hogwarts", ["mystic academy"]) == "in the dictionary"


def test_replace_says_how_many_terms_it_removes():
    current = AnchorDictionary({f"T{i}": ["x"] for i in range(202)})
    small = AnchorDictionary({"T1": ["x"], "T2": ["y"], "New": ["z"], "T3": ["x"], "Other": ["w"]})
    report = current.replaced_by(small)
    assert len(report.removed) == 199 and report.added == ["New", "Other"] and report.changed == ["T2"]
    assert "199 removed" in report.summary()


def test_status_of_a_suggested_row():
    d = AnchorDictionary({"Weasley": ["Smith"], "muggle": ["outsider"]})
    assert d.status_of("Weasley", ["Smith"]) == "in the dictionary"
    assert d.status_of("Weasley", ["the dragon"]) == "in the dictionary, adds: the dragon"
    assert d.status_of("Muggle", ["commoner"]) == "as 'muggle' in the dictionary"  # 'muggle' matches 'Muggle'
    assert d.status_of("Hermione", ["Emily"]) == "new"
    assert changes(d, d).summary() == "2 already there, unchanged"


def test_only_spellings_that_match_the_same_text_are_problems():
    problems = AnchorDictionary(PAPER_LIKE).validate()
    # "muggle" also matches "Muggle" (a lower-case term matches capitalised); "Invisibility Cloak" and
    # "invisibility cloak" never match the same text; Quaffle / quaffle agree.
    assert [p.term for p in problems] == ["Muggle"] and "different case" in problems[0].message


def test_resolving_case_variants_folds_colliding_spellings_and_keeps_the_others(tokenizer):
    from engine.translation import Translator

    resolved, report = AnchorDictionary(PAPER_LIKE).resolve_case_variants()
    assert resolved.validate() == []
    assert resolved.entries["muggle"] == ["outsider", "commoner"]  # Muggle's "Commoner" is commoner already
    assert "Muggle" not in resolved.entries and "Quaffle" not in resolved.entries
    assert resolved.entries["Invisibility Cloak"] == ["Shadow Cape"]
    assert resolved.entries["invisibility cloak"] == ["vanishing shawl"]
    assert list(resolved.entries)[:3] == ["Invisibility Cloak", "invisibility cloak", "muggle"]  # order kept
    assert any("folded into 'muggle'" in r for r in report)
    assert any("separate terms" in r and "'Dark Lord' / 'dark lord'" in r for r in report)
    # What the rule defends: both spellings of one word now get one stand-in per block.
    tr = Translator(tokenizer, resolved).translate_text("Muggle children. The muggle boy saw the Invisibility Cloak.", 0)
    by_term = {}
    for o in tr.occurrences:
        by_term.setdefault(o.term, set()).add(o.translation.lower())
    assert len(by_term["muggle"]) == 1 and by_term["Invisibility Cloak"] == {"shadow cape"}


def test_a_big_dictionary_with_case_variants_imports_and_resolves_in_one_click():
    entries = {}
    for i in range(800):
        entries[f"Spell{i} Charm"] = [f"trick{i}"]
        entries[f"spell{i} charm"] = [f"knack{i}"]  # differs beyond the first letter: separate terms
    for i in range(30):
        entries[f"Creature{i}"] = [f"Beast{i}"]
        entries[f"creature{i}"] = [f"animal{i}"]  # collides with Creature{i}
    d = AnchorDictionary.from_bytes(json.dumps(entries).encode(), "paper.json")
    assert len(d) == 1660 and len(d.validate()) == 30
    resolved, _ = d.resolve_case_variants()
    assert resolved.validate() == [] and len(resolved) == 1630
    assert resolved.entries["creature7"] == ["animal7", "beast7"]
