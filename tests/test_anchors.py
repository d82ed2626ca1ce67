import json

import pytest

from engine.anchors import AnchorDictionary, load_anchors, save_anchors
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
