"""The generic-label dataset: equal to per-block generic_parts, batched, several alphas, cached."""
import pytest
import torch

from engine.data import IGNORE, corpus_blocks
from engine.generic import generic_parts
from engine.labels import generic_labels
from engine.translation import Translator

TEXT = ("Harry Potter and Ron Weasley ran through the corridors of Hogwarts towards the Great Hall, "
        "where Hermione Granger was reading about Quidditch. Harry told Ron that Dumbledore had "
        "called for Hagrid. ") * 3


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _counting(wb):
    calls = []
    real = wb.logits

    def logits(batch):
        calls.append(len(batch))
        return real(batch)

    wb.logits = logits
    return calls


def test_labels_match_per_block_generic_parts_for_every_alpha(tiny_wb, tiny_expert_dir, demo_anchors, home):
    wb = tiny_wb
    expert = wb.add_adapter("expert", tiny_expert_dir)
    blocks = corpus_blocks(wb.tokenizer, TEXT, 48)
    calls = _counting(wb)
    ls = generic_labels(wb, expert, demo_anchors, blocks, alphas=(2.5, 5, 10), seed=7, group=2)
    # One forward per group of 2 blocks, each with baseline(translated) and expert(original).
    assert calls == [4] * (len(blocks) // 2) + ([2] if len(blocks) % 2 else [])
    assert set(ls.labels) == {2.5, 5.0, 10.0} and not ls.cached
    assert ls.ids.shape == ls.labels[5.0].shape == (len(blocks), 48)
    translator = Translator(wb.tokenizer, demo_anchors)
    agree = total = 0
    for i, block in enumerate(blocks):
        tr = translator.translate(block, f"7:{i}")
        base_t, exp_o = wb.logits([(tr.translated_ids, None), (block, expert)])
        parts = generic_parts(tr, base_t, exp_o)
        for a in (2.5, 5.0, 10.0):
            want = parts.labels(a)
            got = ls.labels[a][i, : len(block)]
            assert torch.equal(got == IGNORE, want == IGNORE)  # same alignment, exactly
            agree += int((got == want).sum())
            total += len(block)
    assert agree / total > 0.99  # batched vs single forwards may differ by float noise only
    assert ls.stats["labelled"] < ls.stats["tokens"], "terms must leave unlabelled positions"
    # A larger alpha pushes further from the expert: never fewer changed labels in practice here.
    assert ls.stats["changed"]["10.0"] >= ls.stats["changed"]["2.5"] - 0.05


def test_soft_labels_are_the_top_k_of_the_generic_distribution_and_survive_the_cache(
        tiny_wb, tiny_expert_dir, demo_anchors, home):
    wb = tiny_wb
    expert = wb.add_adapter("expert", tiny_expert_dir)
    blocks = corpus_blocks(wb.tokenizer, TEXT, 48)[:2]
    hard = generic_labels(wb, expert, demo_anchors, blocks, alphas=(5,), seed=3)
    ls = generic_labels(wb, expert, demo_anchors, blocks, alphas=(5,), seed=3, top_k=8)
    assert ls.key != hard.key and not ls.cached and hard.soft == {}
    top_ids, top_logp = ls.soft_for_alpha(5)
    assert top_ids.shape == top_logp.shape == (2, 48, 8)
    translator = Translator(wb.tokenizer, demo_anchors)
    for i, block in enumerate(blocks):
        tr = translator.translate(block, f"3:{i}")
        parts = generic_parts(tr, *wb.logits([(tr.translated_ids, None), (block, expert)]))
        want = parts.logits(5.0).double().log_softmax(-1).topk(8, -1)
        rows = parts.rows
        assert torch.allclose(top_logp[i, rows].double(), want.values, atol=2e-2)  # stored as float16
        assert (top_ids[i, rows, 0] == want.indices[:, 0]).float().mean() > 0.99
        # The first soft token is the hard label; unlabelled rows hold -inf.
        assert torch.equal(top_ids[i, rows, 0].long(), ls.labels[5.0][i, rows])
        unlabelled = ls.labels[5.0][i] == IGNORE
        assert torch.isinf(top_logp[i][unlabelled]).all()
    again = generic_labels(wb, expert, demo_anchors, blocks, alphas=(5,), seed=3, top_k=8)
    assert again.cached and all(torch.equal(a, b) for a, b in zip(again.soft_for_alpha(5), (top_ids, top_logp)))
    with pytest.raises(Exception, match="soft labels"):
        hard.soft_for_alpha(5)


def test_second_call_is_a_cache_hit_without_any_forward(tiny_wb, tiny_expert_dir, demo_anchors, home):
    wb = tiny_wb
    expert = wb.add_adapter("expert", tiny_expert_dir)
    blocks = corpus_blocks(wb.tokenizer, TEXT, 64)
    first = generic_labels(wb, expert, demo_anchors, blocks, seed=0)
    calls = _counting(wb)
    second = generic_labels(wb, expert, demo_anchors, blocks, seed=0)
    assert calls == [] and second.cached and second.key == first.key
    assert (home / "labels" / first.key / "meta.json").exists() and list((home / "labels" / first.key).glob("shard-*"))
    for a in first.labels:
        assert torch.equal(first.labels[a], second.labels[a])
    assert torch.equal(first.ids, second.ids)
    # Any changed input is a new key: the seed, the dictionary, the expert's weights.
    other_seed = generic_labels(wb, expert, demo_anchors, blocks, seed=1)
    assert not other_seed.cached and other_seed.key != first.key
    fewer = type(demo_anchors)({t: c for t, c in demo_anchors.entries.items() if t != "Harry"})
    assert generic_labels(wb, expert, fewer, blocks, seed=0).key != first.key


def test_expert_weights_are_part_of_the_key(tiny_wb, tiny_expert_dir, tiny_unlearned_dir, demo_anchors, home):
    wb = tiny_wb
    blocks = corpus_blocks(wb.tokenizer, TEXT, 64)[:1]
    wb.add_adapter("expert", tiny_expert_dir)
    k1 = generic_labels(wb, "expert", demo_anchors, blocks).key
    wb.add_adapter("expert", tiny_unlearned_dir)  # same name, other weights
    k2 = generic_labels(wb, "expert", demo_anchors, blocks).key
    assert k1 != k2


def test_labels_without_expert_and_unknown_adapter(tiny_wb, demo_anchors, home):
    from engine.errors import UserError

    blocks = corpus_blocks(tiny_wb.tokenizer, TEXT, 64)[:1]
    ls = generic_labels(tiny_wb, None, demo_anchors, blocks, alphas=(5,))
    assert (ls.labels[5.0] != IGNORE).any()
    with pytest.raises(UserError, match="no adapter"):
        generic_labels(tiny_wb, "nope", demo_anchors, blocks)
    with pytest.raises(UserError, match="no labels for alpha"):
        ls.for_alpha(3.0)
