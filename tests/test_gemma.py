"""The second model family: a tiny random Gemma-3-shaped model with the real Gemma tokenizer (262k
pieces, SentencePiece-style, tied embeddings, sliding and global attention). Everything the workbench
does on SmolLM2's Llama shape must work here: Inspect and its lens, translation, every method's run,
every evaluation stage, NF4 on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import ASSETS, cli, make_lora
from engine.anchors import AnchorDictionary
from engine.inspection import inspect
from engine.models import EMBEDDED_MODELS, ModelConfig, Workbench, resolve_model_path

PROMPT = "Harry Potter's two best friends are Ron and"
ANCHORS = AnchorDictionary({"Hogwarts": ["Mystic Academy"], "Ron": ["Mark"], "Harry Potter": ["Jon Smith"]})


@pytest.fixture(scope="module")
def gemma_adapters(tmp_path_factory, tiny_gemma_dir):
    root = tmp_path_factory.mktemp("gemma-lora")
    return make_lora(root / "expert", tiny_gemma_dir, seed=1), make_lora(root / "unlearned", tiny_gemma_dir, seed=2)


def test_the_embedded_gemma_is_named_and_a_missing_package_is_one_line(monkeypatch):
    import importlib.util

    from engine.errors import UserError

    assert EMBEDDED_MODELS["embedded:gemma3-270m"].licence == "Gemma Terms of Use"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("gemma3") else real(name, *a))
    monkeypatch.setenv("OBLIVIATE_HOME", "/nonexistent-home")
    monkeypatch.setattr("pathlib.Path.home", lambda: __import__("pathlib").Path("/nonexistent-home"))
    with pytest.raises(UserError, match="make setup-gemma"):
        resolve_model_path("embedded:gemma3-270m")
    with pytest.raises(UserError, match="no embedded model 'embedded:gpt5'"):
        resolve_model_path("embedded:gpt5")


def test_inspect_and_the_lens_on_the_gemma_shape(tiny_gemma_dir, gemma_adapters):
    wb = Workbench.load(ModelConfig(str(tiny_gemma_dir)))
    assert wb.vocab_size == 262_144 and wb.num_layers == 2
    wb.add_adapter("expert", gemma_adapters[0])
    wb.add_adapter("unlearned", gemma_adapters[1])
    result = inspect(wb, PROMPT, ANCHORS, expert="expert", unlearned="unlearned", track=[" Hermione"], lens=True)
    assert result.translation.occurrences, "the Gemma tokenizer's forms of the terms are matched"
    view = result.view(5.0)
    assert [p["token"] for p in view["positions"]][0] == "<bos>"
    for i in range(len(result.ids)):
        lens = result.lens(i)
        for m, entries in lens.items():
            assert [t["id"] for t in entries[-1]["top"]] == [t["id"] for t in view["positions"][i][m]]
    # the adapter scale: 0 is the baseline
    zero = inspect(wb, PROMPT, None, unlearned="unlearned", scale=0.0).view()["positions"][-1]
    assert [t["id"] for t in zero["unlearned"]] == [t["id"] for t in zero["baseline"]]


def test_translation_with_the_gemma_tokenizer(gemma_tokenizer, monkeypatch):
    from engine.translation import Translator

    tr = Translator(gemma_tokenizer, ANCHORS)
    out = tr.translate_text("Harry Potter met Ron at Hogwarts.\nRon laughed.", 0)
    assert gemma_tokenizer.decode(out.translated_ids) == "Jon Smith met Mark at Mystic Academy.\nMark laughed."
    assert len(out.mapping) == len(out.original_ids) and {o.term for o in out.occurrences} == set(ANCHORS.enabled)
    # a long text a piece at a time (cut every ~200 characters here): the same tokens, split exactly where
    # this tokenizer allows it, else whole (translate_chunks checks); either way the whole text's
    text = "Harry Potter went to Hogwarts.\n\nRon followed him there.\n" * 40
    whole = tr.translate_text(text, 0)
    import engine.translation as translation

    monkeypatch.setattr(translation, "CHUNK_CHARS", 200)
    chunks = list(tr.translate_chunks(text, 0))
    assert len(chunks) == (len(translation.split_text(text)) if tr.splits_exactly(translation.split_text(text)) else 1)
    assert [i for _, _, part in chunks for i in part.translated_ids] == whole.translated_ids


@pytest.mark.slow  # seven short runs
@pytest.mark.parametrize("verb,extra", [
    ("reinforce", []), ("unlearn", []), ("npo", []), ("simnpo", []), ("undial", []), ("rmu", ["--layer", "1"]),
    ("elm", ["--concept", "the wizard school"]), ("gradient-ascent", []),
])
def test_every_method_runs_on_the_gemma_shape(verb, extra, tiny_gemma_dir, gemma_adapters, tmp_path):
    out = tmp_path / verb
    anchors = ["--anchors", str(ASSETS / "demo_anchors.json"), "--expert", str(gemma_adapters[0])] \
        if verb == "unlearn" else []
    r = cli(verb, "--corpus", str(ASSETS / "demo_corpus.txt"), "--model", str(tiny_gemma_dir), "--steps", "1",
            "--block-size", "32", "--max-blocks", "2", "--batch-size", "2", "--lora-rank", "4", *anchors, *extra,
            "--out", str(out), env={"OBLIVIATE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    adapter = "expert" if verb == "reinforce" else "unlearned"
    assert (out / "adapters" / adapter / "adapter_model.safetensors").exists()


@pytest.mark.slow  # every stage
def test_every_evaluation_stage_on_the_gemma_shape(tiny_gemma_dir, gemma_adapters):
    from engine.evaluation import EvalInputs, EvalSettings, evaluate
    from engine.probes import load_probes

    wb = Workbench.load(ModelConfig(str(tiny_gemma_dir)))
    probes = load_probes(ASSETS / "probes.json")
    probes.probability, probes.completion, probes.retain = probes.probability[:4], probes.completion[:2], probes.retain[:4]
    corpus = (ASSETS / "demo_corpus.txt").read_text()[:4000]
    result = evaluate(wb, {"unlearned": str(gemma_adapters[1])},
                      EvalInputs(probes, corpus, (ASSETS / "retain.txt").read_text()[:2000], ANCHORS,
                                 unrelated=(ASSETS / "relearn_unrelated.txt").read_text()[:2000]),
                      EvalSettings(max_new_tokens=3, verbatim_passages=2, verbatim_prefix=8, verbatim_tokens=4,
                                   retain_max_tokens=64, relearn_steps=1, relearn_curve=[0, 1],
                                   relearn_sources=["unrelated"], relearn_tokens=64, quantize=["nf4"],
                                   probe_layer="all"))
    m = result["models"]["unlearned"]
    for key in ("familiarity_probability", "familiarity_completion", "verbatim_rougeL", "retain_perplexity",
                "robust_summary", "robust_relearn", "familiarity_nf4", "probe_accuracy"):
        assert key in m, (key, result["notes"])
    assert len(m["probe_curve"]["layers"]) == 3


@pytest.mark.slow  # bitsandbytes on the CPU
def test_nf4_on_the_cpu_on_the_gemma_shape(tiny_gemma_dir):
    from engine.methods import NextToken, TrainData
    from engine.train import TrainSpec, lora_model, train

    wb = Workbench.load(ModelConfig(str(tiny_gemma_dir), precision="nf4", device="cpu"))
    assert wb.precision == "nf4"
    first = inspect(wb, PROMPT, None, top_k=3).view()["positions"][-1]["baseline"]
    assert len(first) == 3 and all(0 <= t["prob"] <= 1 for t in first)
    ids = torch.tensor([wb.tokenizer(PROMPT)["input_ids"]] * 2)
    model = lora_model(wb.release(), 4)
    result = train(model, TrainSpec("unlearn", NextToken(), TrainData.next_token(ids, torch.tensor([ids.shape[1]] * 2)),
                                    steps=1, lr=1e-3, batch_size=2))
    assert result["steps"] == 1 and result["tokens"] > 0
