"""evaluate() and `python -m engine eval` on the tiny model: the batched shortcuts (mixed adapters,
a cached context, id-level greedy decoding) must agree with the plain computation they replace."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from conftest import run_cli
from helpers import CORPUS, PROBES, RETAIN, qv_lora
from engine.errors import UserError
from engine.evaluation import EvalInputs, EvalSettings
from engine.evaluation import evaluate as evaluate_inputs
from engine.probes import Probes, continuation_logprobs

FAST = dict(verbatim_passages=2, verbatim_prefix=8, verbatim_tokens=6, retain_max_tokens=48, block_size=16,
            max_new_tokens=6)


def evaluate(wb, adapters, probes, corpus, retain, settings=None, anchors=None, progress=None):
    return evaluate_inputs(wb, adapters, EvalInputs(probes, corpus, retain, anchors), settings, progress)


def test_evaluate_shape_ranges_and_that_an_adapter_changes_the_numbers(tiny_wb, tiny_unlearned_dir):
    seen = []
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, Probes.from_dict(PROBES), CORPUS, RETAIN,
                      EvalSettings(**FAST), anchors=["Hermione", "Hogwarts"],
                      progress=lambda stage, done, total: seen.append((done, total)))
    assert list(result["models"]) == ["baseline", "unlearned"]
    for m, vals in result["models"].items():
        for k in ("familiarity_probability", "familiarity_probability_full", "retain_probability",
                  "familiarity_completion", "verbatim_token_match", "verbatim_exact", "verbatim_rougeL",
                  "robust_summary", "robust_expert_preamble"):
            assert 0.0 <= vals[k] <= 1.0, (m, k, vals[k])
        assert vals["familiarity_probability_full"] <= vals["familiarity_probability"]  # more tokens, less mass
        assert 1.0 < vals["retain_perplexity"] < 1e7
        assert len(result["examples"][m]["completion"]) == 2 and len(result["examples"][m]["verbatim"]) == 2
    base, unl = result["models"]["baseline"], result["models"]["unlearned"]
    assert base["familiarity_probability"] != pytest.approx(unl["familiarity_probability"], rel=1e-4)
    assert base["retain_perplexity"] != pytest.approx(unl["retain_perplexity"], rel=1e-4)
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert tiny_wb.adapters == {}  # loaded for the evaluation, removed afterwards
    if importlib.util.find_spec("lm_eval") is None:
        assert any(n.startswith("benchmarks skipped: lm-eval not installed") for n in result["notes"])
    assert json.loads(json.dumps(result)) == result  # JSON-ready


def test_probabilities_equal_a_single_unbatched_forward(tiny_wb, tiny_unlearned_dir):
    """familiarity_probability from the mixed batch == P(first target token) from one forward per prompt."""
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    probes = Probes.from_dict({"probability": PROBES["probability"], "completion": [], "retain": []})
    result = evaluate(tiny_wb, {"unlearned": str(tiny_unlearned_dir)}, probes, CORPUS, "",
                      EvalSettings(**{**FAST, "verbatim_passages": 0}, robustness=False))
    tok = tiny_wb.tokenizer
    for m, name in (("baseline", None), ("unlearned", "unlearned")):
        tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
        direct = []
        for p in PROBES["probability"]:
            ids = tok(p["prompt"])["input_ids"]
            first = tok(p["target"], add_special_tokens=False)["input_ids"][0]
            direct.append(float(tiny_wb.logits([(ids, name)])[0][-1].softmax(-1)[first]))
        assert result["models"][m]["familiarity_probability"] == pytest.approx(sum(direct) / 2, rel=1e-4)


def test_cached_context_equals_the_context_written_into_the_prompt(tiny_wb, tiny_unlearned_dir):
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    tok = tiny_wb.tokenizer
    context = tok(PROBES["summary"] + "\n\n")["input_ids"]
    items = [(tok(p["prompt"], add_special_tokens=False)["input_ids"], tok(p["target"], add_special_tokens=False)["input_ids"])
             for p in PROBES["probability"]]
    for name in (None, "unlearned"):
        rows = [(p + t[:-1], name) for p, t in items]
        cached = tiny_wb.logits_after(context, rows, lambda i, lg: continuation_logprobs(lg, len(items[i][0]), items[i][1]))
        for (p, t), lp in zip(items, cached):
            full = tiny_wb.logits([(context + p + t[:-1], name)])[0]
            direct = continuation_logprobs(full, len(context) + len(p), t)
            assert torch.allclose(lp, direct, atol=1e-4), (name, lp, direct)


def test_greedy_ids_mixed_batch_equals_step_by_step_argmax(tiny_wb, tiny_unlearned_dir):
    tiny_wb.add_adapter("unlearned", tiny_unlearned_dir)
    ids = tiny_wb.tokenizer(CORPUS, add_special_tokens=False)["input_ids"]
    prefixes = [ids[:8], ids[20:28]]
    names = [None, "unlearned"]
    gens = tiny_wb.generate(list(zip(prefixes * 2, names + names[::-1])), 5)
    for prefix, name, gen in zip(prefixes * 2, names + names[::-1], gens):
        seq = list(prefix)
        for _ in range(5):
            nxt = int(tiny_wb.logits([(seq, name)])[0][-1].argmax())
            if nxt == tiny_wb.tokenizer.eos_token_id:
                break
            seq.append(nxt)
        assert gen == seq[len(prefix):]


def test_relearning_attack_brings_a_trained_answer_back(tiny_wb, tiny_dir, tmp_path):
    """A few LoRA steps on a slice saying "Ron and Hermione" raise P(" Herm" | "... Ron and")."""
    probes = Probes.from_dict({"probability": PROBES["probability"][:1], "completion": [], "retain": []})
    adapter = qv_lora(tmp_path / "qv", tiny_dir)
    result = evaluate(tiny_wb, {"unlearned": str(adapter)}, probes, CORPUS, "", EvalSettings(
        verbatim_passages=0, retain_max_tokens=0, robustness=False, relearn_steps=16, relearn_lr=1e-2,
        relearn_tokens=128))
    base, unl = result["models"]["baseline"], result["models"]["unlearned"]
    assert base["robust_relearn"] > 1.4 * base["familiarity_probability"]  # width 32: learns slowly (1.64x)
    assert unl["robust_relearn"] != pytest.approx(unl["familiarity_probability"], rel=1e-3)  # its own copy trained
    assert tiny_wb.adapters == {} and any("relearning attack" in n for n in result["notes"])
    # the relearning copy is gone: the baseline is the baseline again
    again = evaluate(tiny_wb, {}, probes, CORPUS, "", EvalSettings(verbatim_passages=0, retain_max_tokens=0,
                                                                    robustness=False))
    assert again["models"]["baseline"]["familiarity_probability"] == pytest.approx(base["familiarity_probability"], rel=1e-5)


def test_bad_probes_are_one_clear_error():
    with pytest.raises(UserError, match=r"probability\[0\] needs prompt and target"):
        Probes.from_dict({"probability": [{"prompt": "x"}]})
    with pytest.raises(UserError, match="no probes"):
        Probes.from_dict({"probability": [], "completion": []})
    with pytest.raises(UserError):
        EvalSettings.make(verbatim_prefix=0)


def test_adapter_names_must_stay_distinct(tiny_wb, tiny_unlearned_dir):
    probes = Probes.from_dict(PROBES)
    with pytest.raises(UserError, match="distinct"):  # PEFT turns both into "run_1"
        evaluate(tiny_wb, {"run 1": str(tiny_unlearned_dir), "run_1": str(tiny_unlearned_dir)}, probes, CORPUS, "")
    with pytest.raises(UserError, match="baseline"):
        evaluate(tiny_wb, {"baseline": str(tiny_unlearned_dir)}, probes, CORPUS, "")
    assert tiny_wb.adapters == {}


@pytest.fixture()
def probe_files(tmp_path):
    (tmp_path / "probes.json").write_text(json.dumps(PROBES))
    (tmp_path / "corpus.txt").write_text(CORPUS)
    (tmp_path / "retain.txt").write_text(RETAIN)
    return tmp_path


def _eval_args(tiny_dir, d, *extra):
    return ("eval", "--model", str(tiny_dir), "--probes", str(d / "probes.json"), "--corpus", str(d / "corpus.txt"),
            "--retain", str(d / "retain.txt"), "--anchors", "", "--passages", "2", "--prefix-tokens", "8",
            "--continuation-tokens", "6", "--retain-tokens", "48", "--max-new-tokens", "6", *extra)


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_eval_cli_json_and_job_directory(tiny_dir, tiny_unlearned_dir, probe_files, tmp_path):
    out = tmp_path / "job"
    r = run_cli(*_eval_args(tiny_dir, probe_files, "--adapter", f"unlearned={tiny_unlearned_dir}", "--json",
                            "--out", str(out)), env={"OBLIVIATE_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert set(result["models"]) == {"baseline", "unlearned"}
    for vals in result["models"].values():
        assert all(isinstance(v, float) for k, v in vals.items() if k != "in_context")  # its per-attack detail: a dict
        assert set(vals["in_context"]) == {"summary", "preamble"}
        assert {"familiarity_probability", "familiarity_completion", "verbatim_rougeL", "retain_perplexity",
                "retain_probability", "robust_summary"} <= set(vals)
    assert result["models"]["baseline"]["familiarity_probability"] != result["models"]["unlearned"]["familiarity_probability"]
    assert json.loads((out / "eval.json").read_text())["models"] == result["models"]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["kind"] == "eval" and status["step"] == status["total"] > 0


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_eval_cli_table_and_errors(tiny_dir, probe_files, tmp_path):
    r = run_cli(*_eval_args(tiny_dir, probe_files, "--no-robustness"))
    assert r.returncode == 0, r.stderr
    assert "familiarity_probability" in r.stdout and "baseline" in r.stdout and "robust_summary" not in r.stdout
    (tmp_path / "bad.json").write_text('{"probability": [{"prompt": "x"}]}')
    r = run_cli("eval", "--model", str(tiny_dir), "--probes", str(tmp_path / "bad.json"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "needs prompt and target" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli(*_eval_args(tiny_dir, probe_files, "--adapter", str(tmp_path / "missing")))
    assert r.returncode == 2 and "adapter path does not exist" in r.stderr


# -- the LLM judge, against a real OpenAI-compatible HTTP server on loopback ---------------------------
def test_llm_judge_grades_completions_and_never_leaks_the_key(monkeypatch, tiny_wb):
    from helpers import KEY, FakeOpenAI, reply

    from engine.evaluation.judge import judge

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(lambda n, msg, body: (200, reply("3" if "Hogwarts" in msg else "Grade: 0"))) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)  # the environment's key goes to its own endpoint only
        assert judge([("The train to", " Hogwarts"), ("The train to", " the city")], "m", srv.url) == [3, 0]
        assert all(a == f"Bearer {KEY}" for a in srv.auth)
        result = evaluate(tiny_wb, {}, Probes.from_dict(PROBES), CORPUS, "", EvalSettings(
            **{**FAST, "verbatim_passages": 0, "retain_max_tokens": 0}, robustness=False, judge_model="m",
            judge_base_url=srv.url))
        graded = result["examples"]["baseline"]["completion"]
        assert all(e["judge"] in (0, 3) for e in graded)
        assert result["models"]["baseline"]["familiarity_judge"] == sum(e["judge"] for e in graded) / len(graded)
    with FakeOpenAI(lambda n, msg, body: (401, {"error": {"message": "bad key"}})) as srv:
        with pytest.raises(UserError, match="refused the API key") as e:
            judge([("a", "b")], "m", srv.url)
        assert KEY not in str(e.value)
    with FakeOpenAI(lambda n, msg, body: (200, reply("I cannot say"))) as srv:
        with pytest.raises(UserError, match="no 0-3 grade"):
            judge([("a", "b")], "m", srv.url)


@pytest.mark.slow
def test_embedded_baseline_knows_the_demo_answers_and_not_by_chance(embedded_wb):
    """The demo probes measure something on the embedded model: its answers to HP prompts and to the
    retain prompts are far above chance (1 / 49152), and an HP summary in context helps it."""
    from conftest import ASSETS

    from engine.probes import load_probes

    path = ASSETS / "probes.json"
    if not path.exists():
        pytest.skip("assets/probes.json not written yet")
    probes = load_probes(path)
    probes.probability, probes.retain, probes.completion = probes.probability[:16], probes.retain[:16], []
    result = evaluate(embedded_wb, {}, probes, "", "", EvalSettings(verbatim_passages=0, retain_max_tokens=0))
    base = result["models"]["baseline"]
    assert base["familiarity_probability"] > 0.02 and base["retain_probability"] > 0.05
    assert base["robust_summary"] > base["familiarity_probability"]
