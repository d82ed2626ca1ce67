"""The CLI as users run it: JSON shapes, one-line errors with exit code 2."""
import json

import pytest

from conftest import ASSETS, cli, run_cli


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_inspect_json_on_tiny_model(tiny_dir, tiny_expert_dir, tmp_path):
    anchors = tmp_path / "a.json"
    anchors.write_text(json.dumps({"Ron": ["Mark"]}))
    r = run_cli("inspect", "Harry met Ron and", "--model", str(tiny_dir), "--expert", str(tiny_expert_dir),
                "--anchors", str(anchors), "--top-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == str(tiny_dir)
    last = out["positions"][-1]
    assert {"token", "baseline", "expert", "generic"} <= set(last)
    assert len(last["baseline"]) == 3 and all({"token", "prob"} <= set(t) for t in last["baseline"])
    assert out["translated_text"] == "Harry met Mark and"
    # --lens: per position, lens[model] with one entry per block; the last block is the model's output
    r = run_cli("inspect", "Harry met Ron and", "--model", str(tiny_dir), "--expert", str(tiny_expert_dir),
                "--anchors", str(anchors), "--top-k", "3", "--track", " Ron", "--lens", "--json")
    assert r.returncode == 0, r.stderr
    for p in json.loads(r.stdout)["positions"]:
        for m in ("baseline", "expert"):
            blocks = p["lens"][m]
            assert len(blocks) == 2 and set(blocks[0]) == {"top", "tracked", "rank"}
            assert [t["token"] for t in blocks[-1]["top"]] == [t["token"] for t in p[m]]
            assert blocks[-1]["tracked"][" Ron"] > 0
    r = run_cli("inspect", "Harry met Ron and", "--model", str(tiny_dir), "--lens", "--track", " Ron")
    assert r.returncode == 0 and "logit lens after" in r.stdout, r.stderr
    r = run_cli("inspect", "Harry", "--model", str(tiny_dir), "--scale", "2")
    assert r.returncode == 2 and "adapter scale" in r.stderr


def test_inspect_table_without_json(tiny_dir):
    r = run_cli("inspect", "Hello there", "--model", str(tiny_dir))
    assert r.returncode == 0, r.stderr
    assert "baseline" in r.stdout and "' there'" in r.stdout


def test_translate_json(tmp_path, embedded_dir):
    anchors = tmp_path / "a.csv"
    anchors.write_text("term,translation\nHogwarts,Academy\nRon,Mark\n")
    text = tmp_path / "t.txt"
    text.write_text("We love Hogwarts and Ron.")
    r = run_cli("translate", "--anchors", str(anchors), "--text", str(text), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"translated_text": "We love Academy and Mark.",
                   "original_tokens": ["We", " love", " Hog", "w", "arts", " and", " Ron", "."],
                   "translated_tokens": ["We", " love", " Academy", " and", " Mark", "."],
                   "mapping": [0, 1, -1, -1, 2, 3, 4, 5],
                   "terms": [{"term": "Hogwarts", "translation": "Academy", "start": 2, "end": 5,
                              "translated_start": 2, "translated_end": 3},
                             {"term": "Ron", "translation": "Mark", "start": 6, "end": 7,
                              "translated_start": 4, "translated_end": 5}]}


def test_bad_input_exits_2_with_one_line(tiny_dir, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"Ron": ["Ron"]}')
    cases = [
        ("inspect", "", "--model", str(tiny_dir)),
        ("inspect", "hi", "--model", str(tmp_path / "missing-model")),
        ("inspect", "hi", "--model", str(tiny_dir), "--anchors", str(bad)),
        ("translate", "--anchors", str(bad), "--text", str(bad)),
        ("translate", "--anchors", str(ASSETS / "nope.json"), "--text", str(bad)),
        ("inspect", "hi", "--model", str(tiny_dir), "--expert", str(tmp_path / "no-adapter")),
    ]
    for k, args in enumerate(cases):
        r = (run_cli if k == 0 else cli)(*args)  # one as a real process; the rest in-process (seconds each)
        assert r.returncode == 2, (args, r.stderr)
        lines = [l for l in r.stderr.strip().splitlines() if l.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in r.stderr, (args, r.stderr)


def test_the_step_verbs_flags_come_from_the_config_fields():
    """One generator: every field a verb's method uses is a flag named after its dotted path, with the
    short names of earlier configs and of the method's own phase as aliases; type, choices and help
    from the field."""
    from engine.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices

    def flag(verb: str, name: str):
        return next(a for a in sub[verb]._actions if name in a.option_strings)

    labels, steps = flag("unlearn", "--labels"), flag("unlearn", "--steps")
    assert labels is flag("unlearn", "--whp-labels") and steps is flag("unlearn", "--unlearn-steps")
    assert labels.choices == ["hard", "soft"] and steps.type is int
    assert "generic" in labels.help and "unlearning phase" in steps.help
    assert "reinforce phase" in flag("reinforce", "--steps").help  # --steps of `reinforce` is the reinforce phase's
    assert flag("npo", "--beta") is flag("npo", "--npo-beta") and flag("rmu", "--layer") is flag("rmu", "--rmu-layer")
    for old in ("--anchors", "--expert", "--retain", "--retain-loss", "--retain-weight", "--lora-rank", "--batch-size",
                "--block-size", "--max-blocks", "--sam-rho", "--model", "--precision", "--device", "--probes", "--seed"):
        assert flag("unlearn", old), old  # every flag the step verbs had before still works


@pytest.mark.slow  # subprocesses
def test_run_check_reports_the_dictionarys_coverage_and_gates_on_it(tiny_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Harry went to Hogwarts with Dobby. Later Harry saw Dobby again, and Dobby smiled at Harry.\n" * 3)
    anchors = tmp_path / "a.json"
    anchors.write_text(json.dumps({"Harry": ["Jon"], "Hogwarts": ["the Academy"], "Snape": ["Mr Reed"]}))
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"model": str(tiny_dir), "corpus": str(corpus), "anchors": str(anchors), "steps": 1,
                               "reinforce_steps": 1, "block_size": 16}))
    r = run_cli("run", str(cfg), "--check")
    assert r.returncode == 0, r.stderr
    cov = json.loads(r.stdout)["coverage"]
    # 3 x (Harry x3 + Hogwarts) covered; Dobby x3 per line (the first follows "with", mid-sentence) is not
    assert cov["occurrences"] == 12 and cov["uncovered_occurrences"] == 9
    assert cov["share"] == pytest.approx(12 / 21) and cov["unused_terms"] == ["Snape"]
    assert cov["uncovered"][0] == {"word": "Dobby", "count": 9}
    gated = run_cli("run", str(cfg), "--check", "--min-coverage", "0.8")
    assert gated.returncode == 2 and "covers 57%" in gated.stderr and "Dobby (9)" in gated.stderr
