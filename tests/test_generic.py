"""The generic formula against a float64 reference, several alphas, and the forbid rule."""
import torch

from engine.anchors import AnchorDictionary
from engine.generic import IGNORE, generic_parts
from engine.translation import Translation, Translator


def reference(translation, base_t, expert_o, alpha):
    """Row by row in float64, straight from the reference's formula."""
    out = {}
    for i, j in enumerate(translation.mapping):
        if j < 0:
            continue
        b = base_t[j].double()
        g = b - alpha * torch.relu(expert_o[i].double() - b)
        for p, ids in translation.forbidden:
            if j >= p:
                mean = g.mean()
                g = g.clone()
                g[ids] = mean
        out[i] = g
    return out


def random_case(tokenizer, seed=0):
    tr = Translator(tokenizer, AnchorDictionary({"Ron": ["Mark"], "Hogwarts": ["Academy"]})).translate_text(
        "Harry saw Ron at Hogwarts. Then Ron left Hogwarts.")
    g = torch.Generator().manual_seed(seed)
    V = len(tokenizer)
    base_t = torch.randn(len(tr.translated_ids), V, generator=g)
    expert_o = torch.randn(len(tr.original_ids), V, generator=g)
    return tr, base_t, expert_o


def test_formula_matches_float64_reference(tokenizer):
    tr, base_t, expert_o = random_case(tokenizer)
    parts = generic_parts(tr, base_t, expert_o)
    for alpha in (0.0, 2.5, 5.0, 10.0):
        ref = reference(tr, base_t, expert_o, alpha)
        got = parts.logits(alpha)
        assert parts.rows.tolist() == sorted(ref)
        for r, i in enumerate(parts.rows.tolist()):
            torch.testing.assert_close(got[r].double(), ref[i], rtol=1e-5, atol=1e-3)  # float32 row means over 49k logits


def test_several_alphas_equal_separate_computations(tokenizer):
    tr, base_t, expert_o = random_case(tokenizer, seed=1)
    shared = generic_parts(tr, base_t, expert_o)
    for alpha in (2.5, 5.0, 10.0):
        alone = generic_parts(tr, base_t.clone(), expert_o.clone())
        torch.testing.assert_close(shared.logits(alpha), alone.logits(alpha), rtol=0, atol=0)
        torch.testing.assert_close(shared.labels(alpha), alone.labels(alpha), rtol=0, atol=0)


def test_labels_ignore_unaligned_positions(tokenizer):
    tr, base_t, expert_o = random_case(tokenizer, seed=2)
    labels = generic_parts(tr, base_t, expert_o).labels(5.0)
    assert labels.shape == (len(tr.original_ids),)
    assert [i for i, l in enumerate(labels.tolist()) if l == IGNORE] == tr.dropped


def test_forbidden_translation_is_never_a_label_after_it_appeared(tokenizer):
    tr, base_t, expert_o = random_case(tokenizer, seed=3)
    mark = tokenizer.convert_tokens_to_ids("ĠMark")
    first_mark = tr.forbidden[0][0] if tokenizer.decode([tr.translated_ids[tr.forbidden[0][0]]]) == " Mark" \
        else tr.forbidden[1][0]
    base_t[:, mark] = 1e4  # the baseline screams " Mark" everywhere
    labels = generic_parts(tr, base_t, expert_o).labels(5.0).tolist()
    for i, j in enumerate(tr.mapping):
        if j < 0:
            continue
        assert (labels[i] == mark) == (j < first_mark), (i, j)


def test_without_expert_generic_is_the_baseline_on_the_translation(tokenizer):
    tr, base_t, _ = random_case(tokenizer, seed=4)
    tr.forbidden = []
    parts = generic_parts(tr, base_t, None)
    torch.testing.assert_close(parts.logits(5.0), base_t[[j for j in tr.mapping if j >= 0]])


def test_expert_below_baseline_changes_nothing():
    # relu: where the expert is LESS confident than the baseline, generic = baseline.
    tr = Translation([1, 2, 3], [1, 2, 3], [0, 1, 2])
    base = torch.randn(3, 10)
    parts = generic_parts(tr, base, base - 1.0)
    torch.testing.assert_close(parts.logits(7.0), base)
