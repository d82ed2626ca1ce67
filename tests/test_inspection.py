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


def test_every_position_matches_the_whole_tensor_computation_across_pieces(wb):
    """The statistics run 32 rows at a time on a CPU (cache-sized pieces): a prompt of ~5 pieces, with
    anchored terms repeated so forbidden translations fall in several pieces, must give at every
    position what one pass over the whole (T, V) tensor gives."""
    prompt = " ".join(["Harry Potter met Ron at the castle and Ron said hello to Harry."] * 12)
    result = inspect(wb, prompt, ANCHORS, expert="expert", top_k=3, track=[" Hermione"])
    assert len(result.ids) > 4 * 32 and len(result.translation.forbidden) > 0
    view = result.view(2.5)
    tr, parts = result.translation, result.parts
    base_o, base_t, expert_o = wb.logits([(tr.original_ids, None), (tr.translated_ids, None), (tr.original_ids, "expert")])
    g_all = parts.logits(2.5)  # the whole-tensor formula, forbidden translations included
    assert torch.equal(torch.cat([parts.logits(2.5, slice(i, i + 32)) for i in range(0, len(parts.rows), 32)]), g_all)
    lp_b = base_o[parts.rows].log_softmax(-1)
    kl = (lp_b.exp() * (lp_b - g_all.log_softmax(-1))).sum(-1)
    hermione = result.tracked_ids[" Hermione"]
    for j, i in enumerate(parts.rows.tolist()):
        pos = view["positions"][i]
        top = g_all[j].softmax(-1).topk(3)
        assert [t["id"] for t in pos["generic"]] == top.indices.tolist()
        assert pos["kl_baseline_generic"] == pytest.approx(max(kl[j].item(), 0.0), abs=1e-4)
        assert view["tracked"][" Hermione"]["generic"][i] == pytest.approx(g_all[j].softmax(-1)[hermione].item(), rel=1e-4)
        if i + 1 < len(tr.original_ids):
            nxt = tr.original_ids[i + 1]
            assert pos["expert_next"]["rank"] == int((expert_o[i] > expert_o[i, nxt]).sum()) + 1  # logits: no softmax ties
            assert pos["expert_next"]["prob"] == pytest.approx(expert_o[i].softmax(-1)[nxt].item(), rel=1e-4)


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


# -- the logit lens and the adapter scale --------------------------------------------------------------
def test_the_lens_comes_from_the_same_forward_and_its_last_block_is_each_models_output(wb, monkeypatch):
    forwards = []
    original = Workbench._forwards
    monkeypatch.setattr(Workbench, "_forwards", lambda self, batch, **kw: forwards.append(len(batch)) or original(self, batch, **kw))
    result = inspect(wb, PROMPT, ANCHORS, expert="expert", unlearned="unlearned", track=[" Hermione", " Paris"],
                     lens=True)
    view = result.view(3.0)
    for i in range(len(result.ids)):
        lens = result.lens(i, 3.0)
        assert forwards == [4], "the lens never runs the model again"
        for m, entries in lens.items():
            assert len(entries) == wb.num_layers
            want, got = view["positions"][i][m], entries[-1]
            assert [t["id"] for t in got["top"]] == [t["id"] for t in want]
            assert [t["prob"] for t in got["top"]] == pytest.approx([t["prob"] for t in want], rel=1e-4, abs=1e-7)
            for text, probs in view["tracked"].items():
                assert got["tracked"][text] == pytest.approx(probs[m][i], rel=1e-4, abs=1e-7)
        assert ("generic" in lens) == (result.translation.mapping[i] >= 0)
    # an intermediate block: the residual stream after block 1 through the final norm and the head
    ids = torch.tensor([result.ids])
    with torch.no_grad(), wb._model.disable_adapter():
        h1 = wb._base(input_ids=ids, output_hidden_states=True).hidden_states[1][0, -1]
        direct = wb._base.get_output_embeddings()(wb._base.model.norm(h1)).softmax(-1)
    first = result.lens(len(result.ids) - 1, 3.0)["baseline"][0]
    assert first["top"][0]["id"] == int(direct.argmax())
    assert first["top"][0]["prob"] == pytest.approx(float(direct.max()), rel=1e-4)
    assert first["rank"][" Hermione"] == int((direct > direct[result.tracked_ids[" Hermione"]]).sum()) + 1
    # one token along the prompt: its column of the unembedding only, the last block = the output logit
    along = result.lens_along("unlearned", " Hermione")
    out = wb.logits([(result.ids, "unlearned")])[0][:, result.tracked_ids[" Hermione"]]
    assert len(along) == wb.num_layers and along[-1] == pytest.approx(out.tolist(), rel=1e-4, abs=1e-5)
    with pytest.raises(UserError, match="lens"):
        inspect(wb, PROMPT, ANCHORS, expert="expert").lens(0)


def test_the_adapter_scale_runs_from_the_baseline_to_past_the_adapter(wb):
    def last(scale):
        r = inspect(wb, PROMPT, None, unlearned="unlearned", top_k=3, scale=scale)
        return r.view()["positions"][-1]
    plain = last(1.0)
    zero, half, over = last(0.0), last(0.5), last(1.5)
    assert [t["id"] for t in zero["unlearned"]] == [t["id"] for t in zero["baseline"]]
    assert [t["prob"] for t in zero["unlearned"]] == pytest.approx([t["prob"] for t in zero["baseline"]], rel=1e-5)
    assert half["unlearned"] != plain["unlearned"] != over["unlearned"]
    assert last(1.0)["unlearned"] == plain["unlearned"], "the adapter is as trained again after a scaled view"
    for bad in (-0.1, 1.6, float("nan")):
        with pytest.raises(UserError, match="adapter scale"):
            inspect(wb, PROMPT, None, unlearned="unlearned", scale=bad)


def test_lens_split_finds_the_block_where_the_unlearned_curve_leaves_the_baselines():
    from engine.inspection import lens_split

    def lens(ps):
        return [{"tracked": {" Hermione": p}} for p in ps]
    both = {"baseline": lens([0.1, 0.3, 0.6, 0.8, 0.9]), "unlearned": lens([0.1, 0.3, 0.5, 0.2, 0.01])}
    assert lens_split(both, " Hermione")["split"] == 4
    kept = {"baseline": lens([0.1, 0.9]), "unlearned": lens([0.1, 0.8])}
    assert lens_split(kept, " Hermione")["split"] is None
    early = {"baseline": lens([0.5, 0.9]), "unlearned": lens([0.1, 0.01])}
    assert lens_split(early, " Hermione")["split"] == 1
    # Blocks where the baseline holds almost nothing say nothing: the split is where it starts holding it
    late = {"baseline": lens([1e-5, 3e-5, 1e-4, 0.7, 0.75]), "unlearned": lens([1e-6, 2e-6, 1e-6, 0.003, 0.003])}
    found = lens_split(late, " Hermione")
    assert found["split"] == found["first"] == 4
    never = {"baseline": lens([1e-5, 1e-4]), "unlearned": lens([1e-6, 1e-6])}
    assert lens_split(never, " Hermione")["split"] is None and lens_split(never, " Hermione")["first"] is None
    assert lens_split({"baseline": lens([0.1])}, " Hermione") is None


def test_byte_level_pieces_are_merged_for_display(tokenizer):
    """A character split over several byte tokens decodes to U+FFFD token by token; the display gives
    the whole character to the first token and "" to the rest, and the pieces join to the prompt."""
    from engine.inspection import display_pieces

    text = "Привет, 你好 🎉 Harry"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "the tokenizer splits these characters"
    pieces = display_pieces(tokenizer, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces) and "你" in pieces and " Harry" in pieces
