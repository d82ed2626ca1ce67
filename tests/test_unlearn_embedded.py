"""One short WHP pipeline on the embedded model: the probability of a tracked HP answer falls."""
import json

import pytest

from conftest import ASSETS

HERMIONE = {"prompt": "Harry Potter's two best friends are Ron and", "target": " Hermione"}


@pytest.mark.slow
def test_short_whp_run_lowers_p_hermione(tmp_path, monkeypatch):
    from engine.config import run_config
    from engine.pipeline import execute

    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    cfg = run_config({
        "model": "embedded", "corpus": str(ASSETS / "demo_corpus.txt"), "anchors": str(ASSETS / "demo_anchors.json"),
        "block_size": 64, "max_blocks": 6, "batch_size": 3, "reinforce_steps": 3, "reinforce_lr": 2e-3,
        "steps": 12, "lr": 2e-3, "alpha": 10, "lora_rank": 8, "lora_layers": 6, "probes": [HERMIONE],
        "probe_every": 100, "checkpoint_every": 1000, "device": "cpu"})
    status = execute(cfg, tmp_path / "run", queue=False)
    assert status.state == "finished", status.error
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    unlearn = [r for r in rows if r["phase"] == "unlearn" and "probes" in r]
    before, after = unlearn[0]["familiarity"], unlearn[-1]["familiarity"]
    reinforce = [r for r in rows if r["phase"] == "reinforce" and "probes" in r]
    assert reinforce[0]["familiarity"] == pytest.approx(before, rel=1e-3), "unlearning starts from the baseline"
    assert before > 0.3, before  # the baseline knows the answer
    assert after < 0.5 * before, (before, after)
