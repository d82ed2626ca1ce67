"""Every metric on hand-made cases whose answers are worked out by hand (or by a direct computation)."""
from __future__ import annotations

import math

import pytest
import torch

from engine.evaluation import metrics
from engine.probes import continuation_logprobs


# -- ROUGE-L --------------------------------------------------------------------------------------
def test_rouge_l_known_values():
    assert metrics.rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert metrics.rouge_l("dog", "the cat sat") == 0.0
    # LCS("the cat sat on the mat", "the cat was on the mat") = the cat on the mat = 5 of 6 words each side
    assert metrics.rouge_l("the cat was on the mat", "the cat sat on the mat") == pytest.approx(5 / 6)
    # pred 2 words, ref 4 words, LCS 2: P = 1, R = 0.5, F = 2PR/(P+R) = 2/3
    assert metrics.rouge_l("Harry Potter", "Harry Potter the boy") == pytest.approx(2 / 3)
    # order matters (a subsequence, not a bag of words): LCS("a b c", "c b a") = 1 -> F = 1/3
    assert metrics.rouge_l("a b c", "c b a") == pytest.approx(1 / 3)
    assert metrics.rouge_l("", "anything") == 0.0


# -- verbatim match -------------------------------------------------------------------------------
def test_token_match_and_exact_match():
    ref = [1, 2, 3, 4]
    assert metrics.token_match([1, 2, 3, 4], ref) == 1.0
    assert metrics.token_match([1, 9, 3, 9], ref) == 0.5
    assert metrics.token_match([1, 2], ref) == 0.5  # a short continuation misses the rest
    assert metrics.token_match([2, 3, 4, 5], ref) == 0.0  # shifted by one: nothing at its position
    assert metrics.exact_match([1, 2, 3, 4], ref) == 1.0
    assert metrics.exact_match([1, 2, 3, 4, 7], ref) == 1.0  # the reference, then more
    assert metrics.exact_match([1, 2, 3], ref) == 0.0
    assert metrics.exact_match([1, 2, 3, 5], ref) == 0.0
    with pytest.raises(ValueError):
        metrics.token_match([1], [])


# -- probabilities and perplexity -------------------------------------------------------------------
def test_continuation_logprobs_picks_the_right_rows():
    V = 5
    logits = torch.full((4, V), -1e9)
    # forward over ids = [prompt(2 tokens), t0, t1(not fed)]: rows 1 and 2 predict targets 0 and 1
    logits[1, 3] = 0.0  # P(3) = 1 at the last prompt position
    logits[2] = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]))
    lp = continuation_logprobs(logits[:3], 2, [3, 2])
    assert lp.exp().tolist() == pytest.approx([1.0, 0.3], abs=1e-6)
    with pytest.raises(ValueError):
        continuation_logprobs(logits[:2], 2, [3, 2])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    V, T = 7, 6
    nll = metrics.token_nll(torch.zeros(T, V), list(range(T)))
    assert nll.shape == (T - 1,)
    assert metrics.perplexity(float(nll.sum()), T - 1) == pytest.approx(V)
    with pytest.raises(ValueError):
        metrics.perplexity(0.0, 0)


def test_perplexity_matches_the_models_own_loss(tiny_dir):
    """Blockwise perplexity from Workbench logits == exp(HF cross-entropy loss) per block, pooled by tokens."""
    from transformers import AutoModelForCausalLM

    from engine.models import ModelConfig, Workbench

    wb = Workbench.load(ModelConfig(str(tiny_dir)))
    ids = wb.tokenizer("The quick brown fox jumps over the lazy dog near the old river bank today.",
                       add_special_tokens=False)["input_ids"]
    blocks = [ids[:9], ids[9:]]
    logits = wb.logits([(b, None) for b in blocks])
    ours = metrics.perplexity(sum(float(metrics.token_nll(lg, b).sum()) for lg, b in zip(logits, blocks)),
                              sum(len(b) - 1 for b in blocks))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    total = 0.0
    with torch.no_grad():
        for b in blocks:
            t = torch.tensor([b])
            total += float(model(input_ids=t, labels=t).loss) * (len(b) - 1)  # HF: mean over shifted tokens
    direct = math.exp(total / (len(ids) - 2))
    assert ours == pytest.approx(direct, rel=1e-4)
    assert 1.0 < ours < 10 * len(wb.tokenizer)


# -- completion familiarity ---------------------------------------------------------------------------
def test_a_term_counts_only_when_absent_from_the_prompt():
    terms = ["Hogwarts", "Hermione", "Sorting Hat", "wand"]
    # Hogwarts is already in the prompt: an echo, not knowledge
    assert metrics.familiar_terms("He went back to Hogwarts", " and Hogwarts was dark.", terms) == []
    assert metrics.familiar_terms("He went back to school", " at Hogwarts with Hermione.", terms) == ["Hermione", "Hogwarts"]
    # whole words only: "Hogwartsian" / "wands" are not the terms; a lower-case term also matches capitalised
    assert metrics.familiar_terms("A", " the Hogwartsian wands", terms) == []
    assert metrics.familiar_terms("A", " Wand in hand", terms) == ["wand"]
    # multi-word terms match as a phrase
    assert metrics.familiar_terms("In the hall", " the Sorting Hat sang", terms) == ["Sorting Hat"]
    assert metrics.familiar_terms("The Sorting Hat", " sang again", terms) == []
