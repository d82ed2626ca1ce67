"""The engine functions the pages call for issue 15: dictionary merges and case variants, the run
and evaluation estimates, run names, configs as YAML and commands, ETA, the demo adapters, and
finished background jobs reaped by their launcher."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from conftest import ASSETS
from engine import jobs
from engine.anchors import AnchorDictionary, changes
from engine.errors import UserError


# -- merges never overwrite ------------------------------------------------------------------------
def test_merge_keeps_every_term_and_only_adds_candidates():
    current = AnchorDictionary({"Weasley": ["Smith"], "Hogwarts": ["Mystic Academy"], "Snape": ["Grey"]}, {"Snape"})
    incoming = AnchorDictionary({"Weasley": ["the dragon"], "Hogwarts": ["Mystic Academy"], "Quidditch": ["Skyball"]})
    merged, report = current.merged_with(incoming)
    assert merged.entries == {"Weasley": ["Smith", "the dragon"], "Hogwarts": ["Mystic Academy"], "Snape": ["Grey"],
                              "Quidditch": ["Skyball"]}
    assert merged.disabled == {"Snape"}
    assert report.added == ["Quidditch"] and report.extended == {"Weasley": ["the dragon"]}
    assert report.unchanged == 2 and not report.removed and not report.changed
    assert report.summary() == ("1 new term; 1 existing term gained candidates (Weasley + the dragon); "
                                "2 already there, unchanged")


def test_replace_says_how_many_terms_it_removes():
    current = AnchorDictionary({f"T{i}": ["x"] for i in range(202)})
    small = AnchorDictionary({"T1": ["x"], "T2": ["y"], "New": ["z"], "T3": ["x"], "Other": ["w"]})
    report = current.replaced_by(small)
    assert len(report.removed) == 199 and report.added == ["New", "Other"] and report.changed == ["T2"]
    assert "199 removed" in report.summary()


def test_status_of_a_suggested_row():
    d = AnchorDictionary({"Weasley": ["Smith"], "muggle": ["outsider"]})
    assert d.status_of("Weasley", ["Smith"]) == "in the dictionary"
    assert d.status_of("Weasley", ["the dragon"]) == "in the dictionary, adds: the dragon"
    assert d.status_of("Muggle", ["commoner"]) == "as 'muggle' in the dictionary"  # 'muggle' matches 'Muggle'
    assert d.status_of("Hermione", ["Emily"]) == "new"
    assert changes(d, d).summary() == "2 already there, unchanged"


# -- case variants (the paper's GPT-4 dictionary) ---------------------------------------------------
PAPER_LIKE = {
    "Invisibility Cloak": ["Shadow Cape"], "invisibility cloak": ["vanishing shawl"],
    "Muggle": ["Commoner"], "muggle": ["outsider", "commoner"], "Dark Lord": ["Shadow King"], "dark lord": ["tyrant"],
    "Harry": ["Jon"], "Quaffle": ["ball"], "quaffle": ["ball"],
}


def test_only_spellings_that_match_the_same_text_are_problems():
    problems = AnchorDictionary(PAPER_LIKE).validate()
    # "muggle" also matches "Muggle" (a lower-case term matches capitalised); "Invisibility Cloak" and
    # "invisibility cloak" never match the same text; Quaffle / quaffle agree.
    assert [p.term for p in problems] == ["Muggle"] and "different case" in problems[0].message


def test_resolving_case_variants_folds_colliding_spellings_and_keeps_the_others(tokenizer):
    from engine.translation import Translator

    resolved, report = AnchorDictionary(PAPER_LIKE).resolve_case_variants()
    assert resolved.validate() == []
    assert resolved.entries["muggle"] == ["outsider", "commoner"]  # Muggle's "Commoner" is commoner already
    assert "Muggle" not in resolved.entries and "Quaffle" not in resolved.entries
    assert resolved.entries["Invisibility Cloak"] == ["Shadow Cape"]
    assert resolved.entries["invisibility cloak"] == ["vanishing shawl"]
    assert list(resolved.entries)[:3] == ["Invisibility Cloak", "invisibility cloak", "muggle"]  # order kept
    assert any("folded into 'muggle'" in r for r in report)
    assert any("separate terms" in r and "'Dark Lord' / 'dark lord'" in r for r in report)
    # What the rule defends: both spellings of one word now get one stand-in per block.
    tr = Translator(tokenizer, resolved).translate_text("Muggle children. The muggle boy saw the Invisibility Cloak.", 0)
    by_term = {}
    for o in tr.occurrences:
        by_term.setdefault(o.term, set()).add(o.translation.lower())
    assert len(by_term["muggle"]) == 1 and by_term["Invisibility Cloak"] == {"shadow cape"}


def test_a_big_dictionary_with_case_variants_imports_and_resolves_in_one_click():
    entries = {}
    for i in range(800):
        entries[f"Spell{i} Charm"] = [f"trick{i}"]
        entries[f"spell{i} charm"] = [f"knack{i}"]  # differs beyond the first letter: separate terms
    for i in range(30):
        entries[f"Creature{i}"] = [f"Beast{i}"]
        entries[f"creature{i}"] = [f"animal{i}"]  # collides with Creature{i}
    d = AnchorDictionary.from_bytes(json.dumps(entries).encode(), "paper.json")
    assert len(d) == 1660 and len(d.validate()) == 30
    resolved, _ = d.resolve_case_variants()
    assert resolved.validate() == [] and len(resolved) == 1630
    assert resolved.entries["creature7"] == ["animal7", "beast7"]


# -- estimates ---------------------------------------------------------------------------------------
def test_run_estimate_follows_the_config():
    from engine.config import load_config, with_overrides
    from engine.estimate import estimate_run

    demo = load_config(ASSETS / "demo.yaml")
    e = estimate_run(demo)
    assert set(e.parts) == {"load", "reinforce", "labels", "unlearn"}
    assert e.seconds == pytest.approx(sum(e.parts.values())) and 30 < e.seconds < 3600
    longer = estimate_run(with_overrides(demo, {"unlearn.steps": demo.unlearn.steps * 2}))
    assert longer.parts["unlearn"] > 1.8 * e.parts["unlearn"] - 10
    assert longer.parts["reinforce"] == pytest.approx(e.parts["reinforce"])
    no_retain = estimate_run(with_overrides(demo, {"retain.text": None}))
    assert no_retain.parts["unlearn"] < 0.6 * e.parts["unlearn"]
    all_layers = estimate_run(with_overrides(demo, {"lora.layers": None}))
    assert all_layers.parts["reinforce"] > e.parts["reinforce"]  # the backward pass crosses every layer
    ga = estimate_run(with_overrides(demo, {"method": "gradient_ascent"}))
    assert "labels" not in ga.parts and "reinforce" not in ga.parts
    assert e.text().startswith("about ") and "unlearn" in e.text()


def test_model_shape_scales_the_estimate(tiny_dir):
    from engine.config import load_config, with_overrides
    from engine.estimate import estimate_run, model_shape

    shape = model_shape(str(tiny_dir))
    assert shape is not None and shape.layers == 2 and shape.params < 5e6
    demo = load_config(ASSETS / "demo.yaml")
    tiny = estimate_run(with_overrides(demo, {"model.name": str(tiny_dir)}))
    assert tiny.parts["unlearn"] < estimate_run(demo).parts["unlearn"] / 20
    unknown = estimate_run(with_overrides(demo, {"model.name": "no-such-org/no-such-model"}))
    assert unknown.seconds == 0 and "unknown" in unknown.notes[0]


def test_eval_estimate_grows_with_models_and_stages():
    from engine.config import ModelConfig
    from engine.estimate import estimate_eval
    from engine.evaluation import EvalRequest, EvalSettings

    one = estimate_eval(EvalRequest.make(model=ModelConfig(), settings=EvalSettings.make(relearn_steps=0)))
    three = estimate_eval(EvalRequest.make(model=ModelConfig(), adapters={"a": "x", "b": "y"}))
    relearn = estimate_eval(EvalRequest.make(model=ModelConfig(), settings=EvalSettings.make(relearn_steps=20)))
    assert {"load", "probabilities", "completions", "verbatim", "perplexity", "robustness"} <= set(one.parts)
    assert three.seconds - three.parts["load"] == pytest.approx(3 * (one.seconds - one.parts["load"]))
    assert relearn.parts["relearning"] > 0 and relearn.seconds > one.seconds


def test_duration_reads_like_an_estimate():
    from engine.estimate import duration

    assert [duration(s) for s in (0.2, 42, 150, 1500, 3700)] == ["1 s", "42 s", "2.5 min", "25 min", "1 h 2 min"]


# -- configs, names, commands ------------------------------------------------------------------------
def test_config_yaml_round_trips_and_the_command_runs_it(tmp_path):
    from engine.config import load_config

    cfg = load_config(ASSETS / "demo.yaml")
    text = jobs.config_yaml(cfg)
    assert jobs.config_from_bytes(text.encode(), "c.yaml").to_dict() == cfg.to_dict()
    (tmp_path / "c.yaml").write_text(text)
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()
    assert jobs.run_command("c.yaml", "/x/runs/my run") == "python -m engine run c.yaml --out '/x/runs/my run'"
    # An uploaded copy of assets/demo.yaml: its relative paths are read from assets/.
    assert jobs.config_from_bytes((ASSETS / "demo.yaml").read_bytes(), "demo.yaml").to_dict() == cfg.to_dict()
    with pytest.raises(UserError, match="corpus"):
        jobs.config_from_bytes(b"method: whp\ncorpus: nowhere.txt\n", "bad.yaml")


def test_run_names(monkeypatch, tmp_path):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    assert jobs.run_dir("alpha-10_v2", "whp") == tmp_path / "runs" / "alpha-10_v2"
    assert jobs.run_dir("", "whp").name.endswith("-whp")
    for bad in ("../x", ".hidden", "a/b", "x" * 81):
        with pytest.raises(UserError, match="run name"):
            jobs.run_dir(bad, "whp")
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        jobs.run_dir("taken", "whp")


def test_eta_of_a_job_without_its_own_estimate():
    from datetime import datetime, timedelta, timezone

    started = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(timespec="seconds")
    s = jobs.Status(state="running", kind="eval", step=2, total=8, started=started)
    assert jobs.eta_s(s) == pytest.approx(180, abs=5)  # 60 s for 2 of 8
    assert jobs.eta_s(jobs.Status(state="running", step=1, total=4, eta_s=12.0)) == 12.0
    assert jobs.eta_s(jobs.Status(state="finished", step=4, total=4, started=started)) is None


# -- finished background jobs are reaped -------------------------------------------------------------
def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def test_a_finished_job_is_reaped_without_anyone_looking(monkeypatch, tmp_path):
    """The launcher (the Streamlit server) waits for its children: a finished job never stays a
    zombie, even when no page reads its status."""
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    out = tmp_path / "runs" / "quick"
    status = jobs.launch(["runs", "list"], out, kind="run")  # exits at once (--out is not its flag)
    deadline = time.time() + 60
    while _proc_state(status.pid) not in (None,) and time.time() < deadline:
        assert _proc_state(status.pid) in ("R", "S", "D", "Z", None)
        time.sleep(0.2)
    assert _proc_state(status.pid) is None, "the finished child is still in the process table (a zombie)"


# -- the demo adapters -------------------------------------------------------------------------------
TINY_DEMO = {"reinforce.steps": 2, "unlearn.steps": 2, "data.block_size": 32, "data.max_blocks": 4,
             "train.batch_size": 2, "probe_every": 1}


def wait_finished(d: str, timeout: float = 240) -> jobs.Status:
    deadline = time.time() + timeout
    while (s := jobs.read_status(d)).active and time.time() < deadline:
        time.sleep(0.5)
    return s


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_the_demo_run_is_built_once_for_its_model(monkeypatch, tmp_path, tiny_dir):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    assert jobs.find_demo(str(tiny_dir)) is None
    first = jobs.launch_demo(str(tiny_dir), TINY_DEMO)
    assert Path(first.dir) == tmp_path / "runs" / "demo"
    assert jobs.launch_demo(str(tiny_dir), TINY_DEMO).dir == first.dir  # running: not started twice
    done = wait_finished(first.dir)
    assert done.state == "finished", (done.error, jobs.read_log(first.dir))
    assert set(jobs.run_adapters(first.dir)) == {"expert", "unlearned"}
    assert jobs.find_demo(str(tiny_dir)).state == "finished" and jobs.find_demo("embedded") is None
    again = jobs.launch_demo(str(tiny_dir), TINY_DEMO)
    assert again.state == "finished" and again.pid == done.pid  # finished: returned as is
    cfg = json.loads((tmp_path / "runs" / "demo" / "config.json").read_text())
    assert cfg["model"]["name"] == str(tiny_dir) and cfg["unlearn"]["steps"] == 2
