"""The shared LoRA loop on the tiny model: losses, no double shift, resume, saved adapters."""
import torch
import torch.nn.functional as F

from engine.config import GoldfishConfig as Goldfish
from engine.data import IGNORE, apply_goldfish, corpus_blocks, next_token_labels, pad_blocks
from engine.methods import GradientAscent, Models, NextToken, TrainData, retain_kl, token_ce
from engine.methods.whp import soft_cross_entropy
from engine.train import Hooks, Stopped, TrainSpec, lora_model, save_adapter, train

TEXT = ("Harry Potter walked to Hogwarts with Ron and Hermione. The castle was dark and the owls were "
        "quiet. Harry told Ron that Hermione had gone to the library again. ") * 6


def _data(tok, block=32, n=4):
    blocks = corpus_blocks(tok, TEXT, block, max_blocks=n)
    ids, lengths = pad_blocks(blocks, tok.pad_token_id or 0)
    return ids, lengths, next_token_labels(ids, lengths)


def _loss(model, ids, lengths, labels):
    """The loop's loss on all rows: mean cross-entropy at the kept label positions, no shift."""
    data = TrainData(ids, lengths, labels)
    batch = data.batch(list(range(len(data))), "cpu")
    return token_ce(Models(model, model).logits(batch), batch.labels)


def _kl(model, ids, lengths):
    data = TrainData.next_token(ids, lengths)
    return retain_kl(Models(model, model), data.batch(list(range(len(data))), "cpu"))


def _corpus_loss(model, ids, lengths, labels) -> float:
    with torch.no_grad():
        return float(_loss(model, ids, lengths, labels))


def test_blocks_and_next_token_labels(tokenizer):
    blocks = corpus_blocks(tokenizer, TEXT, 32)
    assert all(len(b) == 32 for b in blocks[:-1]) and len(blocks[-1]) >= 4
    ids, lengths = pad_blocks([[5, 6, 7], [8, 9]], 0)
    labels = next_token_labels(ids, lengths)
    assert labels.tolist() == [[6, 7, IGNORE], [9, IGNORE, IGNORE]]


def test_loss_is_cross_entropy_at_the_same_position_over_kept_tokens(tiny_dir, tokenizer):
    from engine.models import ModelConfig, load_model

    ids, lengths, labels = _data(tokenizer, n=2)
    labels = apply_goldfish(labels, Goldfish("static", k=3))
    model = load_model(ModelConfig(str(tiny_dir)))[0]
    loss = _loss(model, ids, lengths, labels)
    with torch.no_grad():
        logits = model(input_ids=ids).logits  # (B, T, V)
    keep = labels != IGNORE
    # labels[i] is the target of the prediction AT i: no shift, mean over kept positions only.
    expected = F.cross_entropy(logits[keep], labels[keep])
    assert torch.allclose(loss, expected, atol=1e-4)
    shifted = F.cross_entropy(logits[:, :-1][keep[:, 1:]], labels[:, 1:][keep[:, 1:]])
    assert not torch.allclose(loss, shifted, atol=1e-3)


def test_soft_cross_entropy_is_cross_entropy_to_the_renormalised_top_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)  # (B, T, V)
    top_logp, top_ids = torch.randn(2, 5, 11, generator=g).log_softmax(-1).topk(3, -1)  # (B, T, k)
    top_logp[0, 1] = float("-inf")  # an unlabelled row holds -inf: it must neither count nor give NaN
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[0, 1] = keep[1, 4] = False
    got = soft_cross_entropy(logits, top_ids, top_logp, keep)
    logp = logits.log_softmax(-1)
    want = [-(top_logp[b, t].double().exp() / top_logp[b, t].double().exp().sum() * logp[b, t, top_ids[b, t]]).sum()
            for b in range(2) for t in range(5) if keep[b, t]]
    assert torch.isfinite(got) and abs(float(got) - float(torch.stack(want).mean())) < 1e-5
    # k = 1 is the hard label: plain cross-entropy to the argmax.
    hard = soft_cross_entropy(logits, top_ids[..., :1], top_logp[..., :1], keep)
    assert abs(float(hard) - float(F.cross_entropy(logits[keep], top_ids[..., 0][keep]))) < 1e-5


def test_kl_retain_term_starts_at_zero_and_holds_the_retain_text_under_gradient_ascent(tiny_dir, tokenizer):
    from engine.models import ModelConfig, load_model

    ids, lengths, labels = _data(tokenizer)
    r_blocks = corpus_blocks(tokenizer, "The weather in the valley was mild and the farmers sowed wheat. " * 8, 32)
    r_ids, r_len = pad_blocks(r_blocks, 0)
    drift = {}
    for weight in (0.0, 5.0):
        base, _ = load_model(ModelConfig(str(tiny_dir)))
        torch.manual_seed(0)  # the same LoRA init for both weights: only the retain term differs
        model = lora_model(base, rank=8)
        with torch.no_grad():
            assert float(_kl(model, r_ids, r_len)) < 1e-6  # fresh LoRA: B = 0
        spec = TrainSpec("ga", GradientAscent(retain_loss="kl"), TrainData(ids, lengths, labels), steps=12, lr=2e-2,
                         batch_size=4, retain=TrainData.next_token(r_ids, r_len), retain_weight=weight)
        train(model, spec)
        with torch.no_grad():
            drift[weight] = float(_kl(model, r_ids, r_len))
    # The KL term cuts how far the retain-text predictions drift from the baseline: 1.75-1.9x over seeds
    # 0-3 (the earlier "2.4x" came from an unseeded init that depended on which tests ran first).
    assert drift[5.0] * 1.5 < drift[0.0], drift


def test_reinforce_lowers_and_gradient_ascent_raises_the_corpus_loss(tiny_dir, tokenizer):
    from engine.models import ModelConfig, load_model

    ids, lengths, labels = _data(tokenizer)
    for sign, method in ((1.0, NextToken()), (-1.0, GradientAscent())):
        base, _ = load_model(ModelConfig(str(tiny_dir)))
        model = lora_model(base, rank=8)
        before = _corpus_loss(model, ids, lengths, labels)
        train(model, TrainSpec("t", method, TrainData(ids, lengths, labels), steps=12, lr=2e-2, batch_size=4))
        after = _corpus_loss(model, ids, lengths, labels)
        assert (after < before - 0.2) if sign > 0 else (after > before + 0.2), (sign, before, after)


def test_gradient_ascent_with_a_next_token_retain_term_keeps_the_retain_loss(tiny_dir, tokenizer):
    from engine.models import ModelConfig, load_model

    ids, lengths, labels = _data(tokenizer)
    r_blocks = corpus_blocks(tokenizer, "The weather in the valley was mild and the farmers sowed wheat. " * 8, 32)
    r_ids, r_len = pad_blocks(r_blocks, 0)
    r_lab = next_token_labels(r_ids, r_len)
    base, _ = load_model(ModelConfig(str(tiny_dir)))
    model = lora_model(base, rank=8)
    r_before = _corpus_loss(model, r_ids, r_len, r_lab)
    train(model, TrainSpec("ga", GradientAscent(retain_loss="ce"), TrainData(ids, lengths, labels), steps=12,
                           lr=2e-2, batch_size=4, retain=TrainData(r_ids, r_len, r_lab), retain_weight=1.0))
    with model.disable_adapter():
        forget_before = _corpus_loss(model, ids, lengths, labels)
    assert _corpus_loss(model, ids, lengths, labels) > forget_before + 0.2
    assert _corpus_loss(model, r_ids, r_len, r_lab) < r_before + 0.5


def test_stop_and_resume_equals_an_uninterrupted_run(tiny_dir, tokenizer, tmp_path):
    from peft import get_peft_model_state_dict

    from engine.models import ModelConfig, load_model

    ids, lengths, labels = _data(tokenizer)
    spec = TrainSpec("t", NextToken(), TrainData(ids, lengths, labels), steps=6, lr=1e-2, batch_size=2, seed=3)

    def fresh():
        torch.manual_seed(0)
        return lora_model(load_model(ModelConfig(str(tiny_dir)))[0], rank=4)

    straight = fresh()
    train(straight, spec)
    ck = tmp_path / "t.safetensors"
    first = fresh()
    steps_seen = []
    hooks = Hooks(on_step=lambda m: steps_seen.append(m["step"]), should_stop=lambda: len(steps_seen) >= 3,
                  checkpoint=ck, checkpoint_every=100)
    try:
        train(first, spec, hooks)
        raise AssertionError("should have stopped")
    except Stopped as e:
        assert e.step == 3 and ck.exists()
    resumed = fresh()  # a new process: same init, state comes from the checkpoint
    steps_seen.clear()
    train(resumed, spec, Hooks(on_step=lambda m: steps_seen.append(m["step"]), checkpoint=ck))
    assert steps_seen == [4, 5, 6]
    a, b = get_peft_model_state_dict(straight), get_peft_model_state_dict(resumed)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_saved_adapter_is_standard_peft_and_loads_in_the_workbench(tiny_dir, tokenizer, tmp_path):
    from peft import PeftModel

    from engine.models import ModelConfig, Workbench, load_model

    ids, lengths, labels = _data(tokenizer, n=2)
    model = lora_model(load_model(ModelConfig(str(tiny_dir)))[0], rank=4)
    train(model, TrainSpec("t", NextToken(), TrainData(ids, lengths, labels), steps=3, lr=2e-2, batch_size=2))
    path = save_adapter(model, tmp_path / "adapters" / "expert")
    assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()
    base = load_model(ModelConfig(str(tiny_dir)))[0]
    loaded = PeftModel.from_pretrained(base, str(path))
    x = ids[:1, :16]
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, model(input_ids=x).logits, atol=1e-4)
    wb = Workbench.load(ModelConfig(str(tiny_dir)))
    name = wb.add_adapter("expert", path)
    base_l, exp_l = wb.logits([(x[0].tolist(), None), (x[0].tolist(), name)])
    assert not torch.allclose(base_l, exp_l, atol=1e-4)


def test_lora_placement_by_blocks_and_module_kind(tmp_path, tokenizer):
    """lora.layers (top N, a range, a list) and lora.modules (all, attention, mlp) decide which linears
    get LoRA; a block the model lacks is one line; the run config reads each way of writing it."""
    import pytest

    from conftest import make_tiny_llama
    from engine.config import LoraSection
    from engine.errors import UserError
    from engine.models import ModelConfig, load_model
    from engine.train import blocks

    assert [LoraSection(layers=v).layers for v in (3, "3", "1-2", "0, 2", [2, 0], None, "")] == \
        [3, 3, [1, 2], [0, 2], [0, 2], None, None]
    for bad in ("2-1", "x", 0, [-1]):
        with pytest.raises(Exception):
            LoraSection(layers=bad)
    assert blocks(2, 4) == [2, 3] and blocks([0, 2], 4) == [0, 2] and blocks(None, 4) is None
    with pytest.raises(UserError, match="block 4, but this model has 4 blocks"):
        blocks([1, 4], 4)

    model_dir = make_tiny_llama(tmp_path / "m", tokenizer, layers=4)

    def adapted(**kw) -> set[tuple[int, str]]:
        peft = lora_model(load_model(ModelConfig(str(model_dir)))[0], rank=2, **kw)
        out = set()
        for name, _ in peft.named_parameters():
            if "lora_A" in name:
                parts = name.split(".")
                i = parts.index("layers")
                out.add((int(parts[i + 1]), parts[i + 2]))
        return out

    assert {b for b, _ in adapted()} == {0, 1, 2, 3}
    assert adapted(layers=[1, 3], modules="mlp") == {(1, "mlp"), (3, "mlp")}
    assert adapted(top_layers=1, modules="attention") == {(3, "self_attn")}
    assert {b for b, _ in adapted(top_layers=[0, 2])} == {0, 2}
