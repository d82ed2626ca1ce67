"""Generic labels of a long corpus: built shard by shard (the same labels as one piece), resumed
from the shards a killed build left, and shared out across ranks with the set written once."""
import os
import threading

import pytest
import torch

from engine import labels as labels_mod
from engine.data import corpus_blocks
from engine.labels import generic_labels, shard_plan

TEXT = ("Harry Potter and Ron Weasley ran through the corridors of Hogwarts towards the Great Hall, "
        "where Hermione Granger was reading about Quidditch. Harry told Ron that Dumbledore had "
        "called for Hagrid. ") * 6


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def small_shards(monkeypatch):
    monkeypatch.setattr(labels_mod, "SHARD_TOKENS", 64)  # 2 blocks of 32 tokens per shard


@pytest.fixture()
def setup(tiny_wb, tiny_expert_dir, demo_anchors):
    wb = tiny_wb
    wb.add_adapter("expert", tiny_expert_dir)
    blocks = corpus_blocks(wb.tokenizer, TEXT, 32)
    assert len(blocks) >= 8
    return wb, demo_anchors, blocks


def same(a, b, soft_alpha=None):
    assert torch.equal(a.ids, b.ids) and torch.equal(a.lengths, b.lengths)
    assert set(a.labels) == set(b.labels)
    for alpha in a.labels:
        assert torch.equal(a.for_alpha(alpha), b.for_alpha(alpha)), alpha
    if soft_alpha is not None:
        for x, y in zip(a.soft_for_alpha(soft_alpha), b.soft_for_alpha(soft_alpha)):
            assert torch.equal(x, y)
    for k in ("blocks", "tokens", "labelled", "term_occurrences", "changed"):
        assert a.stats[k] == b.stats[k], k


def counting(wb):
    calls = []
    real = wb.logits
    wb.logits = lambda batch: calls.append(len(batch)) or real(batch)
    return calls


def test_shards_give_the_labels_of_one_piece_and_are_written_as_built(setup, home, small_shards):
    wb, anchors, blocks = setup
    whole = generic_labels(wb, "expert", anchors, blocks, alphas=(2.5, 5), seed=1, group=2, top_k=4, cache=False)
    assert whole.stats["shards"] == len(shard_plan(len(blocks), 32)) > 3
    seen = []
    sharded = generic_labels(wb, "expert", anchors, blocks, alphas=(2.5, 5), seed=1, group=2, top_k=4,
                             on_progress=lambda done, n: seen.append((done, n)))
    same(whole, sharded, soft_alpha=5)
    files = sorted((home / "labels" / sharded.key).glob("shard-*.safetensors"))
    assert len(files) == sharded.stats["shards"] and not (home / "labels" / f"{sharded.key}.partial").exists()
    assert seen[-1] == (len(blocks), len(blocks)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    # Soft labels are read per alpha when asked for, not with the set.
    again = generic_labels(wb, "expert", anchors, blocks, alphas=(2.5, 5), seed=1, group=2, top_k=4)
    assert again.cached and not again.soft._got
    same(whole, again, soft_alpha=2.5)
    assert list(again.soft._got) == [2.5]


def test_a_killed_build_resumes_from_its_shards(setup, home, small_shards):
    wb, anchors, blocks = setup
    n_shards = len(shard_plan(len(blocks), 32))
    reference = generic_labels(wb, "expert", anchors, blocks, alphas=(5,), seed=2, group=2, cache=False)

    def kill(done, n):
        if done >= 8:  # three shards of two blocks written, the fourth built but not written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generic_labels(wb, "expert", anchors, blocks, alphas=(5,), seed=2, group=2, on_progress=kill)
    partial = home / "labels" / f"{reference.key}.partial"
    written = sorted(p.name for p in partial.glob("shard-*.safetensors"))
    assert written == [f"shard-{j:05d}.safetensors" for j in range(3)]
    # A shard cut short by the kill (here: truncated by hand) is not trusted: it is built again.
    (partial / written[-1]).write_bytes((partial / written[-1]).read_bytes()[:100])
    calls = counting(wb)
    resumed = generic_labels(wb, "expert", anchors, blocks, alphas=(5,), seed=2, group=2)
    assert len(calls) == n_shards - 2, "only the two good shards are reused"
    assert resumed.stats["resumed_blocks"] == 4 and not resumed.cached
    same(reference, resumed)


def test_ranks_build_disjoint_shares_and_the_set_is_written_once(setup, home, small_shards, monkeypatch):
    """Two ranks as threads on one Workbench (its lock serialises their forwards), one barrier."""
    wb, anchors, blocks = setup
    reference = generic_labels(wb, "expert", anchors, blocks, alphas=(5,), seed=3, group=2, cache=False)
    barrier = threading.Barrier(2, timeout=120)
    renames, real_replace = [], os.replace
    monkeypatch.setattr(labels_mod.os, "replace", lambda a, b: (renames.append(str(b)), real_replace(a, b))[1])
    calls = counting(wb)
    out: dict = {}

    def rank(r):
        out[r] = generic_labels(wb, "expert", anchors, blocks, alphas=(5,), seed=3, group=2, rank=r, world=2,
                                barrier=barrier.wait)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert set(out) == {0, 1}
    n_shards = len(shard_plan(len(blocks), 32))
    assert len(calls) == n_shards, "each shard built once, by one rank"
    by_rank = out[0].stats["blocks_by_rank"]
    assert set(by_rank) == {"0", "1"} and sum(by_rank.values()) == len(blocks)
    assert abs(by_rank["0"] - by_rank["1"]) <= 2
    assert [r for r in renames if r.endswith(reference.key)] == [str(home / "labels" / reference.key)]
    same(reference, out[0])
    same(reference, out[1])
