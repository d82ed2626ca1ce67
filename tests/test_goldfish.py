"""Goldfish masks: static positions exact, hash masks a function of the local context only."""
import random

import pytest
import torch

from engine.config import GoldfishConfig as Goldfish
from engine.data import IGNORE, apply_goldfish, goldfish_mask


def _reference_hash(tokens) -> int:
    """An independent restatement of the documented hash (64-bit FNV-1a on 4 bytes/token + splitmix64)."""
    h, m = 0xCBF29CE484222325, (1 << 64) - 1
    for t in tokens:
        for b in int(t).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & m
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & m
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & m
    return h ^ (h >> 31)


def test_static_drops_exactly_every_kth_position():
    labels = torch.arange(10)[None].repeat(2, 1)
    keep = goldfish_mask(labels, Goldfish("static", k=4))
    assert keep.shape == (2, 10)
    assert (~keep[0]).nonzero().flatten().tolist() == [3, 7]
    assert torch.equal(keep[0], keep[1])
    dropped = apply_goldfish(labels, Goldfish("static", k=4))
    assert dropped[0, 3] == IGNORE and dropped[0, 7] == IGNORE and dropped[0, 2] == 2


def test_hash_mask_depends_only_on_the_last_h_tokens():
    rng = random.Random(0)
    passage = [rng.randrange(49152) for _ in range(60)]
    # The same passage after two different prefixes: once the window lies inside the passage,
    # the decisions must be identical.
    a = [rng.randrange(49152) for _ in range(30)] + passage
    b = [rng.randrange(49152) for _ in range(7)] + passage
    gf = Goldfish("hash", k=4, h=13)
    ka = goldfish_mask(torch.tensor([a]), gf)[0]
    kb = goldfish_mask(torch.tensor([b]), gf)[0]
    assert torch.equal(ka[30 + 12:], kb[7 + 12:])
    assert ka[: gf.h - 1].all(), "the first h-1 positions are never dropped"
    assert not ka.all(), "some positions must be dropped"


def test_hash_mask_matches_an_independent_reference_on_any_dtype_and_shape():
    rng = random.Random(1)
    rows = [[rng.randrange(49152) for _ in range(40)] for _ in range(3)]
    gf = Goldfish("hash", k=3, h=5)
    expected = [[t < gf.h - 1 or _reference_hash(r[t - gf.h + 1: t + 1]) >= (1 << 64) // gf.k
                 for t in range(len(r))] for r in rows]
    expected = torch.tensor(expected)
    for labels in (torch.tensor(rows), torch.tensor(rows, dtype=torch.int32),
                   torch.tensor(rows, dtype=torch.float64), torch.tensor(rows).T.contiguous().T):
        assert torch.equal(goldfish_mask(labels, gf), expected)
    if torch.cuda.is_available():
        assert torch.equal(goldfish_mask(torch.tensor(rows, device="cuda"), gf), expected)


@pytest.mark.parametrize("k", [2, 4, 8])
def test_hash_dropped_fraction_is_near_one_in_k(k):
    g = torch.Generator().manual_seed(k)
    labels = torch.randint(0, 49152, (4, 1500), generator=g)
    keep = goldfish_mask(labels, Goldfish("hash", k=k, h=13))[:, 12:]
    frac = 1 - keep.float().mean().item()
    assert abs(frac - 1 / k) < 0.03, frac


def test_ignored_positions_stay_ignored_and_are_not_dropped_twice():
    labels = torch.randint(0, 1000, (1, 50))
    labels[0, 40:] = IGNORE
    keep = goldfish_mask(labels, Goldfish("hash", k=2, h=3))
    assert keep[0, 40:].all()
    out = apply_goldfish(labels, Goldfish("hash", k=2, h=3))
    assert (out[0, 40:] == IGNORE).all()
    assert ((out != IGNORE) == (keep & (labels != IGNORE))).all()


def test_goldfish_config_errors_are_listed():
    from conftest import ASSETS
    from engine.config import run_config
    from engine.errors import UserError

    with pytest.raises(UserError) as e:
        run_config({"corpus": str(ASSETS / "demo_corpus.txt"), "method": "reinforce_only",
                    "goldfish": {"kind": "zebra", "k": 1, "h": 0}})
    assert all(f"goldfish.{f}" in str(e.value) for f in ("kind", "k", "h")), str(e.value)
