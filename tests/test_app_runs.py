"""The Runs page through streamlit's AppTest: past runs and charts, use in Inspect, delete with
confirmation, a bad config refused in one line, and a real tiny run launched and cancelled."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import ASSETS, open_page
from engine import jobs


HERMIONE = "P(' Hermione' | …best friends are Ron and)"
GRANGER = "P(' Granger' | …of Harry's year is Hermione)"  # sorts first: never the default by accident


def _fake_run(home, name, tiny_unlearned_dir, fam=0.4, steps=20):
    run = home / "runs" / name
    shutil.copytree(tiny_unlearned_dir, run / "adapters" / "unlearned")
    (run / "config.json").write_text(json.dumps({"method": "whp", "unlearn": {"steps": steps, "lr": 1e-4}}))
    rows = [{"step": s, "phase": "reinforce", "loss": 3.0, "familiarity": fam * 1.5,
             "probes": {GRANGER: 0.9, HERMIONE: 0.8, "P(' Paris' | …France is)": 0.5}} for s in (0, 4)]
    rows += [{"step": s, "phase": "unlearn", "loss": 2.0 / (s + 1), "lr": 1e-3, "tokens_per_s": 100.0,
              "familiarity": fam / (s + 1), "retain": 0.3,
              "probes": {GRANGER: 0.9 / (s + 1), HERMIONE: 0.7 / (s + 1), "P(' Paris' | …France is)": 0.5}}
             for s in (0, 10, steps)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps({
        "state": "finished", "kind": "run", "method": "whp", "created": f"2026-01-0{len(name)}T00:00:00",
        "phase": "unlearn", "step": 20, "total": 20, "done_phases": ["reinforce", "labels", "unlearn"],
        "summary": {"probe_names": [HERMIONE, GRANGER, "P(' Paris' | …France is)"],
                    "unlearn_before": {"familiarity": fam}, "unlearn_after": {"familiarity": fam / 21}}}))
    return run


@pytest.fixture()
def home(app_env, tiny_unlearned_dir):
    home = app_env
    _fake_run(home, "r1", tiny_unlearned_dir)
    _fake_run(home, "r22", tiny_unlearned_dir, fam=0.2)
    return home


def _app():
    return open_page("runs", timeout=90)


def test_lists_runs_draws_curves_compares_and_uses_an_adapter_in_inspect(home, tiny_unlearned_dir):
    _fake_run(home, "r333", tiny_unlearned_dir, fam=0.3, steps=30)
    at = _app()
    table = at.dataframe[0].value
    assert list(table["run"]) == ["r333", "r22", "r1"] and set(table["state"]) == {"finished"}
    # The README's probe is the default, not the first name in sorted order (the Granger probe).
    assert at.multiselect(key="run_probes_r333").value == [HERMIONE]
    assert any(f"{HERMIONE}: 0.800 → 0.023" in c.value for c in at.caption), "first logged -> latest"
    charts = {c.proto.id.rsplit("-", 1)[-1]: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    probe_fig = next(v for k, v in charts.items() if k.startswith("run_probe"))
    assert any("Hermione" in tr.get("name", "") for tr in probe_fig["data"])
    unlearn = next(tr for tr in probe_fig["data"] if tr["name"] == f"unlearn: {HERMIONE}")
    assert unlearn["x"] == [4, 14, 34], "one step axis over the phases: unlearn starts where reinforce ended"
    assert any(m.label == "familiarity" for m in at.metric)
    # Compare any number of runs: a colour per run, a config diff.
    at.multiselect(key="run_cmp").set_value([r.dir for r in jobs.list_runs()]).run()
    cmp = json.loads(next(c for c in at.get("plotly_chart") if c.proto.id.endswith("run_compare")).proto.spec)
    colours = {tr["name"].split(" · ")[0]: tr["line"]["color"] for tr in cmp["data"]}
    assert set(colours) == {"r333", "r22", "r1"} and len(set(colours.values())) == 3
    diff = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert diff["field"].tolist() == ["unlearn.steps"] and diff["r333"].tolist() == ["30"]
    at.selectbox(key="run_which").set_value(next(r.dir for r in jobs.list_runs() if r.name == "r22")).run()
    at.button(key="run_use_r22").click().run()
    assert not at.exception  # Inspect, with the run's adapter picked in the sidebar
    assert at.sidebar.selectbox(key="unlearned").value == str(home / "runs" / "r22" / "adapters" / "unlearned")


def test_the_form_is_the_whole_config_from_yaml_to_command(home, tiny_dir):
    from engine.config import load_config, with_overrides
    from app.state import anchors_path

    at = _app()
    assert not at.exception, at.exception
    demo = with_overrides(load_config(ASSETS / "demo.yaml"), {"model.name": str(tiny_dir)})
    expected = with_overrides(demo, {"whp.anchors": str(anchors_path())})
    shown_yaml = next(c.value for c in at.code if c.language == "yaml")
    assert shown_yaml.strip() == jobs.config_yaml(expected).strip(), "the form's defaults are the demo run, every field"
    command = next(c.value for c in at.code if c.language == "bash")
    assert command.startswith("python -m engine run config.yaml --out ")
    assert any(m.value.startswith("**Expected duration:** about") for m in at.markdown)
    # A YAML loaded into the form.
    changed = jobs.config_yaml(with_overrides(demo, {"unlearn.steps": 7, "whp.labels": "hard", "train.warmup": 3}))
    at.file_uploader(key="run_yaml").upload("mine.yaml", changed.encode(), "application/x-yaml").run()
    at.button(key="run_yaml_load").click().run()
    assert not at.exception, at.exception
    assert at.number_input(key="run_unlearn.steps").value == 7
    assert at.selectbox(key="run_whp.labels").value == "hard"
    assert at.number_input(key="run_train.warmup").value == 3
    assert any("Loaded mine.yaml" in s.value for s in at.success)
    shown_yaml = next(c.value for c in at.code if c.language == "yaml")
    assert "steps: 7" in shown_yaml and "labels: hard" in shown_yaml


def test_delete_needs_confirmation(home):
    at = _app()
    at.button(key="run_delete_r22").click().run()
    assert not (home / "runs" / "r22").exists()
    assert list(at.dataframe[0].value["run"]) == ["r1"]


def test_a_bad_config_is_refused_in_one_line(home):
    at = _app()
    at.text_input(key="run_corpus").set_value(str(home / "nope.txt")).run()
    at.button(key="run_start").click().run()
    assert not at.exception
    assert any("invalid config" in e.value and "corpus" in e.value for e in at.error)
    assert len(jobs.list_jobs(home / "runs")) == 2
    at.text_input(key="run_corpus").set_value(str(ASSETS / "demo_corpus.txt"))
    at.text_input(key="run_name").set_value("../outside").run()
    at.button(key="run_start").click().run()
    assert any("run name" in e.value for e in at.error)


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_launches_a_real_run_in_the_background_and_cancels_it(home, tiny_dir):
    at = _app()
    at.radio(key="run_method").set_value("reinforce_only")
    at.text_input(key="run_corpus").set_value(str(ASSETS / "demo_corpus.txt"))
    at.run()  # the form for the chosen method
    at.number_input(key="run_reinforce.steps").set_value(500)
    at.number_input(key="run_data.block_size").set_value(32)
    at.number_input(key="run_data.max_blocks").set_value(4)
    at.number_input(key="run_train.batch_size").set_value(1)
    at.text_input(key="run_name").set_value("tiny-try")
    at.button(key="run_start").click().run()
    assert not at.exception, at.exception
    assert at.success and "Started tiny-try" in at.success[0].value
    new = [s for s in jobs.list_jobs(home / "runs") if s.dir.endswith("tiny-try")]
    assert len(new) == 1 and new[0].active
    out = new[0].dir
    cfg = json.loads((home / "runs" / out.rsplit("/", 1)[1] / "config.json").read_text())
    assert cfg["model"]["name"] == str(tiny_dir) and cfg["data"]["block_size"] == 32  # the sidebar's model, the form's
    t0 = time.time()
    while jobs.read_status(out).phase_step < 1 and time.time() - t0 < 120:
        time.sleep(0.5)
    at.run()  # the page shows it running, with a cancel button
    assert any("running" in (p.proto.text or "") for p in at.get("progress")) or jobs.read_status(out).state == "running"
    at.button(key=f"run_cancel_{out.rsplit('/', 1)[1]}").click().run()
    t0 = time.time()
    while jobs.read_status(out).active and time.time() - t0 < 60:
        time.sleep(0.5)
    assert jobs.read_status(out).state == "cancelled"


@pytest.mark.slow  # a real job process
def test_generate_a_forget_corpus_from_the_page_and_use_it(app_env):
    """The Runs page's corpus action: a detached `corpus generate` job with the sidebar's model and the
    saved dictionary, its progress, then "Use as the corpus" fills the next run's corpus field."""
    at = _app()
    at.number_input(key="corpus_prompts").set_value(3)
    at.number_input(key="corpus_samples").set_value(1)
    at.number_input(key="corpus_tokens").set_value(6)
    at.number_input(key="corpus_min_rise").set_value(0.0)  # a random model names nothing: keep every sample
    at.button(key="corpus_start").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    job = next((app_env / "corpora").iterdir())
    deadline = time.time() + 120
    while time.time() < deadline and jobs.read_status(job).state in (None, *jobs.ACTIVE):
        time.sleep(0.5)
    status = jobs.read_status(job)
    assert status.state == "finished", (status.state, status.error, (job / "stderr.txt").read_text()[-2000:])
    at.run()
    assert any("kept" in s.value for s in at.success)
    at.button(key="run_use_corpus").click().run()
    assert at.session_state["run_corpus"] == str(job / "corpus.txt")
    assert (job / "corpus.txt").read_text().strip() or status.summary["kept"] == 0


def test_the_runs_table_and_a_cancelled_run(home, tiny_unlearned_dir):
    """Duration and the familiarity / retain the unlearning ended with are columns; a cancelled run is a
    note, not a red error; the selector reads each run's state when drawn (never a stale "queued")."""
    run = _fake_run(home, "r4444", tiny_unlearned_dir)
    status = json.loads((run / "status.json").read_text())
    status["summary"]["cost"] = {"device": "cpu", "wall_s": 125.0, "peak_memory_mib": 900.0, "cuda_peak_mib": None,
                                 "parts": {}}
    status["summary"]["unlearn_after"]["retain"] = 0.31
    (run / "status.json").write_text(json.dumps(status))
    cancelled = _fake_run(home, "c55555", tiny_unlearned_dir)
    status = json.loads((cancelled / "status.json").read_text())
    (cancelled / "status.json").write_text(json.dumps({**status, "state": "cancelled", "created": "2026-02-01T00:00:00"}))
    at = _app()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["r4444", "duration"] == "2 min 05 s" and table.loc["r4444", "retain"] == pytest.approx(0.31)
    assert table.loc["r4444", "familiarity"] == pytest.approx(0.4 / 21)
    assert at.selectbox(key="run_which").value.endswith("c55555")
    assert not at.error, [e.value for e in at.error]
    assert any("cancelled at unlearn" in i.value for i in at.info)
    status["state"] = "finished"
    (cancelled / "status.json").write_text(json.dumps({**status, "created": "2026-02-01T00:00:00"}))
    at.run()
    label = at.selectbox(key="run_which")
    assert label.format_func(label.value).endswith("(finished)"), "read when drawn"


def test_the_new_run_form_stays_open_after_a_loaded_yaml_is_edited(home):
    """Loading a YAML opens the form with a note; the first edit after it used to collapse it."""
    at = _app()
    form = next(e for e in at.expander if e.label == "New run")
    assert not form.proto.expanded, "runs exist: the form starts closed"
    at.session_state["run_flash"] = "Loaded demo.yaml into the form (model: the sidebar's)."  # what Load does
    at.run()
    assert next(e for e in at.expander if e.label == "New run").proto.expanded
    at.number_input(key="run_unlearn.steps").set_value(7).run()  # the first edit
    assert next(e for e in at.expander if e.label == "New run").proto.expanded
