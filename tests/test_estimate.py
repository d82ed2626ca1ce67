"""engine/estimate.py: the expected duration of a run or an evaluation follows what it will do."""
from __future__ import annotations

import pytest

from conftest import ASSETS
from engine import jobs


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


def test_eta_of_a_job_without_its_own_estimate():
    from datetime import datetime, timedelta, timezone

    started = (datetime.now(timezone.utc) - timedelta(seconds=60)).isoformat(timespec="seconds")
    s = jobs.Status(state="running", kind="eval", step=2, total=8, started=started)
    assert jobs.eta_s(s) == pytest.approx(180, abs=5)  # 60 s for 2 of 8
    assert jobs.eta_s(jobs.Status(state="running", step=1, total=4, eta_s=12.0)) == 12.0
    # 2 of 8 done in 60 s, reported 30 s ago (a stage still running): 180 s left at that pace, 150 now;
    # it counts down between reports, where elapsed / done alone counted up (90 s / 2 x 6 = 270)
    reported = (datetime.now(timezone.utc) - timedelta(seconds=30)).isoformat(timespec="seconds")
    early = (datetime.now(timezone.utc) - timedelta(seconds=90)).isoformat(timespec="seconds")
    assert jobs.eta_s(jobs.Status(state="running", kind="eval", step=2, total=8, started=early,
                                  updated=reported)) == pytest.approx(150, abs=5)
    assert jobs.eta_s(jobs.Status(state="finished", step=4, total=4, started=started)) is None
