"""The unlearning methods beside WHP (engine/methods/): each loss against a direct float64 computation,
the neutral value of a fresh adapter, RMU's truncated forward, SAM, and every method through the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import ASSETS, cli, make_tiny_llama
from engine.data import IGNORE, pad_blocks
from engine.methods import METHODS, NPO, RMU, UNDIAL, Batch, GradientAscent, NextToken, SimNPO, TrainData
from engine.methods.elm import ELM, ElmOptions, elm_parts
from engine.methods.npo import NpoOptions
from engine.methods.simnpo import SimNpoOptions
from engine.methods.undial import UndialOptions


class Fixed:
    """Models with fixed float64 logits: the loss maths alone (the losses compute in float32, as in training)."""

    def __init__(self, logits, ref):
        self._logits, self._ref = logits, ref

    def logits(self, batch):
        return self._logits

    def reference_logits(self, batch):
        return self._ref.clone()


def _batch(B=2, T=5, V=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, 3:] = IGNORE  # a short row
    labels[1, 0] = IGNORE
    mask = torch.ones(B, T, dtype=torch.long)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ref = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    return Batch(torch.zeros(B, T, dtype=torch.long), mask, labels), logits, ref


def _seq_nll(logits, labels):
    """Summed NLL per row and labelled count, written out position by position."""
    s, n = [], []
    for b in range(labels.shape[0]):
        tot, cnt = 0.0, 0
        for t in range(labels.shape[1]):
            if labels[b, t] != IGNORE:
                tot -= float(logits[b, t].log_softmax(-1)[labels[b, t]])
                cnt += 1
        s.append(tot)
        n.append(cnt)
    return s, n


def test_npo_simnpo_undial_and_gradient_ascent_losses_equal_float64_references():
    batch, logits, ref = _batch()
    models = Fixed(logits, ref)
    s_t, n = _seq_nll(logits, batch.labels)
    s_r, _ = _seq_nll(ref, batch.labels)
    beta = 0.1
    want = sum((2 / beta) * math.log1p(math.exp(-beta * (a - b))) for a, b in zip(s_t, s_r)) / 2
    assert float(NPO(NpoOptions(beta=beta)).loss(models, batch)) == pytest.approx(want, rel=1e-6)
    o = SimNpoOptions(beta=4.5, delta=0.3, forget_weight=0.125)
    want = 0.125 * sum(-(2 / 4.5) * math.log(1 / (1 + math.exp(-4.5 * (a / c - 0.3)))) for a, c in zip(s_t, n)) / 2
    assert float(SimNPO(o).loss(models, batch)) == pytest.approx(want, rel=1e-6)
    ce = []
    for b in range(2):
        for t in range(5):
            if batch.labels[b, t] != IGNORE:
                z = ref[b, t].clone()
                z[batch.labels[b, t]] -= 10.0
                ce.append(-float((z.softmax(-1) * logits[b, t].log_softmax(-1)).sum()))
    assert float(UNDIAL(UndialOptions(beta=10.0)).loss(models, batch)) == pytest.approx(sum(ce) / len(ce), rel=1e-6)
    assert float(GradientAscent().loss(models, batch)) == pytest.approx(-sum(s_t) / sum(n), rel=1e-6)
    assert float(NextToken().loss(models, batch)) == pytest.approx(sum(s_t) / sum(n), rel=1e-6)


def test_elm_target_is_base_plus_ramped_novice_minus_expert():
    g = torch.Generator().manual_seed(1)
    base, nov, exp = (torch.randn(6, 9, generator=g, dtype=torch.float64) for _ in range(3))
    o = ElmOptions(eta=3.0, ramp=4, temperature=1.2, top_k=3)
    parts = elm_parts(base, nov, exp, o)
    for i in range(6):
        lp = lambda z: (z[i] / 1.2).log_softmax(-1)  # noqa: E731
        want = lp(base) + 3.0 * min(1.0, i / 4) * (lp(nov) - lp(exp))
        assert torch.allclose(parts.logits(3.0)[i].double(), want, atol=1e-5)  # float32, as in training
    ids, logp = parts.soft(3.0, 3)
    assert torch.equal(ids, parts.logits(3.0).topk(3, -1).indices)
    assert torch.allclose(logp.exp().sum(-1), parts.logits(3.0).log_softmax(-1).exp().topk(3, -1).values.sum(-1))
    assert torch.equal(parts.logits(0.0), parts.base)  # eta 0: the baseline's own (tempered) distribution


@pytest.fixture(scope="module")
def deep_dir(tmp_path_factory, tokenizer):
    return make_tiny_llama(tmp_path_factory.mktemp("deep") / "m", tokenizer, layers=4)


def _fresh(model_dir, rank=4, layers=None):
    from engine.config import ModelConfig
    from engine.models import load_model
    from engine.train import lora_model

    torch.manual_seed(0)
    return lora_model(load_model(ModelConfig(str(model_dir)))[0], rank=rank, layers=layers)


def _rows(tokenizer, n=4, block=16):
    text = "Harry walked to Hogwarts with Ron and Hermione; the owls were quiet in the tower. " * 8
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return TrainData.next_token(*pad_blocks([ids[i * block:(i + 1) * block] for i in range(n)], 0))


def test_a_fresh_adapter_gives_the_neutral_values(tiny_dir, tokenizer):
    from engine.methods import Models, retain_kl

    model = _fresh(tiny_dir)
    models = Models(model, model)
    data = _rows(tokenizer)
    batch = data.batch([0, 1, 2, 3], "cpu")
    with torch.no_grad():
        assert float(NPO(NpoOptions(beta=0.1)).loss(models, batch)) == pytest.approx(20 * math.log(2), rel=1e-6)
        assert float(retain_kl(models, batch)) < 1e-6
        rmu = RMU()
        rmu.prepare(models, data, "cpu")
        assert float(rmu.retain_loss(models, batch)) == 0.0  # h_theta == h_ref before any step
        assert float(rmu.loss(models, batch)) > 0


def test_rmu_never_computes_the_layers_above_its_layer(deep_dir, tokenizer):
    from engine.methods.rmu import RmuOptions, decoder_of
    from engine.train import TrainSpec, train

    rmu = RMU(RmuOptions(layer=1, trained_layers=2))
    model = _fresh(deep_dir, layers=rmu.lora_layers(4, None))
    calls = {i: 0 for i in range(4)}
    head = []
    for i, layer in enumerate(decoder_of(model).layers):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    model.get_base_model().lm_head.register_forward_hook(lambda m, a, o: head.append(1))
    data = _rows(tokenizer)
    train(model, TrainSpec("unlearn", rmu, data, steps=2, lr=1e-2, batch_size=2, retain=data))
    assert calls[0] > 0 and calls[1] > 0
    assert calls[2] == calls[3] == 0 and not head, (calls, len(head))
    trained = {n.split(".layers.")[1].split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"0", "1"}  # LoRA on l-1..l only
    assert len(decoder_of(model).layers) == 4  # the truncation is undone


def test_sam_at_rho_zero_equals_the_method_and_restores_the_weights_exactly(tiny_dir, tokenizer):
    from peft import get_peft_model_state_dict

    from engine.methods import Models
    from engine.train import TrainSpec, _sam_forget, train

    data = _rows(tokenizer)
    out = {}
    for rho in (None, 0.0):
        model = _fresh(tiny_dir)
        train(model, TrainSpec("unlearn", NPO(), data, steps=3, lr=1e-2, batch_size=2, retain=data, sam_rho=rho))
        out[rho] = get_peft_model_state_dict(model)
    assert all(torch.equal(out[None][k], out[0.0][k]) for k in out[None]), "rho 0: bit for bit the plain method"
    model = _fresh(tiny_dir)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.1)  # a non-fresh adapter: the perturbation has something to move
    before = [p.detach().clone() for p in params]

    class Plain:
        def backward(self, loss):
            loss.backward()

    _sam_forget(Models(model, model), NPO(), data.batch([0, 1], "cpu"), params, 0.5, 1, Plain())
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "theta is restored exactly"
    assert all(p.grad is not None for p in params)


def test_sam_changes_the_step_and_costs_a_second_forget_pass(tiny_dir, tokenizer):
    from peft import get_peft_model_state_dict

    from engine.train import TrainSpec, train

    data = _rows(tokenizer)
    res = {}
    for rho in (None, 0.5):
        model = _fresh(tiny_dir)
        train(model, TrainSpec("unlearn", GradientAscent(), data, steps=2, lr=1e-2, batch_size=2, sam_rho=rho))
        res[rho] = get_peft_model_state_dict(model)
    assert any(not torch.equal(res[None][k], res[0.5][k]) for k in res[None])


@pytest.mark.parametrize("verb,extra", [
    ("npo", ["--beta", "0.2"]), ("simnpo", []), ("undial", ["--beta", "5"]), ("rmu", ["--layer", "1"]),
    ("elm", ["--concept", "the wizard school", "--eta", "1.5"]), ("gradient-ascent", ["--sam-rho", "0.05"]),
])
def test_every_method_runs_two_steps_through_the_cli_and_saves_a_loadable_adapter(verb, extra, tiny_dir, tmp_path):
    from engine.config import ModelConfig
    from engine.models import Workbench

    out = tmp_path / verb
    r = cli(verb, "--corpus", str(ASSETS / "demo_corpus.txt"), "--model", str(tiny_dir), "--steps", "2",
                "--block-size", "32", "--max-blocks", "4", "--batch-size", "2", "--lora-rank", "4",
                "--retain", str(ASSETS / "retain_train.txt"), "--out", str(out), *extra,
                env={"OBLIVIATE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["done_phases"][-1] == "unlearn"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == verb.replace("-", "_")
    wb = Workbench.load(ModelConfig(str(tiny_dir)))
    name = wb.add_adapter("u", out / "adapters" / "unlearned")
    a, b = wb.logits([([1, 2, 3, 4], None), ([1, 2, 3, 4], name)])
    assert not torch.allclose(a, b), "the adapter learned something"


def test_a_bad_method_option_is_one_error_line(tiny_dir, tmp_path):
    common = ["--corpus", str(ASSETS / "demo_corpus.txt"), "--model", str(tiny_dir), "--out", str(tmp_path / "r")]
    for verb, extra, fragment in (("npo", ["--beta", "-1"], "npo.beta"), ("simnpo", ["--forget-weight", "0"], "forget_weight"),
                                  ("rmu", ["--layer", "9", "--steps", "1", "--max-blocks", "2", "--block-size", "16"],
                                   "past the model's last layer")):
        r = cli(verb, *common, *extra, env={"OBLIVIATE_HOME": str(tmp_path / "home")})
        errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and fragment in errors[0], (verb, r.stderr[-1500:])
        assert "Traceback" not in r.stderr


def test_the_registry_gives_each_method_a_config_section_a_form_and_a_verb():
    from engine.cli import build_parser
    from engine.config import form_fields, run_config

    verbs = build_parser()._subparsers._group_actions[0].choices
    for name, m in METHODS.items():
        if m.Options is not None:
            paths = {s["path"] for s in form_fields(name)}
            assert any(p.startswith(f"{name}.") for p in paths), name
        assert name.replace("_", "-") in verbs or name in ("whp", "reinforce_only"), name
    cfg = run_config({"corpus": str(ASSETS / "demo_corpus.txt"), "method": "elm", "elm": {"concept": "X", "eta": 4}})
    assert cfg.options.eta == 4 and isinstance(METHODS["elm"].from_config(cfg), ELM)


def test_inspect_shows_the_elm_target_as_the_generic_row(tiny_wb):
    from engine.inspection import inspect
    from engine.methods.elm import persona_prefixes

    o = ElmOptions(concept="wizards", eta=2.0, ramp=2)
    prompt = "Harry went to the castle with Ron and"
    view = inspect(tiny_wb, prompt, elm=o, top_k=3).view(2.0)
    assert view["target"] == "elm" and any("ELM-style" in n for n in view["notes"])
    tok = tiny_wb.tokenizer
    ids = tok(prompt)["input_ids"]
    novice, expert = persona_prefixes(tok, o)
    base, nov, exp = tiny_wb.logits([(ids, None), (novice + ids, None), (expert + ids, None)])
    want = elm_parts(base, nov[len(novice):], exp[len(expert):], o).logits(2.0)[-1].softmax(-1).topk(3)
    last = view["positions"][-1]["generic"]
    assert [t["id"] for t in last] == want.indices.tolist()
    assert [t["prob"] for t in last] == pytest.approx(want.values.tolist(), rel=1e-4)
    again = inspect(tiny_wb, prompt, elm=o, top_k=3)
    assert again.view(0.0)["positions"][-1]["generic"][0]["id"] == int(base[-1].argmax())  # eta 0: the baseline


def test_the_cli_inspects_with_the_elm_target(tiny_dir):
    r = cli("inspect", "Harry went to the castle with Ron and", "--model", str(tiny_dir), "--target", "elm",
            "--concept", "the wizard school", "--alpha", "2", "--json")
    assert r.returncode == 0, r.stderr[-1500:]
    view = json.loads(r.stdout)
    assert view["target"] == "elm" and all(p["generic"] for p in view["positions"])
    assert any("the wizard school" in n for n in view["notes"])
    r = cli("inspect", "Ron and", "--model", str(tiny_dir), "--target", "elm", "--concept", "")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "concept" in r.stderr
