"""Is the forgetting real? Each attack and metric with a known answer where one exists: the recovered
fraction on hand-made numbers, a relearning slice that never states the held-out answers, one
relearning run per curve, in-context attacks split by stated answers, extraction strength of a model
that copies its input (0) and of one that knows the passage (1), a linear probe on separable
features (1), quantised evaluation on the CPU, lm-eval offline with the network blocked, and the
Evaluate page's panels."""
from __future__ import annotations

import json
import logging
import socket

import pytest
import torch

from conftest import ASSETS
from engine.errors import UserError
from engine.evaluation import EvalInputs, EvalSettings, evaluate, format_table
from engine.evaluation import attacks, linear_probe, metrics, relearn
from engine.probes import Probes, load_probes
from engine.evaluation.settings import PAPER_TASKS
from engine.text import mentions
from helpers import CORPUS, PROBES, RESULT, qv_lora

QUIET = dict(verbatim_passages=0, retain_max_tokens=0, robustness=False, linear_probe=False, max_new_tokens=2)
PROBES_ONLY = {**PROBES, "completion": []}


@pytest.fixture()
def home(home_with_a_run):
    return home_with_a_run


def _inputs(probes, corpus=CORPUS, retain="", related="", unrelated=""):
    return EvalInputs(Probes.from_dict(probes) if isinstance(probes, dict) else probes, corpus, retain, None,
                      related, unrelated)


# -- the recovered fraction ---------------------------------------------------------------------------
def test_recovered_fraction_on_hand_made_numbers():
    r = relearn.recovered
    assert r(0.3, 0.1, 0.5) == pytest.approx(0.5)  # half of the forgotten 0.4 came back
    assert r(0.1, 0.1, 0.5) == 0.0 and r(0.5, 0.1, 0.5) == pytest.approx(1.0)
    assert r(0.6, 0.1, 0.5) == pytest.approx(1.25)  # past the baseline
    assert r(0.05, 0.1, 0.5) == pytest.approx(-0.125)  # forgotten further
    assert r(0.7, 0.5, 0.5) is None  # baseline == model: nothing was forgotten, nothing to recover
    assert r(0.7, 0.6, 0.5) is None  # the model knows more than the baseline (an expert)
    assert r(0.7, 0.49, 0.5) is None  # a 2% drop: a ratio over it would be noise
    assert r(None, 0.1, 0.5) is None


# -- the relearning split -----------------------------------------------------------------------------
SPLIT_PROBES = [{"prompt": f"q{i}", "target": f" {w}"} for i, w in
                enumerate(["Hermione", "Hogwarts", "Snape", "Hedwig", "Fawkes", "Dobby"])]
SPLIT_CORPUS = ("Harry and Hermione went to Hogwarts. Hermione read in the library at Hogwarts. "
                "Snape taught potions at Hogwarts. The owl Hedwig carried letters. Ronald ate toast. "
                "The castle had many towers. Dobby was a house-elf who freed himself. The lake was cold. "
                "Hermione's cat slept by the fire. The train left at eleven.") * 3


def _count(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("texts", [
    {"forget": SPLIT_CORPUS, "related": "A dragon slept under the hill. Hermione is not here. The knight rode north."},
    {"forget": (ASSETS / "demo_corpus.txt").read_text(), "related": (ASSETS / "relearn_related.txt").read_text(),
     "unrelated": (ASSETS / "relearn_unrelated.txt").read_text()},
], ids=["synthetic", "assets"])
def test_relearning_slices_never_state_the_held_out_answers(texts):
    probes = SPLIT_PROBES if len(texts) == 2 else load_probes(ASSETS / "probes.json").probability
    sp = relearn.split(probes, texts, 60, _count)
    assert 1 <= len(sp.held_out) <= len(probes) // 2
    held = [relearn.answer(probes[i]) for i in sp.held_out]
    for src, text in sp.slices.items():
        assert text.strip(), src
        for s in relearn.sentences(text):
            assert not any(mentions(s, a) for a in held), (src, s)
    if len(texts) == 2:
        # rarest first: Fawkes (never in the corpus), then Snape and Hedwig (3 sentences each, like Dobby,
        # which comes later in the file); Hermione and Hogwarts (in most sentences) stay in the slice's reach
        assert sorted(held) == ["Fawkes", "Hedwig", "Snape"]
        assert "Hermione" in sp.slices["forget"] and "Ronald ate toast" in sp.slices["forget"]


def test_no_probe_can_be_held_out_when_every_sentence_states_every_answer():
    corpus = "Hermione and Snape met. " * 20
    probes = [{"prompt": "a", "target": " Hermione"}, {"prompt": "b", "target": " Snape"}]
    assert relearn.split(probes, {"forget": corpus}, 20, _count).held_out == []


# -- the relearning curve -------------------------------------------------------------------------------
CURVE_PROBES = {"probability": [{"prompt": "Harry Potter's two best friends are Ron and", "target": " Hermione"},
                                {"prompt": "The owl of Harry Potter is called", "target": " Hedwig"}],
                "retain": [{"prompt": "Frodo carried the One Ring to Mount", "target": " Doom"}]}
UNRELATED = "Bread needs flour, water, salt and yeast. Knead the dough until smooth. Bake it in a hot oven. " * 4


def test_relearning_curve_trains_once_per_model_and_source_and_scores_every_step(tiny_wb, tiny_unlearned_dir,
                                                                                  monkeypatch):
    import engine.train as train_mod

    calls = []
    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda model, spec, hooks=None: calls.append(spec.steps) or
                        real(model, spec, hooks))
    settings = EvalSettings(**QUIET, relearn_curve=[0, 3, 6], relearn_sources=["forget", "unrelated"],
                            relearn_lr=1e-2, relearn_tokens=128)
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)},
                      _inputs(CURVE_PROBES, unrelated=UNRELATED), settings)
    assert calls == [6] * 4  # 2 models x 2 sources, each one run of the last step, never one per step
    assert tiny_wb.adapters == {}
    for m in ("baseline", "unlearned"):
        curve = result["models"][m]["relearn_curve"]
        assert curve["steps"] == [0, 3, 6] and curve["held_out"] == 1  # " Hedwig": the corpus never says it
        for src in ("forget", "unrelated"):
            fam = curve["sources"][src]["familiarity"]
            assert len(fam) == 3 and all(0 < f < 1 for f in fam)
            assert fam[2] != pytest.approx(fam[0], rel=1e-4)  # it trained
            assert result["models"][m][f"relearn_{src}"] == fam[2]
    # step 0 is the model itself: the baseline's fresh LoRA is the baseline, the adapter's copy the adapter
    plain = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)},
                     _inputs({**CURVE_PROBES, "probability": CURVE_PROBES["probability"][1:]}),
                     EvalSettings(**QUIET))
    for m in ("baseline", "unlearned"):
        assert result["models"][m]["relearn_curve"]["sources"]["forget"]["familiarity"][0] == pytest.approx(
            plain["models"][m]["familiarity_probability"], rel=1e-4)


def test_a_curve_point_equals_a_run_that_stops_there(tiny_wb):
    """Scoring mid-run leaves the run as it was: step 3 of a 6-step run == a 3-step run."""
    tok = tiny_wb.tokenizer
    ids = tok(UNRELATED, add_special_tokens=False)["input_ids"]
    blocks = [ids[:40], ids[40:80]]
    items = [(tok(p["prompt"])["input_ids"], tok(p["target"], add_special_tokens=False)["input_ids"])
             for p in CURVE_PROBES["probability"]]
    long = relearn.curve(tiny_wb, None, blocks, items, [3, 6], 1e-2, 4, 0)
    short = relearn.curve(tiny_wb, None, blocks, items, [3], 1e-2, 4, 0)
    assert long[0] == pytest.approx(short[0], rel=1e-5)
    assert long[1] != pytest.approx(long[0], rel=1e-4)


# -- in-context attacks -----------------------------------------------------------------------------------
def test_in_context_attacks_score_stated_and_unstated_answers_apart(tiny_wb, tiny_unlearned_dir):
    probes = {**PROBES_ONLY, "summary": "Harry's friends were Hermione and Ronald Weasley.",
              "probability": PROBES["probability"] + [{"prompt": "His friend was", "target": " Ron"}],
              "few_shot": [{"question": "Where did Harry study?", "answer": "Hogwarts"}]}
    p = Probes.from_dict(probes)
    assert attacks.stated(p.summary, p.probability) == [True, False, False]  # "Ron" is not in "Ronald"
    assert attacks.few_shot_text(p.few_shot) == "Question: Where did Harry study?\nAnswer: Hogwarts"
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, _inputs(p),
                      EvalSettings(**{**QUIET, "robustness": True}))
    tok = tiny_wb.tokenizer
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    for m, name in (("baseline", None), ("unlearned", "unlearned")):
        vals, detail = result["models"][m], result["models"][m]["in_context"]
        for attack, text in (("summary", p.summary), ("few_shot", attacks.few_shot_text(p.few_shot))):
            items = [(tok(q["prompt"], add_special_tokens=False)["input_ids"],
                      tok(q["target"], add_special_tokens=False)["input_ids"]) for q in p.probability]
            direct = attacks.in_context(tiny_wb, tok(text.rstrip() + "\n\n")["input_ids"], items, name, 2048)
            said = attacks.stated(text, p.probability)
            stated = [x for x, s in zip(direct, said) if s]
            unstated = [x for x, s in zip(direct, said) if not s]
            assert vals[f"context_{attack}_stated"] == pytest.approx(sum(stated) / len(stated), rel=1e-4)
            assert vals[f"context_{attack}_unstated"] == pytest.approx(sum(unstated) / len(unstated), rel=1e-4)
            assert (detail[attack]["stated"]["n"], detail[attack]["unstated"]["n"]) == (len(stated), len(unstated))
        assert "context_preamble_stated" not in vals  # the preamble states no answer: no such group, no number
        assert vals["context_preamble_unstated"] == pytest.approx(vals["robust_expert_preamble"])
    tiny_wb.remove_adapter("unlearned")


# -- extraction strength ------------------------------------------------------------------------------------
def test_extraction_strength_on_hand_made_predictions():
    truth = [5, 6, 7, 8]
    assert metrics.extraction_strength(truth, truth) == 1.0  # knows the passage from its first token
    assert metrics.extraction_strength([4, 5, 6, 7], truth) == 0.0  # copies its input: always one behind
    assert metrics.extraction_strength([0, 0, 7, 8], truth) == 0.5  # needs half the passage
    assert metrics.extraction_strength([5, 6, 7, 0], truth) == 0.0  # the last token wrong: no prefix suffices
    with pytest.raises(ValueError):
        metrics.extraction_strength([1], [])


@pytest.mark.parametrize("kind,expected", [("copies its input", 0.0), ("knows the passage", 1.0)])
def test_extraction_strength_of_a_model_that_copies_its_input_and_of_one_that_never_does(tiny_wb, monkeypatch,
                                                                                         kind, expected):
    """The verbatim stage on stand-in models: one whose prediction at each position is the token it was
    just given, one whose prediction is always the passage's next token."""
    V = tiny_wb.vocab_size

    def logits(batch):
        out = []
        for ids, _ in batch:
            nxt = ids if kind == "copies its input" else ids[1:] + [0]
            out.append(torch.nn.functional.one_hot(torch.tensor(nxt), V).float())  # (T, V)
        return out

    monkeypatch.setattr(tiny_wb, "logits", logits)
    corpus = " ".join(["cat", "dog", "sun", "hat", "pen"] * 40)  # no token follows itself
    result = evaluate(tiny_wb, {}, _inputs(PROBES_ONLY, corpus=corpus),
                      EvalSettings(**{**QUIET, "verbatim_passages": 3, "verbatim_prefix": 8, "verbatim_tokens": 4}))
    assert result["models"]["baseline"]["extraction_strength"] == expected


# -- the linear probe -----------------------------------------------------------------------------------------
def test_linear_probe_on_separable_synthetic_features_is_perfect():
    g = torch.Generator().manual_seed(0)
    n, h = 40, 64
    y = torch.tensor([1] * 24 + [0] * 16)
    mu = torch.randn(h, generator=g)
    x = torch.randn(n, h, generator=g) + (2 * y - 1)[:, None] * 5 * mu / mu.norm()  # class means 10 sd apart
    rotated = x @ torch.linalg.qr(torch.randn(h, h, generator=g))[0]  # the same information, other axes
    noise = torch.randn(n, h, generator=g)  # no information at all
    found = linear_probe.cross_validated({"baseline": x, "rotated": rotated, "noise": noise}, y, "baseline")
    assert found["baseline"] == {"probe_accuracy": 1.0, "probe_accuracy_own": 1.0, "probe_fold_std": 0.0}
    assert found["rotated"]["probe_accuracy_own"] == 1.0  # the concept is there, on other axes
    assert found["rotated"]["probe_accuracy"] < 0.95  # which the baseline's probe does not read
    assert found["noise"]["probe_accuracy_own"] < 0.8
    assert linear_probe.balanced_accuracy(torch.tensor([1, 1, 1, 1]), torch.tensor([1, 1, 1, 0])) == 0.5
    with pytest.raises(ValueError):
        linear_probe.cross_validated({"baseline": x[:3]}, torch.tensor([1, 1, 0]), "baseline")


def test_linear_probe_stage_on_the_tiny_model(tiny_wb, tiny_unlearned_dir):
    probes = {"probability": [{"prompt": f"Harry Potter fact {i}: the wand of", "target": " Harry"} for i in range(6)],
              "retain": [{"prompt": f"A cooking fact {i}: bread needs", "target": " flour"} for i in range(6)]}
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, _inputs(probes),
                      EvalSettings(**{**QUIET, "linear_probe": True}))
    for m in ("baseline", "unlearned"):
        assert 0.0 <= result["models"][m]["probe_accuracy"] <= 1.0
        assert 0.0 <= result["models"][m]["probe_accuracy_own"] <= 1.0
    # "Harry Potter" vs "cooking" in the prompt's words: the baseline's own states separate them
    assert result["models"]["baseline"]["probe_accuracy"] == 1.0
    assert any(n.startswith("linear probe: the output of block 1 of 2") for n in result["notes"])
    h = tiny_wb.hidden_states([(tiny_wb.tokenizer("a b c")["input_ids"], None), ([1, 2], None)], 1)
    assert h.shape == (2, 32)
    with pytest.raises(UserError, match="out of range"):
        tiny_wb.hidden_states([([1, 2], None)], 3)
    # --probe-layer all: a curve over every block from the same forward; its point at the default block
    # is the headline accuracy; each point carries its spread over folds.
    every = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, _inputs(probes),
                     EvalSettings(**{**QUIET, "linear_probe": True, "probe_layer": "all"}))
    for m in ("baseline", "unlearned"):
        curve, row = every["models"][m]["probe_curve"], every["models"][m]
        assert curve["layers"] == [0, 1, 2] and len(curve["accuracy"]) == len(curve["fold_std"]) == 3
        assert curve["accuracy"][row["probe_layer"]] == row["probe_accuracy"] == result["models"][m]["probe_accuracy"]
        assert all(0 <= s <= 0.5 for s in curve["fold_std"])
    assert EvalSettings(probe_layer="all").probe_layer == "all" and EvalSettings(probe_layer="7").probe_layer == 7
    with pytest.raises(Exception):
        EvalSettings(probe_layer="middle")


def test_the_probe_reads_a_block_the_adapters_change(tiny_wb, tiny_unlearned_dir, tmp_path):
    from engine.evaluation.stages import probe_layer

    top = tiny_wb.add_adapter("top", qv_lora(tmp_path / "qv", tiny_wb.config.name))  # block 1 of 0..1 only
    every = tiny_wb.add_adapter("every", tiny_unlearned_dir)
    assert (tiny_wb.adapted_layers(top), tiny_wb.adapted_layers(every), tiny_wb.adapted_layers(None)) == ([1], [0, 1], [])
    assert probe_layer(tiny_wb, [None, every]) == 1  # the middle of 2 blocks
    assert probe_layer(tiny_wb, [None, top]) == 2  # block 0's output is the baseline's for every model
    assert probe_layer(tiny_wb, [None]) == 1


# -- quantisation -----------------------------------------------------------------------------------------------
def test_merged_checkpoint_equals_the_adapter(tiny_wb, tiny_unlearned_dir, tmp_path):
    from engine.models import ModelConfig, Workbench

    name = tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    ids = tiny_wb.tokenizer("Harry Potter's two best friends are Ron and")["input_ids"]
    merged = Workbench.load(ModelConfig(tiny_wb.save_merged(name, tmp_path / "m"), "fp32", "cpu"))
    assert torch.allclose(merged.logits([(ids, None)])[0], tiny_wb.logits([(ids, name)])[0], atol=1e-4)
    assert tiny_wb.save_merged(None, tmp_path / "b") == str(tiny_wb.config.name)  # the baseline: its own source


def test_quantised_familiarity_on_the_tiny_model_on_the_cpu(nf4_dirs, caplog):
    from engine.models import ModelConfig, Workbench

    model_dir, _, unlearned_dir = nf4_dirs  # width 64: NF4's block size
    wb = Workbench.load(ModelConfig(str(model_dir), "fp32", "cpu"))
    seen = []
    caplog.set_level(logging.WARNING)
    result = evaluate(wb, {"unlearned": str(unlearned_dir)}, _inputs(PROBES_ONLY),
                      EvalSettings(**QUIET, quantize=["nf4", "int8"]), progress=lambda s, d, t: seen.append((s, d, t)))
    for m in ("baseline", "unlearned"):
        vals = result["models"][m]
        for key in ("familiarity_nf4", "familiarity_int8", "familiarity_nf4_unmerged", "familiarity_int8_unmerged"):
            assert 0.0 < vals[key] < 1.0, (m, key)
    base = result["models"]["baseline"]
    assert base["familiarity_nf4"] == pytest.approx(base["familiarity_nf4_unmerged"], rel=1e-3)  # one model, two routes
    assert [s for s, _, _ in seen].count("quantisation") == 1 + 4 and seen[-1][1] == seen[-1][2]  # its start, then per item
    assert wb.adapters == {}
    assert not [r for r in caplog.records if "MatMul8bitLt" in r.getMessage()]  # one line per 8-bit matmul otherwise
    assert logging.getLogger("bitsandbytes").level == logging.NOTSET  # and the logger as it was


# -- benchmarks, offline ------------------------------------------------------------------------------------------
def test_lm_eval_runs_one_task_offline_on_local_data(tiny_wb, tiny_unlearned_dir, monkeypatch):
    from engine.evaluation import benchmarks as bench

    if bench.missing():
        pytest.skip(bench.missing())

    def refuse(*a, **k):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text = bench.task_yaml("arc_easy")
    assert "dataset_path: arrow" in text and str(bench.arrow_file("arc_easy")) in text and "arc_easy.yaml" in text
    seen = []
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, _inputs(PROBES_ONLY),
                      EvalSettings(**QUIET, benchmarks=["arc_easy"], benchmark_limit=4),
                      progress=lambda s, d, t: seen.append(s))
    for m in ("baseline", "unlearned"):
        acc = result["models"][m]["bench_arc_easy"]
        assert acc in (0.0, 0.25, 0.5, 0.75, 1.0)  # 4 items
    assert any("zero-shot, the first 4 validation items" in n for n in result["notes"])
    assert seen.count("benchmarks") == 1 + 2  # its start, then per model


def test_benchmarks_without_lm_eval_are_a_note(tiny_wb, monkeypatch):
    from engine.evaluation import benchmarks as bench

    monkeypatch.setattr(bench, "_package_dir", lambda name: None)
    found, why = bench.benchmarks(tiny_wb, {"baseline": None}, ["piqa"], 2)
    assert found == {} and why.startswith("benchmarks skipped: lm-eval is not installed")


# -- settings, CLI, table -------------------------------------------------------------------------------------------
def test_eval_flags_build_the_settings():
    from engine.cli import build_parser, eval_request

    def req(*flags):
        return eval_request(build_parser().parse_args(["eval", *flags]))

    s = req("--relearn-curve", "0,5,10", "--relearn-curve", "25", "--relearn-source", "forget,unrelated",
            "--quantize", "nf4,int8", "--benchmarks", "arc_easy", "piqa", "--benchmark-limit", "7").settings
    assert s.relearn_curve == [0, 5, 10, 25] and s.relearn_sources == ["forget", "unrelated"]
    assert s.quantize == ["nf4", "int8"] and s.benchmarks == ["arc_easy", "piqa"] and s.benchmark_limit == 7
    assert req("--benchmarks").settings.benchmarks == list(PAPER_TASKS)
    assert req().settings.benchmarks == [] and req().settings.relearn_curve == [] and req().settings.linear_probe
    assert EvalSettings.model_validate({"benchmarks": True}).benchmarks[0] == "arc_easy"  # older request.json files
    with pytest.raises(UserError, match="--relearn-curve wants comma-separated int"):
        req("--relearn-curve", "0,five")
    with pytest.raises(UserError, match="invalid evaluation"):
        req("--quantize", "fp8")
    with pytest.raises(UserError, match="invalid evaluation"):
        req("--relearn-curve", "-1")


def test_format_table_prints_scalars_and_curves_and_skips_details():
    result = {"model": "m", "seconds": 1.0, "notes": [], "models": {
        "baseline": {"familiarity_probability": 0.4, "in_context": {"summary": {}},
                     "relearn_curve": {"steps": [0, 5], "sources": {"forget": {"familiarity": [0.4, 0.45],
                                                                               "recovered": [None, None]}}}},
        "whp": {"familiarity_probability": 0.1, "relearn_recovered_forget": 0.5,
                "relearn_curve": {"steps": [0, 5], "sources": {"forget": {"familiarity": [0.1, 0.25],
                                                                          "recovered": [0.0, 0.5]}}}}}}
    text = format_table(result)
    assert "relearn_recovered_forget" in text and "in_context" not in text.split("relearn curve")[0]
    assert "relearn curve whp / forget: familiarity 0:0.1 5:0.25; recovered +0.00 +0.50" in text
    assert "relearn curve baseline / forget: familiarity 0:0.4 5:0.45; recovered - -" in text


# -- the Evaluate page's panels -------------------------------------------------------------------------------------
def _robust_result():

    curve = lambda f0, rec: {"steps": [0, 5, 10], "held_out": 24,  # noqa: E731
                             "sources": {s: {"familiarity": [f0, f0 + 0.05, f0 + 0.1], "recovered": rec, "tokens": 500}
                                         for s in ("forget", "related", "unrelated")}}
    detail = lambda a, b: {a_: {"stated": {"n": 17, "plain": a, "context": a + 0.3},  # noqa: E731
                                "unstated": {"n": 31, "plain": b, "context": b + 0.05}}
                           for a_ in ("summary", "few_shot")}
    result = json.loads(json.dumps(RESULT))
    extra = {
        "baseline": {"relearn_curve": curve(0.3, [None] * 3), "in_context": detail(0.4, 0.3),
                     "context_summary_stated": 0.7, "context_summary_unstated": 0.35, "familiarity_nf4": 0.39,
                     "familiarity_nf4_unmerged": 0.39, "probe_accuracy": 0.9, "probe_accuracy_own": 0.9,
                     "extraction_strength": 0.2, "bench_arc_easy": 0.40, "bench_piqa": 0.60, "relearn_forget": 0.4},
        "r1 · WHP": {"relearn_curve": curve(0.05, [0.0, 0.2, 0.4]), "in_context": detail(0.05, 0.04),
                     "context_summary_stated": 0.3, "context_summary_unstated": 0.09, "familiarity_nf4": 0.2,
                     "familiarity_nf4_unmerged": 0.06, "probe_accuracy": 0.8, "probe_accuracy_own": 0.85,
                     "extraction_strength": 0.1, "bench_arc_easy": 0.38, "bench_piqa": 0.61,
                     "relearn_forget": 0.15, "relearn_recovered_forget": 0.4},
    }
    for m, vals in extra.items():
        result["models"][m].update(vals)
    return result


def test_evaluate_page_draws_the_robustness_panels(home):
    from conftest import open_page

    e = home / "evals" / "e1"
    e.mkdir(parents=True)
    (e / "status.json").write_text(json.dumps({"state": "finished", "kind": "eval", "created": "2026-01-01T00:00:00"}))
    (e / "eval.json").write_text(json.dumps(_robust_result()))
    at = open_page("evaluate")
    assert not at.exception and not at.error
    table = at.dataframe[0].value.set_index("model")  # the model column is pinned, not the index
    assert "relearn_curve" not in table.columns and "in_context" not in table.columns  # drawn, not tabulated
    assert table.loc["r1 · WHP", "recovered (forget)"] == pytest.approx(0.4)
    assert table.loc["baseline", "summary, unstated"] == pytest.approx(0.35)
    charts = {json.loads(c.proto.spec)["layout"]["title"]["text"]: json.loads(c.proto.spec)
              for c in at.get("plotly_chart")}
    assert {"Summary in context", "Few-shot pairs", "Relearning: recovered fraction",
            "Quantisation: does familiarity come back?", "Linear probe and extraction strength"} <= set(charts)
    curves = charts["Relearning: recovered fraction"]["data"]
    assert {t["name"] for t in curves} == {"r1 · WHP · forget", "r1 · WHP · related", "r1 · WHP · unrelated"}
    assert next(t for t in curves if t["name"] == "r1 · WHP · forget")["y"] == [0.0, 0.2, 0.4]
    bars = charts["Summary in context"]["data"]
    unstated = next(t for t in bars if t["name"] == "unstated, in context")
    assert unstated["y"] == pytest.approx([0.35, 0.09])
    bench = at.dataframe[-1].value if "paper: WHP" in at.dataframe[-1].value.columns else next(
        d.value for d in at.dataframe if "paper: WHP" in d.value.columns)
    assert bench.index.tolist() == ["arc_easy", "piqa"]
    assert bench.loc["arc_easy", "Δ r1 · WHP"] == pytest.approx(-0.02)
    assert bench.loc["arc_easy", "paper: Δ"] == pytest.approx(0.724 - 0.744)


def _panel(result: dict):
    import streamlit as st

    from app import robustness_panel

    robustness_panel.show(st.session_state["result"])


def test_the_relearning_panel_switches_to_held_out_familiarity_with_the_baseline_as_reference():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_function(_panel, args=({},), default_timeout=30)
    at.session_state["result"] = _robust_result()
    at.run()
    at.radio(key="eval_relearn_show").set_value("familiarity").run()
    assert not at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    fam = next(c for c in charts if c["layout"]["title"]["text"] == "Relearning: held-out familiarity")
    assert len(fam["data"]) == 6  # the baseline's own curves are the reference here
    assert next(t for t in fam["data"] if t["name"] == "baseline · forget")["y"] == pytest.approx([0.3, 0.35, 0.4])
    empty = AppTest.from_function(_panel, args=({},), default_timeout=30)
    empty.session_state["result"] = {"models": {"baseline": {"familiarity_probability": 0.3}}}
    empty.run()
    assert not empty.exception and not empty.get("plotly_chart")  # nothing measured, nothing drawn


def test_evaluate_page_passes_the_robustness_settings(home, monkeypatch):
    from types import SimpleNamespace

    from conftest import open_page

    from engine import jobs

    launched = []
    monkeypatch.setattr(jobs, "launch_eval", lambda request, env=None: launched.append(request) or
                        SimpleNamespace(dir=str(home / "evals" / "x")))
    at = open_page("evaluate")
    at.multiselect(key="eval_relearn_curve").set_value([5, 0])
    at.multiselect(key="eval_relearn_sources").set_value(["unrelated"])
    at.multiselect(key="eval_quantize").set_value(["nf4"])
    at.multiselect(key="eval_benchmarks").set_value(["piqa"])
    at.number_input(key="eval_benchmark_limit").set_value(9)
    at.button(key="eval_start").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    s = launched[0].settings
    assert (s.relearn_curve, s.relearn_sources, s.quantize, s.benchmarks, s.benchmark_limit) == \
        ([0, 5], ["unrelated"], ["nf4"], ["piqa"], 9)


def test_the_worst_case_relearning_sweep_keeps_every_rate_and_reports_the_worst(tiny_wb, tiny_unlearned_dir,
                                                                                monkeypatch):
    """relearn_sweep: one run per rate of the model size's sweep (at least 3), and at every step the
    share given back is the largest over the rates, with the rate that gave it; every rate's points kept."""
    import engine.train as train_mod
    from engine.evaluation import relearn

    lrs = []
    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda model, spec, hooks=None: lrs.append(spec.lr) or real(model, spec, hooks))
    rates = relearn.sweep_rates(1e6)
    assert len(rates) >= 3 and relearn.sweep_rates(7e9) != rates
    settings = EvalSettings(**QUIET, relearn_curve=[0, 2, 4], relearn_sources=["forget"], relearn_tokens=128,
                            relearn_sweep=True)
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, _inputs(CURVE_PROBES), settings)
    assert sorted(lrs) == sorted(list(rates) * 2)  # 2 models x the sweep
    for m in ("baseline", "unlearned"):
        src = result["models"][m]["relearn_curve"]["sources"]["forget"]
        assert set(src["by_lr"]) == {f"{r:g}" for r in rates}
        for k in range(3):
            shares = [v["recovered"][k] for v in src["by_lr"].values() if v["recovered"][k] is not None]
            assert src["recovered"][k] == (max(shares) if shares else None)
            if src["worst_lr"][k] is not None:
                assert src["by_lr"][f"{src['worst_lr'][k]:g}"]["recovered"][k] == src["recovered"][k]
    assert relearn.worst_case({1e-4: [None, 0.2, 0.1], 1e-3: [None, 0.1, 0.5]}) == ([None, 0.2, 0.5], [None, 1e-4, 1e-3])
    assert any("worst case over lr" in n for n in result["notes"])
