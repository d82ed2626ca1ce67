"""The Evaluate page through streamlit's AppTest on the tiny model: past results, training curves,
and a real evaluation launched as a background job and followed to its table."""
from __future__ import annotations

import json
import time

import pytest

from conftest import open_page
from helpers import CORPUS, PROBES, RESULT, RETAIN

@pytest.fixture()
def home(home_with_a_run):
    return home_with_a_run


def _app():
    return open_page("evaluate", timeout=60)


def test_shows_a_finished_evaluation_and_training_curves(home):
    e = home / "evals" / "e1"
    e.mkdir(parents=True)
    (e / "status.json").write_text(json.dumps({"state": "finished", "kind": "eval", "created": "2026-01-01T00:00:00"}))
    result = {**RESULT, "adapters": {"r1 · WHP": str(home / "runs" / "r1" / "adapters" / "unlearned")}}
    (e / "eval.json").write_text(json.dumps(result))
    at = _app()
    assert [t.value for t in at.main.title] == ["Evaluate"]
    assert at.multiselect(key="eval_pick").options == ["r1 · WHP"]
    assert any(m.value.startswith("**Expected duration:** about") for m in at.markdown), "before the click"
    table, rel, back = (d.value for d in at.dataframe[:3])  # AppTest dataframes carry no key: page order
    assert table.columns.tolist()[:5] == ["model", "familiarity (prob.)", "retain (prob.)", "familiarity (completion)",
                                          "retain perplexity"], "retain beside familiarity"
    table = table.set_index("model")
    assert table.index.tolist() == ["baseline", "r1 · WHP"]
    assert table.loc["r1 · WHP", "familiarity (prob.)"] == pytest.approx(0.04)
    assert table.loc["baseline", "retain perplexity"] == pytest.approx(20.0)
    config = at.dataframe[0].proto.columns
    assert '"pinned": true' in config.replace(" ", "").replace('"pinned":true', '"pinned": true'), "model column pinned"
    rel = rel.set_index("model")
    assert rel.index.tolist() == ["r1 · WHP"]
    assert rel.loc["r1 · WHP", "familiarity (prob.)"] == pytest.approx(-90.0)  # (0.04 / 0.4 - 1) * 100
    styles = str(at.dataframe[1].proto)
    assert "rgba(22,163,74" in styles and "rgba(220,38,38" in styles, "green where it forgot, red where retain fell"
    assert back.loc["r1 · WHP", "with expert preamble"] == pytest.approx(2.0)  # 0.08 / 0.04: knowledge comes back
    assert any("lm-eval not installed" in i.value for i in at.info)
    charts = {c.proto.id: json.loads(c.proto.spec) for c in at.get("plotly_chart")}
    titles = [s["layout"]["title"]["text"] for s in charts.values()]
    assert "Familiarity vs utility" in titles and "Verbatim memorisation" in titles
    assert any(t.startswith("Robustness") for t in titles)
    assert titles.count("r1: unlearn") == 2, "training curves under the result (its run) and in their own section"
    trade = next(s for s in charts.values() if s["layout"]["title"]["text"] == "Familiarity vs utility")
    assert trade["layout"]["xaxis"]["range"][0] == 0 and trade["layout"]["yaxis"]["range"][0] == 0
    assert trade["layout"]["xaxis"]["range"][1] >= 0.4 and trade["layout"]["shapes"], "fixed axes, the target region"
    assert trade["data"][0]["cliponaxis"] is False
    tracked = next(s for s in charts.values() if s["layout"]["title"]["text"] == "r1: unlearn")
    fam = next(t for t in tracked["data"] if t["name"].startswith("familiarity"))
    assert fam["x"] == [0, 10, 20] and fam["y"][0] == pytest.approx(0.4)
    comp = next(h.value for h in at.html if "obl-comp" in h.value)
    assert "<mark>Hogwarts</mark> at &lt;dawn&gt;" in comp and "<th>r1 · WHP</th>" in comp


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_launches_an_evaluation_job_and_shows_its_table(home):
    data = home / "data"  # a browser user names files under OBLIVIATE_HOME (or assets/)
    data.mkdir()
    (data / "probes.json").write_text(json.dumps(PROBES))
    (data / "corpus.txt").write_text(CORPUS)
    (data / "retain.txt").write_text(RETAIN)
    at = _app()
    assert any("No evaluation yet" in i.value for i in at.info)
    at.text_input(key="eval_probes").set_value(str(data / "probes.json"))
    at.text_input(key="eval_corpus").set_value(str(data / "corpus.txt"))
    at.text_input(key="eval_retain").set_value(str(data / "retain.txt"))
    at.number_input(key="eval_passages").set_value(2)
    at.number_input(key="eval_new_tokens").set_value(4)
    at.button(key="eval_start").click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    deadline = time.time() + 240
    progress = []
    while time.time() < deadline and not at.dataframe:
        progress += [p.proto.text for p in at.get("progress")]
        time.sleep(2)
        at.run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
    assert progress and all(" left" in t for t in progress), f"an ETA while it runs: {progress}"
    table = at.dataframe[0].value.set_index("model")
    assert table.index.tolist() == ["baseline", "r1 · WHP"]
    assert table["familiarity (prob.)"].between(0, 1).all()
    assert table.loc["baseline", "familiarity (prob.)"] != table.loc["r1 · WHP", "familiarity (prob.)"]
    cost = next(e for e in at.expander if e.label.startswith("Cost · "))  # the evaluation's own cost card
    assert " MiB" in cost.label and "cpu" in cost.label
    job = next((home / "evals").iterdir())
    assert json.loads((job / "status.json").read_text())["state"] == "finished"


def test_a_missing_probe_file_is_an_error_not_a_job(home):
    at = _app()
    at.text_input(key="eval_probes").set_value(str(home / "nonexistent" / "probes.json"))
    at.button(key="eval_start").click().run()
    assert not at.exception
    assert any("file not found" in e.value for e in at.error)
    assert not (home / "evals").exists() or not any((home / "evals").iterdir())


def test_the_report_and_the_default_picks(home, tiny_unlearned_dir):
    """Download the table as CSV and the evaluation as an HTML report with its plots; the models to
    compare start as the sidebar's adapters, not the first three runs."""
    import shutil

    from app.eval_report import html_report
    from engine.evaluation.table import metric

    result = {**RESULT, "models": {**RESULT["models"],
                                   "r1 · WHP": {**RESULT["models"]["r1 · WHP"],
                                                "probe_curve": {"layers": [0, 1, 2], "accuracy": [0.5, 0.9, 0.8]}}}}
    cols = {metric(k).label: k for k in ("familiarity_probability", "retain_probability")}
    page = html_report(result, "e1", cols)
    assert page.startswith("<!doctype html>") and "familiarity (prob.)" in page and "-90.0%" in page
    assert page.count("plotly") > 3 and "Linear probe at every block" in page, "its plots, the script embedded"
    for name in ("r2", "r3", "r4"):
        shutil.copytree(home / "runs" / "r1", home / "runs" / name)
    e = home / "evals" / "e1"
    e.mkdir(parents=True)
    (e / "status.json").write_text(json.dumps({"state": "finished", "kind": "eval", "created": "2026-01-01T00:00:00"}))
    (e / "eval.json").write_text(json.dumps(RESULT))
    from streamlit.testing.v1 import AppTest

    from conftest import ROOT

    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    at.session_state["unlearned"] = str(home / "runs" / "r3" / "adapters" / "unlearned")
    at.run()
    at.switch_page("../pages/evaluate.py").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="eval_pick").value == ["r3 · WHP"], "the sidebar's unlearned adapter"
    buttons = [b.proto.label for b in at.get("download_button")]
    assert {"Download the result (JSON)", "The table (CSV)", "The report (HTML, with its plots)"} <= set(buttons)
