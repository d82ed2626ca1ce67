"""Per-token inspection: one batched forward, views for any alpha without the model, truncation."""
import json

import pytest
import torch

from engine.anchors import AnchorDictionary
from engine.errors import UserError
from engine.generation import complete, complete_generic
from engine.inspection import inspect
from engine.models import Workbench

PROMPT = "Harry Potter's two best friends are Ron and"
ANCHORS = AnchorDictionary({"Harry": ["Jon"], "Potter": ["Smith"], "Ron": ["Mark"]})


@pytest.fixture()
def wb(tiny_wb, tiny_expert_dir, tiny_unlearned_dir):
    tiny_wb.add_adapter("expert", tiny_expert_dir)
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    return tiny_wb


def count_calls(monkeypatch):
    calls = []
    original = Workbench.logits
    monkeypatch.setattr(Workbench, "logits", lambda self, batch: calls.append(len(batch)) or original(self, batch))
    return calls


def test_one_batched_forward_and_alpha_views_run_no_model(wb, monkeypatch):
    calls = count_calls(monkeypatch)
    result = inspect(wb, PROMPT, ANCHORS, expert="expert", unlearned="unlearned", track=[" Hermione"])
    assert calls == [4]  # baseline(original), baseline(translated), expert, unlearned in ONE batch
    v5, v10 = result.view(5.0), result.view(10.0)
    assert calls == [4]
    assert v5["positions"][-1]["generic"] != v10["positions"][-1]["generic"]
    assert v5["positions"][-1]["baseline"] == v10["positions"][-1]["baseline"]


def test_view_matches_direct_computation(wb):
    result = inspect(wb, PROMPT, ANCHORS, expert="expert", unlearned="unlearned", top_k=3)
    view = result.view(2.5)
    tr = result.translation
    base_o, base_t, expert_o = wb.logits([(tr.original_ids, None), (tr.translated_ids, None), (tr.original_ids, "expert")])
    last = len(tr.original_ids) - 1
    j = tr.mapping[last]
    g = base_t[j] - 2.5 * torch.relu(expert_o[last] - base_t[j])
    for name, logits in [("baseline", base_o[last]), ("expert", expert_o[last]), ("generic", g)]:
        p = logits.softmax(-1)
        top = p.topk(3)
        got = view["positions"][-1][name]
        assert [t["id"] for t in got] == top.indices.tolist()
        assert [t["prob"] for t in got] == pytest.approx(top.values.tolist(), rel=1e-4)
    # the actual next token's probability and rank under the baseline at position 0
    p0 = base_o[0].softmax(-1)
    nxt = tr.original_ids[1]
    assert view["positions"][0]["baseline_next"]["prob"] == pytest.approx(p0[nxt].item(), rel=1e-4)
    assert view["positions"][0]["baseline_next"]["rank"] == int((p0 > p0[nxt]).sum()) + 1
    # KL(baseline || generic) >= 0 where aligned, None inside anchored terms
    for pos in view["positions"]:
        assert (pos["kl_baseline_generic"] is None) == (pos["aligned_to"] < 0)


def test_json_shape(wb):
    view = inspect(wb, PROMPT, None, expert="expert", top_k=4, track=[" Hermione"]).view(5.0)
    json.dumps(view)
    assert len(view["positions"]) == len(view["mapping"])
    p = view["positions"][-1]
    assert p["next_token"] is None and p["baseline_next"]["prob"] is None
    assert len(p["baseline"]) == 4 and p["unlearned"] is None
    probs = [t["prob"] for t in p["baseline"]]
    assert probs == sorted(probs, reverse=True)
    assert set(view["tracked"][" Hermione"]) == {"baseline", "expert", "generic"}


def test_notes_say_what_generic_means(tiny_wb):
    notes = inspect(tiny_wb, PROMPT, ANCHORS).notes
    assert any("no expert" in n for n in notes)


def test_long_prompt_keeps_the_last_tokens(tiny_wb):
    prompt = "word " * (tiny_wb.max_length + 40)
    with pytest.warns(UserWarning, match="kept the last"):
        result = inspect(tiny_wb, prompt)
    assert len(result.ids) == tiny_wb.max_length and result.truncated > 0


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_user_error(tiny_wb, prompt):
    with pytest.raises(UserError, match="empty"):
        inspect(tiny_wb, prompt)


def test_completions_greedy_match_argmax(wb):
    texts = complete(wb, [PROMPT, "The castle"], adapter="expert", max_new_tokens=3)
    assert len(texts) == 2
    ids = wb.tokenizer(PROMPT)["input_ids"]
    first = int(wb.logits([(ids, "expert")])[0][-1].argmax())
    assert texts[0].startswith(wb.tokenizer.decode([first]))


def test_generic_completion_first_token_is_generic_argmax(wb):
    text = complete_generic(wb, PROMPT, "expert", alpha=5.0, max_new_tokens=1)
    view = inspect(wb, PROMPT, None, expert="expert").view(5.0)
    assert text == view["positions"][-1]["generic"][0]["token"]
