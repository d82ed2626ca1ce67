"""The Runs page through streamlit's AppTest: past runs and charts, use in Inspect, delete with
confirmation, a bad config refused in one line, and a real tiny run launched and cancelled."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import ASSETS, open_page
from engine import jobs


def _fake_run(home, name, tiny_unlearned_dir, fam=0.4):
    run = home / "runs" / name
    shutil.copytree(tiny_unlearned_dir, run / "adapters" / "unlearned")
    (run / "config.json").write_text(json.dumps({"method": "whp"}))
    rows = [{"step": s, "phase": "unlearn", "loss": 2.0 / (s + 1), "lr": 1e-3, "tokens_per_s": 100.0,
             "familiarity": fam / (s + 1), "retain": 0.3,
             "probes": {"P(' Hermione' | …best friends are Ron and)": 0.7 / (s + 1), "P(' Paris' | …France is)": 0.5}}
            for s in (0, 10, 20)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "status.json").write_text(json.dumps({
        "state": "finished", "kind": "run", "method": "whp", "created": f"2026-01-0{len(name)}T00:00:00",
        "phase": "unlearn", "step": 20, "total": 20, "done_phases": ["reinforce", "labels", "unlearn"],
        "summary": {"unlearn_before": {"familiarity": fam}, "unlearn_after": {"familiarity": fam / 21}}}))
    return run


@pytest.fixture()
def home(app_env, tiny_unlearned_dir):
    home = app_env
    _fake_run(home, "r1", tiny_unlearned_dir)
    _fake_run(home, "r22", tiny_unlearned_dir, fam=0.2)
    return home


def _app():
    return open_page("runs", timeout=90)


def test_lists_runs_draws_curves_compares_and_uses_an_adapter_in_inspect(home):
    at = _app()
    table = at.dataframe[0].value
    assert list(table["run"]) == ["r22", "r1"] and set(table["state"]) == {"finished"}
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # loss, tracked probabilities, compare
    probe_fig = json.loads(charts[1].proto.spec)
    assert any("Hermione" in tr.get("name", "") for tr in probe_fig["data"])
    assert any(m.label == "familiarity" for m in at.metric)
    at.button(key="run_use_r22").click().run()
    assert at.session_state["unlearned_adapter"] == str(home / "runs" / "r22" / "adapters" / "unlearned")


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


def test_launches_a_real_run_in_the_background_and_cancels_it(home, tiny_dir):
    at = _app()
    at.radio(key="run_method").set_value("reinforce_only")
    at.text_input(key="run_corpus").set_value(str(ASSETS / "demo_corpus.txt"))
    at.run()  # the form for the chosen method
    at.number_input(key="run_reinforce.steps").set_value(500)
    at.number_input(key="run_data.block_size").set_value(32)
    at.number_input(key="run_data.max_blocks").set_value(4)
    at.number_input(key="run_train.batch_size").set_value(1)
    at.button(key="run_start").click().run()
    assert not at.exception, at.exception
    assert at.success and "Started" in at.success[0].value
    new = [s for s in jobs.list_jobs(home / "runs") if s.dir.endswith("reinforce_only")]
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
