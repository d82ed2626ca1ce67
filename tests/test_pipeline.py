"""Run directories end to end on the tiny model: config validation, the CLI pipeline, cancel /
resume, interrupted processes, the one-job queue, gradient ascent, and the label cache across runs."""
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import ASSETS, ROOT, run_cli
from engine import jobs
from engine.errors import UserError
from engine.config import load_config, run_config
from engine.jobs import launch_run, resume_run
from engine.train import load_trainer_state

PROBES = [{"prompt": "Harry Potter's two best friends are Ron and", "target": " Hermione"},
          {"prompt": "The capital of France is", "target": " Paris", "kind": "retain"}]


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def tiny_config(tiny_dir, **over) -> dict:
    cfg = {"model": str(tiny_dir), "corpus": str(ASSETS / "demo_corpus.txt"),
           "anchors": str(ASSETS / "demo_anchors.json"), "steps": 3, "reinforce_steps": 3, "batch_size": 2,
           "block_size": 32, "max_blocks": 6, "lr": 1e-3, "probes": PROBES, "probe_every": 2,
           "checkpoint_every": 1}
    cfg.update(over)
    return cfg


def wait_for(out, pred, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = jobs.read_status(out)
        if pred(s):
            return s
        time.sleep(0.3)
    raise AssertionError(f"timed out; last status {jobs.read_status(out)}")


def test_the_demo_retain_text_names_no_retain_probe_answer():
    # The demo trains its KL retain term on retain_train.txt: a retain probe's answer in it would let
    # the retain probes measure what was trained on, not what was spared.
    from engine.text import mentions

    text = (ASSETS / "retain_train.txt").read_text()
    probes = json.loads((ASSETS / "probes.json").read_text())
    names = {p["target"].strip() for p in probes["retain"] if p["target"].strip()[:1].isupper()}
    assert len(names) > 20 and not [n for n in names if mentions(text, n)]
    assert load_config(ASSETS / "demo.yaml").retain.text.endswith("retain_train.txt")


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_whp_pipeline_via_cli_writes_a_complete_run_dir(tiny_dir, tmp_path, home):
    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(tiny_config(tiny_dir)))
    out = tmp_path / "run"
    r = run_cli("run", str(cfg_file), "--out", str(out), env={"OBLIVIATE_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["done_phases"] == ["reinforce", "labels", "unlearn"]
    assert status["step"] == status["total"] == 3 + 2 + 3  # labels count groups: 6 blocks / label_batch 4
    for name in ("expert", "unlearned"):
        a = out / "adapters" / name
        assert (a / "adapter_config.json").exists() and (a / "adapter_model.safetensors").exists()
    assert not list((out / "checkpoints").glob("*.*")), "finished phases leave no checkpoint"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    for phase in ("reinforce", "unlearn"):
        steps = [m["step"] for m in rows if m["phase"] == phase]
        assert steps == [0, 1, 2, 3]
    trained = [m for m in rows if m["step"] > 0]
    assert all({"step", "phase", "loss", "lr", "tokens_per_s"} <= set(m) for m in trained)
    probed = [m for m in rows if "probes" in m]
    assert all(set(m["probes"]) == {"P(' Hermione' | …best friends are Ron and)", "P(' Paris' | …The capital of France is)"}
               for m in probed)
    assert all(0 <= m["familiarity"] <= 1 for m in probed)
    labels = json.loads((out / "labels.json").read_text())
    assert labels["cached"] is False and labels["blocks"] == 6
    assert "unlearn step 3/3" in (out / "log.txt").read_text()
    # The cost card: wall time per phase, tokens per second of the training phases, the job's own peak.
    cost = status["summary"]["cost"]
    assert set(cost["parts"]) == {"load", "reinforce", "labels", "unlearn"}
    assert all(p["wall_s"] > 0 for p in cost["parts"].values())
    assert cost["parts"]["unlearn"]["tokens"] > 0 and cost["parts"]["unlearn"]["tokens_per_s"] > 0
    assert cost["peak_memory_mib"] > 0 and cost["device"].startswith("cpu")
    listed = run_cli("runs", "list", "--root", str(tmp_path), env={"OBLIVIATE_HOME": str(home)}).stdout
    assert f"{cost['wall_s']:.0f} s" in listed and "MiB" in listed
    # Unlearning again from the same expert reuses the cached labels (no forward pass).
    out2 = tmp_path / "run2"
    r = run_cli("unlearn", "--config", str(cfg_file), "--expert", str(out / "adapters" / "expert"),
                "--steps", "1", "--out", str(out2), env={"OBLIVIATE_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out2 / "labels.json").read_text())["cached"] is True
    assert json.loads((out2 / "status.json").read_text())["done_phases"] == ["labels", "unlearn"]
    # Soft labels are a new label set (built once); the KL retain term runs on the retain text.
    out3 = tmp_path / "run3"
    r = run_cli("unlearn", "--config", str(cfg_file), "--expert", str(out / "adapters" / "expert"), "--steps", "2",
                "--labels", "soft", "--retain", str(ASSETS / "retain_train.txt"), "--out", str(out3),
                env={"OBLIVIATE_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out3 / "labels.json").read_text())["cached"] is False
    cfg3 = json.loads((out3 / "config.json").read_text())
    assert cfg3["whp"]["labels"] == "soft" and cfg3["retain"]["loss"] == "kl"
    assert cfg3["retain"]["text"].endswith("retain_train.txt")
    assert (out3 / "adapters" / "unlearned" / "adapter_model.safetensors").exists()


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_cancel_then_resume_continues_from_the_checkpoint_and_the_queue_holds_one_job(tiny_dir, tmp_path, home):
    cfg = tiny_config(tiny_dir, method="reinforce_only", reinforce_steps=400, probes=None)
    a, b = tmp_path / "a", tmp_path / "b"
    launch_run(cfg, a)
    wait_for(a, lambda s: s.state == "running" and s.phase_step >= 2)
    launch_run(tiny_config(tiny_dir, method="reinforce_only", reinforce_steps=2), b)
    wait_for(b, lambda s: "waiting for the running job" in jobs.read_log(b))
    time.sleep(1.0)
    assert jobs.read_status(b).state == "queued", "a second job waits while the first runs"
    jobs.cancel(b)
    assert wait_for(b, lambda s: not s.active).state == "cancelled"
    jobs.cancel(a)
    s = wait_for(a, lambda s: not s.active)
    assert s.state == "cancelled", s
    stopped_at = s.phase_step
    assert (a / "checkpoints" / "reinforce.safetensors").exists()
    assert load_trainer_state(a / "checkpoints" / "reinforce.safetensors")[2] == stopped_at
    assert not (a / "stop").exists()
    # Resume with fewer steps left to go: change nothing but let it finish quickly.
    cfg_file = a / "config.json"
    cfg_data = json.loads(cfg_file.read_text())
    cfg_data["reinforce"]["steps"] = stopped_at + 2
    cfg_file.write_text(json.dumps(cfg_data))
    resume_run(a)
    s = wait_for(a, lambda s: not s.active)
    assert s.state == "finished", (s, (a / "stderr.txt").read_text()[-2000:])
    steps = [json.loads(l)["step"] for l in (a / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [stopped_at + 1, stopped_at + 2], "resume continues after the checkpoint step"
    assert (a / "adapters" / "expert" / "adapter_model.safetensors").exists()
    with pytest.raises(UserError, match="already finished"):
        resume_run(a)


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_a_killed_run_is_seen_as_interrupted(tiny_dir, tmp_path, home):
    out = tmp_path / "k"
    launch_run(tiny_config(tiny_dir, method="reinforce_only", reinforce_steps=400, probes=None), out)
    s = wait_for(out, lambda s: s.state == "running")
    os.kill(s.pid, signal.SIGKILL)
    s = wait_for(out, lambda s: not s.active, timeout=30)
    assert s.state == jobs.INTERRUPTED
    assert json.loads((out / "status.json").read_text())["state"] == jobs.INTERRUPTED  # persisted
    listed = run_cli("runs", "list", "--root", str(tmp_path), "--json", env={"OBLIVIATE_HOME": str(home)})
    assert listed.returncode == 0
    assert [r["state"] for r in json.loads(listed.stdout)] == [jobs.INTERRUPTED]
    with pytest.raises(UserError, match="--yes"):  # outside the job roots: only when confirmed
        jobs.delete(out)
    jobs.delete(out, confirmed=True)
    assert not out.exists()


def test_gradient_ascent_run_raises_the_corpus_loss(tiny_dir, tmp_path, home):
    from engine.pipeline import execute

    out = tmp_path / "ga"
    # Pure ascent (the retain term is tested in test_train): on a tiny random model near uniform
    # CE, a retain term cancels most of the steps' effect.
    cfg = run_config(tiny_config(tiny_dir, method="gradient_ascent", steps=6, lr=2e-2, probes=None))
    status = execute(cfg, out, queue=False)
    assert status.state == "finished" and status.done_phases == ["unlearn"]
    assert (out / "adapters" / "unlearned" / "adapter_model.safetensors").exists()
    # The corpus blocks it trained on (6 x 32 tokens) are less likely with the adapter than without.
    from engine.models import ModelConfig, Workbench

    wb = Workbench.load(ModelConfig(str(tiny_dir)))
    wb.add_adapter("ga", out / "adapters" / "unlearned")
    ids = wb.tokenizer((ASSETS / "demo_corpus.txt").read_text())["input_ids"][: 6 * 32]
    base, ga = wb.logits([(ids, None), (ids, "ga")])
    target = torch.tensor(ids[1:])
    ce = lambda logits: torch.nn.functional.cross_entropy(logits[:-1], target).item()
    print(f'corpus CE {ce(base):.3f} -> {ce(ga):.3f}')
    assert ce(ga) > ce(base) + 0.04  # measured +0.079, identical across thread counts


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_the_same_run_under_accelerate_with_two_processes(tiny_dir, tmp_path, home):
    """Data parallel on the CPU (gloo): both ranks finish, one adapter, metrics logged once."""
    import subprocess
    import sys

    cfg_file = tmp_path / "run.json"
    cfg_file.write_text(json.dumps(tiny_config(tiny_dir, steps=2, reinforce_steps=2, max_blocks=4)))
    out = tmp_path / "ddp"
    accelerate = Path(sys.executable).parent / "accelerate"
    # --multi_gpu selects accelerate's torchrun launcher; without a GPU each rank runs on the CPU with gloo.
    r = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                        "-m", "engine", "run", str(cfg_file), "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OBLIVIATE_HOME": str(home), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["world_size"] == 2
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["phase"], m["step"]) for m in rows] == [("reinforce", s) for s in (0, 1, 2)] + [("unlearn", s) for s in (0, 1, 2)]
    assert r.stdout.count('"state"') == 1, "only rank 0 reports"
    assert (out / "adapters" / "unlearned" / "adapter_model.safetensors").exists()
    assert [p.name for p in (out / "adapters").iterdir()] and not list((out / "adapters").glob(".*"))


def test_an_old_run_directory_still_loads_resumes_and_shows(tiny_dir, tmp_path, home):
    """A gradient-ascent run directory as the engine wrote it before the redesign: a flat config.json,
    the phase called gradient_ascent, a pickled checkpoint. It lists, reads and resumes."""
    from engine.models import ModelConfig, load_model
    from engine.pipeline import execute
    from engine.train import lora_model
    from peft import get_peft_model_state_dict

    out = home / "runs" / "20260101-000000-gradient_ascent"
    (out / "checkpoints").mkdir(parents=True)
    flat = {"corpus": str(ASSETS / "demo_corpus.txt"), "method": "gradient_ascent", "anchors": None, "expert": None,
            "retain": None, "retain_weight": 1.0, "retain_loss": "kl", "labels": "hard", "soft_top_k": 32,
            "model": str(tiny_dir), "precision": "auto", "device": "auto", "steps": 3, "reinforce_steps": 60,
            "lr": 1e-3, "reinforce_lr": None, "alpha": 5.0, "alphas": [2.5, 5.0, 10.0], "lora_rank": 4,
            "lora_layers": None, "batch_size": 2, "grad_accum": 1, "block_size": 32, "max_blocks": 4, "seed": 0,
            "warmup": 0, "goldfish": {"kind": "none", "k": 4, "h": 13}, "probes": None, "probe_every": 10,
            "checkpoint_every": 20, "gradient_checkpointing": False, "label_batch": 4}
    (out / "config.json").write_text(json.dumps(flat))
    (out / "status.json").write_text(json.dumps({
        "state": "cancelled", "kind": "run", "method": "gradient_ascent", "phase": "gradient_ascent",
        "phase_step": 1, "phase_total": 3, "step": 1, "total": 3, "done_phases": [], "created": "2026-01-01T00:00:00",
        "summary": {"gradient_ascent_before": {"familiarity": 0.3}, "gradient_ascent_after": {"familiarity": 0.1}}}))
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "phase": "gradient_ascent", "loss": -2.0}) + "\n")
    model = lora_model(load_model(ModelConfig(str(tiny_dir)))[0], rank=4)
    torch.save({"lora": get_peft_model_state_dict(model), "optimizer": torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad]).state_dict(), "step": 1},
        out / "checkpoints" / "gradient_ascent.pt")
    listed = jobs.list_runs()
    assert [s.name for s in listed] == [out.name] and jobs.unlearn_change(listed[0])["after"]["familiarity"] == 0.1
    assert [r["phase"] for r in jobs.read_metrics(out)] == ["unlearn"]
    status = execute(load_config(out / "config.json"), out, resume=True, queue=False)
    assert status.state == "finished", status.error
    log = (out / "log.txt").read_text()
    assert "unlearn step 2/3" in log and "unlearn step 1/3" not in log, "resumed from the old checkpoint's step"
    assert (out / "adapters" / "unlearned" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints" / "gradient_ascent.pt").exists()
