"""Faults an unlucky user meets (issue 26): each is a test that failed before its fix.

A damaged or planted label set is set aside and rebuilt; an evaluation stops within a step of a
cancel and its status names the stage that runs; a request has an overall deadline; one garbage job
file never breaks a page; finished work is never replaced without --force; the CLI has one exit path
for full disks and refused writes; and the smaller cases of the issue, one assertion each.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ASSETS, ROOT, cli, open_page
from engine import jobs
from engine.errors import UserError
from helpers import CORPUS, PROBES, FakeOpenAI, good_terms, llm_cfg, reply

TEXT = ("Harry Potter and Ron Weasley ran through the corridors of Hogwarts towards the Great Hall, "
        "where Hermione Granger was reading about Quidditch. ") * 4


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- class 3: label sets are checked on load -----------------------------------------------------------
def _labels(wb, anchors):
    from engine.data import corpus_blocks
    from engine.labels import generic_labels

    return generic_labels(wb, None, anchors, corpus_blocks(wb.tokenizer, TEXT, 32), alphas=(5.0,), group=4)


def test_a_damaged_or_planted_label_set_is_set_aside_and_rebuilt(tiny_wb, demo_anchors, home):
    import warnings

    from safetensors.torch import load_file, save_file

    first = _labels(tiny_wb, demo_anchors)
    path, labels = first.path, first.labels[5.0].clone()
    assert not first.cached and _labels(tiny_wb, demo_anchors).cached
    shard = path / "shard-00000.safetensors"

    def damaged(break_it) -> None:
        break_it()
        with warnings.catch_warnings(record=True):
            again = _labels(tiny_wb, demo_anchors)
        assert not again.cached and again.stats.get("set_aside"), "rebuilt, not trusted"
        assert (again.labels[5.0] == labels).all() and path.with_name(path.name + ".bad").is_dir()

    damaged(lambda: shard.write_bytes(shard.read_bytes()[:100]))  # truncated
    damaged(lambda: (path / "meta.json").write_text("garbage"))
    damaged(lambda: (path / "meta.json").write_text("[]"))
    meta = json.loads((path / "meta.json").read_text())

    def out_of_vocabulary():  # planted labels past the vocabulary, with a matching digest
        t = load_file(str(shard))
        t["labels_5.0"][0, 0] = 10 ** 6
        save_file(t, str(shard), metadata={"shard": json.dumps({})})
        from engine.labels import _digest

        (path / "meta.json").write_text(json.dumps({**meta, "digests": [_digest(shard)]}))
    damaged(out_of_vocabulary)

    def a_fifo():  # safe_open on a FIFO waits for ever: it must never be opened
        shard.unlink()
        os.mkfifo(shard)
    t0 = time.perf_counter()
    damaged(a_fifo)
    assert time.perf_counter() - t0 < 60
    # A shard left in <key>.partial with metadata `{}` is rebuilt, never counted as done.
    shutil.rmtree(path)
    partial = path.with_name(path.name + ".partial")
    partial.mkdir()
    save_file({"ids": labels.int()}, str(partial / "shard-00000.safetensors"), metadata={"shard": "{}"})
    assert (_labels(tiny_wb, demo_anchors).labels[5.0] == labels).all()


# -- class 4: an evaluation stops within a step, and says which stage runs ---------------------------
def test_an_evaluation_stops_within_a_step_of_the_relearning_curve(tiny_dir, tiny_unlearned_dir, home, tmp_path):
    from engine.evaluation import EvalRequest, EvalSettings, run_request
    from engine.models import ModelConfig

    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps({**PROBES, "completion": []}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    settings = EvalSettings(verbatim_passages=0, retain_max_tokens=0, robustness=False, linear_probe=False,
                            max_new_tokens=2, relearn_steps=0, relearn_curve=[0, 2000], relearn_sources=["forget"],
                            relearn_tokens=128)
    request = EvalRequest.make(model=ModelConfig(str(tiny_dir)), adapters={"u": str(tiny_unlearned_dir)},
                               probes=str(probes), corpus=str(corpus), retain="", settings=settings)
    out = tmp_path / "eval"
    errors = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: run_request(request, out)), daemon=True)
    worker.start()
    deadline = time.time() + 120
    while jobs.read_status(out).phase != "relearning curve" and time.time() < deadline and worker.is_alive():
        time.sleep(0.05)
    assert jobs.read_status(out).phase == "relearning curve", "the status names the stage that runs now"
    time.sleep(0.5)  # inside the relearning loop
    asked = time.perf_counter()
    (out / "stop").write_text("")
    worker.join(60)
    assert not worker.is_alive() and time.perf_counter() - asked < 10, "2000 steps would take minutes"
    assert isinstance(errors[0], jobs.Cancelled) and jobs.read_status(out).state == "cancelled"


def _catch(errors: list, call) -> None:
    try:
        call()
    except BaseException as e:  # noqa: BLE001
        errors.append(e)


# -- class 6: a request has an overall deadline ------------------------------------------------------
def test_a_reply_that_trickles_in_is_given_up_at_the_timeout():
    from engine.evaluation.judge import judge
    import engine.evaluation.judge as judge_mod
    from engine.suggest import suggest_llm

    with FakeOpenAI(lambda n, chunk, body: (200, reply(json.dumps(good_terms(chunk)))), trickle_s=0.3) as srv:
        t0 = time.perf_counter()
        with pytest.raises(UserError, match="no reply within 1.5 s"):
            suggest_llm(CORPUS[:200], llm_cfg(srv.url, timeout=1.5, retries=0))
        assert time.perf_counter() - t0 < 10
        judge_mod.TIMEOUT_S = 0.5
        try:
            t0 = time.perf_counter()
            with pytest.raises(UserError, match="no complete reply"):
                judge([("a", "b")], "m", srv.url)
            assert time.perf_counter() - t0 < 10
        finally:
            judge_mod.TIMEOUT_S = 60.0


def test_an_html_reply_to_the_judge_is_one_line():
    from engine.evaluation.judge import judge

    with FakeOpenAI(lambda n, m, b: (200, "<html><body>502 Bad Gateway</body></html>"), content_type="text/html") as srv:
        with pytest.raises(UserError, match="did not answer like an OpenAI-compatible"):
            judge([("a", "b")], "m", srv.url)


# -- class 7: one garbage file never breaks a page ------------------------------------------------------
def test_garbage_job_files_leave_the_pages_working(home_with_a_run):
    run = home_with_a_run / "runs" / "r1"
    good = jobs.read_metrics(run)
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(os.urandom(4096) + b"\n" + json.dumps({"step": "abc", "loss": 1}).encode() + b"\n"
                + json.dumps({"step": 5, "loss": "x", "probes": {"p": "high"}}).encode()
                + b"\n[1, 2]\n")
    rows = jobs.read_metrics(run)
    assert rows[: len(good)] == good and rows[-1] == {"phase": "", "step": 5, "probes": {}}
    at = open_page("runs")
    assert not at.exception, at.exception
    ev = home_with_a_run / "evals" / "e1"
    ev.mkdir(parents=True)
    (ev / "status.json").write_text(json.dumps({"state": "finished", "kind": "eval", "created": "2026-01-01"}))
    (ev / "eval.json").write_text(json.dumps({"models": {"baseline": {"familiarity": 0.5}}}))  # no "model"
    assert jobs.read_eval(ev)["model"] == "?"
    at = open_page("evaluate")
    assert not at.exception, at.exception
    (ev / "eval.json").write_text(json.dumps({"models": [1]}))
    assert jobs.read_eval(ev) is None
    assert not open_page("evaluate").exception


def test_a_resumed_run_logs_each_step_once(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    rows = [{"step": s, "phase": "unlearn", "loss": 1.0 / s} for s in (1, 2, 3)]
    rows += [{"step": s, "phase": "unlearn", "loss": 2.0 / s} for s in (3, 4)]  # resumed from step 2's checkpoint
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = jobs.read_metrics(out)
    assert [r["step"] for r in got] == [1, 2, 3, 4] and got[2]["loss"] == 2.0 / 3


# -- class 8: finished work is never replaced without --force ------------------------------------------
def test_a_finished_evaluation_is_not_overwritten_without_force(tmp_path, tiny_dir):
    out = tmp_path / "done"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"state": "finished", "kind": "eval"}))
    (out / "eval.json").write_text('{"model": "kept", "models": {}}')
    r = cli("eval", "--model", str(tiny_dir), "--probes", str(ASSETS / "probes.json"), "--out", str(out))
    assert r.returncode == 2 and "--force" in r.stderr
    assert json.loads((out / "eval.json").read_text())["model"] == "kept"


def test_each_model_has_its_own_demo(home, monkeypatch):
    import importlib

    launch_mod = importlib.import_module("engine.jobs.launch")  # the module (engine.jobs.launch is also a function)

    first = home / "runs" / jobs.demo_name("embedded")
    first.mkdir(parents=True)
    (first / "config.json").write_text(json.dumps({"model": {"name": "embedded"}}))
    (first / "status.json").write_text(json.dumps({"state": "finished", "kind": "run"}))
    launched = []
    monkeypatch.setattr(launch_mod, "launch_run", lambda cfg, out: launched.append(Path(out)) or jobs.Status(dir=str(out)))
    jobs.launch_demo("/models/other")
    assert launched and launched[0] != first and first.is_dir() and jobs.find_demo("embedded").state == "finished"
    assert jobs.is_demo(launched[0]) and jobs.demo_name("/models/other") != jobs.demo_name("/models/another")


# -- class 10: one exit path for full disks and refused writes -----------------------------------------
def test_a_full_disk_is_one_line_and_paid_suggestions_are_printed_first(tmp_path, monkeypatch):
    import engine.anchors

    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS[:300])

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.json"))

    monkeypatch.setattr(engine.anchors, "save_anchors", full)
    with FakeOpenAI(lambda n, chunk, body: (200, reply(json.dumps(good_terms(chunk))))) as srv:
        r = cli("anchors", "suggest", "--corpus", str(corpus), "--base-url", srv.url, "--model", "m",
                "--out", str(tmp_path / "out.json"))
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
    assert "->" in r.stdout, "the suggestions that were paid for are on stdout"


def test_a_refused_write_is_one_line():
    from engine.errors import as_user_error

    assert str(as_user_error(OSError(errno.EROFS, "Read-only file system", "/sys/x"), "writing")) == \
        "writing failed: Read-only file system (/sys/x)"

    # /sys refuses a new folder even to root (whom every access() test passes): one line, before any work.
    r = cli("run", str(ASSETS / "demo.yaml"), "--out", "/sys/obliviate-test")
    assert r.returncode == 2 and r.stderr.startswith("error: --out: cannot write under /sys")


# -- the smaller cases ----------------------------------------------------------------------------------
def test_runs_list_survives_an_absurd_pid(home):
    run = home / "runs" / "r"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"state": "running", "kind": "run", "pid": 10 ** 20}))
    r = cli("runs", "list")
    assert r.returncode == 0 and "r" in r.stdout


def test_an_adapter_for_a_deeper_model_is_refused(tiny_wb, tokenizer, tmp_path):
    from conftest import make_lora, make_tiny_llama

    deeper = make_tiny_llama(tmp_path / "deep", tokenizer, layers=3)
    with pytest.raises(UserError, match="adapts block 2, but this model has 2 blocks"):
        tiny_wb.add_adapter("deep", make_lora(tmp_path / "deep-lora", deeper, seed=3))


def test_a_size_mismatched_adapter_names_the_mismatch(tiny_wb, tokenizer, tmp_path):
    from conftest import make_lora, make_tiny_llama

    wider = make_tiny_llama(tmp_path / "wide", tokenizer, hidden=64)
    with pytest.raises(UserError, match="size mismatch"):
        tiny_wb.add_adapter("wide", make_lora(tmp_path / "wide-lora", wider, seed=3))


def test_a_prompt_that_is_not_utf8_is_one_line():
    r = subprocess.run([sys.executable, "-m", "engine", "inspect", b"caf\xe9"], cwd=ROOT, capture_output=True)
    assert r.returncode == 2 and r.stderr.decode().startswith("error: an argument is not UTF-8")


def test_validate_refuses_a_swap_and_an_empty_dictionary(tmp_path):
    swap, empty = tmp_path / "swap.json", tmp_path / "empty.json"
    swap.write_text(json.dumps({"Harry": ["Ron"], "Ron": ["Harry"]}))
    empty.write_text("{}")
    r = cli("anchors", "validate", str(swap))
    assert r.returncode == 2 and "is itself an anchored term" in r.stdout + r.stderr
    r = cli("anchors", "validate", str(empty))
    assert r.returncode == 2 and "no anchored terms" in r.stdout + r.stderr


def test_yaml_reads_1e_4_as_the_number_the_readme_writes(tmp_path):
    from engine.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: npo\ncorpus: {ASSETS / 'demo_corpus.txt'}\nunlearn:\n  lr: 1e-4\n")
    assert load_config(cfg).unlearn.lr == 1e-4
