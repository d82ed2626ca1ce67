"""A forget corpus from what the model knows (engine/corpus.py, `corpus generate`), on the tiny model."""
import json

import pytest

from engine.anchors import AnchorDictionary
from engine.corpus import TEMPLATES, generate_corpus, prompts_for
from engine.errors import UserError
from conftest import run_cli

ANCHORS = AnchorDictionary({"Hogwarts": ["Mystic Academy"], "Hermione": ["Emily"], "Ron": ["Mark"],
                            "Quidditch": ["skyball"]})


def test_prompts_cover_every_term_and_template_in_a_seeded_order():
    every = prompts_for(ANCHORS, 10_000)
    assert len(every) == 4 * len(TEMPLATES) and len(set(every)) == len(every)
    assert prompts_for(ANCHORS, 12, seed=1) == prompts_for(ANCHORS, 12, seed=1) != prompts_for(ANCHORS, 12, seed=2)
    few = prompts_for(ANCHORS, 4)
    assert {next(t for t in ANCHORS.enabled if t in p) for p in few} == set(ANCHORS.enabled), "terms spread first"
    with pytest.raises(UserError, match="no enabled"):
        prompts_for(AnchorDictionary({}), 3)


def test_generated_corpus_is_seeded_deduplicated_specific_and_bounded(tiny_wb, tiny_expert_dir):
    tiny_wb.add_adapter("expert", tiny_expert_dir)
    a = generate_corpus(tiny_wb, ANCHORS, "expert", n_prompts=8, samples=2, max_new_tokens=12, min_rise=-100.0, seed=3)
    b = generate_corpus(tiny_wb, ANCHORS, "expert", n_prompts=8, samples=2, max_new_tokens=12, min_rise=-100.0, seed=3)
    assert a.text == b.text and a.kept > 0, "the same seed, the same corpus"
    assert a.samples == 8 * 2 * 2 and a.kept + a.duplicates + a.generic == a.samples
    assert set(a.by_model) == {"baseline", "expert"}
    paragraphs = a.text.strip().split("\n\n")
    assert len(paragraphs) == a.kept and len({" ".join(p.lower().split()) for p in paragraphs}) == len(paragraphs)
    # Nothing specific: a random model names no other term, and a rise it cannot reach keeps nothing.
    strict = generate_corpus(tiny_wb, ANCHORS, "expert", n_prompts=8, samples=1, max_new_tokens=12, min_rise=100.0)
    assert strict.kept == sum(1 for p in strict.text.strip().split("\n\n") if p) and strict.generic > 0
    small = generate_corpus(tiny_wb, ANCHORS, "expert", n_prompts=8, samples=2, max_new_tokens=12, min_rise=-100.0,
                            max_chars=80)
    assert len(small.text) <= 81
    with pytest.raises(UserError):
        generate_corpus(tiny_wb, ANCHORS, None, temperature=0)


@pytest.mark.slow  # subprocesses
def test_corpus_generate_verb_writes_a_job_with_the_corpus(tiny_dir, tiny_expert_dir, tmp_path):
    anchors = tmp_path / "a.json"
    anchors.write_text(json.dumps({"Hogwarts": ["Mystic Academy"], "Ron": ["Mark"]}))
    out = tmp_path / "gen"
    r = run_cli("corpus", "generate", "--anchors", str(anchors), "--model", str(tiny_dir), "--expert",
                str(tiny_expert_dir), "--prompts", "4", "--samples", "1", "--tokens", "8", "--min-rise", "-100",
                "--out", str(out), env={"OBLIVIATE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    assert "kept" in r.stdout and (out / "corpus.txt").read_text().strip()
    info = json.loads((out / "corpus.json").read_text())
    assert info["samples"] == 8 and info["kept"] >= 1 and info["expert"] == str(tiny_expert_dir)
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    again = run_cli("corpus", "generate", "--anchors", str(anchors), "--model", str(tiny_dir), "--out", str(out))
    assert again.returncode == 2 and "already holds a corpus" in again.stderr
    bad = run_cli("corpus", "generate", "--anchors", str(tmp_path / "none.json"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.startswith("error:")
