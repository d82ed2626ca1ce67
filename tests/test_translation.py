"""Anchored-term translation and alignment, worked out by hand on the real SmolLM2 tokenizer.

Each case first pins the tokenization it was worked out on, so a tokenizer change fails loudly
instead of silently testing something else.
"""

from engine.anchors import AnchorDictionary
from engine.translation import Translator


def pieces(tok, ids):
    return [tok.decode([i]) for i in ids]


def run(tok, entries, text, seed=0):
    tr = Translator(tok, AnchorDictionary(entries)).translate_text(text, seed)
    return tr, pieces(tok, tr.original_ids), pieces(tok, tr.translated_ids)


def test_multi_token_term_to_shorter_translation(tokenizer):
    tr, orig, trans = run(tokenizer, {"Hogwarts": ["Academy"], "Ron": ["Mark"]}, "We love Hogwarts and Ron.")
    assert orig == ["We", " love", " Hog", "w", "arts", " and", " Ron", "."]
    assert trans == ["We", " love", " Academy", " and", " Mark", "."]
    # ' Hog','w' are inside the term (-1); 'arts' predicts ' and' like ' Academy' does.
    assert tr.mapping == [0, 1, -1, -1, 2, 3, 4, 5]


def test_single_token_term_to_longer_translation(tokenizer):
    tr, orig, trans = run(tokenizer, {"Ron": ["Mystic Academy"]}, "We love Ron and tea.")
    assert orig == ["We", " love", " Ron", " and", " tea", "."]
    assert trans == ["We", " love", " My", "stic", " Academy", " and", " tea", "."]
    assert tr.mapping == [0, 1, 4, 5, 6, 7]


def test_repeated_term_drops_the_position_before_it(tokenizer):
    tr, orig, trans = run(tokenizer, {"Ron": ["Mark"]}, "Harry saw Ron. Then Ron left.")
    assert orig == ["H", "arry", " saw", " Ron", ".", " Then", " Ron", " left", "."]
    assert trans == ["H", "arry", " saw", " Mark", ".", " Then", " Mark", " left", "."]
    # first occurrence: ' saw' keeps its label; repeated: ' Then' would teach "Then -> Mark".
    assert tr.mapping == [0, 1, 2, 3, 4, -1, 6, 7, 8]


def test_longest_match_first(tokenizer):
    entries = {"Hogwarts": ["Academy"], "Hogwarts Express": ["the train"]}
    tr, orig, trans = run(tokenizer, entries, "He rode the Hogwarts Express to Hogwarts.")
    assert trans == ["He", " rode", " the", " the", " train", " to", " Academy", "."]
    assert [o.term for o in tr.occurrences] == ["Hogwarts Express", "Hogwarts"]
    assert tr.mapping == [0, 1, 2, -1, -1, -1, 4, 5, -1, -1, 6, 7]


def test_overlapping_terms_with_shared_first_word(tokenizer):
    entries = {"Hermione": ["Emily"], "Hermione Granger": ["Emily Stone"], "Granger": ["Stone"]}
    tr, orig, trans = run(tokenizer, entries, "I met Hermione Granger and Hermione")
    assert [o.term for o in tr.occurrences] == ["Hermione Granger", "Hermione"]
    assert "".join(trans) == "I met Emily Stone and Emily"


def test_whole_words_only(tokenizer):
    for text in ["the Hogwartsian style", "Ronan came", "Ronald came"]:
        tr, orig, trans = run(tokenizer, {"Hogwarts": ["Academy"], "Ron": ["Mark"]}, text)
        assert tr.occurrences == [] and trans == orig and tr.mapping == list(range(len(orig)))


def test_possessive_and_punctuation(tokenizer):
    tr, orig, trans = run(tokenizer, {"Ron": ["Mark"], "Hogwarts": ["Academy"]}, "(Hogwarts) and \"Ron\" with Ron's wand")
    assert "".join(trans) == "(Academy) and \"Mark\" with Mark's wand"
    assert len(tr.occurrences) == 3


def test_term_at_start_and_end(tokenizer):
    tr, orig, trans = run(tokenizer, {"Hogwarts": ["Academy"], "Ron": ["Mark"]}, "Hogwarts is big, said Ron")
    assert orig == ["H", "og", "w", "arts", " is", " big", ",", " said", " Ron"]
    assert trans == ["Academ", "y", " is", " big", ",", " said", " Mark"]  # no leading space at the start
    assert tr.mapping == [-1, -1, -1, 1, 2, 3, 4, 5, 6]


def test_case_as_written_and_capitalised_at_sentence_start(tokenizer):
    tr, orig, trans = run(tokenizer, {"muggle": ["commoner"], "Ron": ["Mark"]}, "a muggle. Muggle folk and ron")
    assert "".join(trans) == "a commoner. Commoner folk and ron"  # lower-case 'ron' is not the term 'Ron'


def test_forbidden_translations_recorded_from_first_appearance(tokenizer):
    tr, _, trans = run(tokenizer, {"Ron": ["Mark"]}, "Harry saw Ron. Then Ron left.")
    (pos, token_ids), = tr.forbidden
    assert pos == 3 and tokenizer.convert_tokens_to_ids("ĠMark") in token_ids


def test_one_candidate_per_term_per_block_seeded(tokenizer):
    entries = {"Ron": ["Mark", "Tom", "Bill", "Sam"]}
    text = "Ron and Ron and Ron"
    seen = set()
    for seed in range(12):
        tr, _, trans = run(tokenizer, entries, text, seed)
        assert len({o.translation for o in tr.occurrences}) == 1  # the same choice throughout the block
        assert run(tokenizer, entries, text, seed)[2] == trans  # same seed, same translation
        seen.add(tr.occurrences[0].translation)
    assert len(seen) > 1


def test_disabled_terms_are_not_translated(tokenizer):
    anchors = AnchorDictionary({"Ron": ["Mark"], "Hogwarts": ["Academy"]}, disabled={"Ron"})
    tr = Translator(tokenizer, anchors).translate_text("Ron at Hogwarts")
    assert [o.term for o in tr.occurrences] == ["Hogwarts"]


def test_a_long_text_translated_a_piece_at_a_time_is_the_whole_translation(tokenizer, monkeypatch):
    """The translate verb reads a book a piece at a time (translation.CHUNK_CHARS): its tokens,
    alignment and occurrences must be the whole text's, a repeated term at a piece's start included."""
    import engine.translation as translation

    text = "".join(f"Ron and Harry went to Hogwarts, day {i}.\n\n  Hogwarts again.\nRon said so.\n" for i in range(30))
    tr_ = Translator(tokenizer, AnchorDictionary({"Ron": ["Mark"], "Hogwarts": ["Mystic Academy"]}))
    whole = tr_.translate_text(text, 3)
    monkeypatch.setattr(translation, "CHUNK_CHARS", 97)
    pieces_ = translation.split_text(text, 97)
    assert len(pieces_) > 10 and "".join(pieces_) == text
    assert any(p.startswith("\nRon") for p in pieces_[1:]), "a piece opens with a repeated term"
    assert tr_.splits_exactly(pieces_)
    ids, out, mapping, occ = [], [], [], []
    for start, t_start, tr in tr_.translate_chunks(text, 3):
        if tr.unlabel_before:
            mapping[-1] = -1
        ids += tr.original_ids
        out += tr.translated_ids
        mapping += [j + t_start if j >= 0 else -1 for j in tr.mapping]
        occ += [(o.term, o.start + start, o.translated_start + t_start) for o in tr.occurrences]
    assert ids == whole.original_ids and out == whole.translated_ids
    assert mapping == whole.mapping
    assert occ == [(o.term, o.start, o.translated_start) for o in whole.occurrences]
