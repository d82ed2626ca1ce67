"""Safe by construction: one test per class of hostile or careless input (issue 10).

Checkpoints never execute code; a browser user reads only allowed files; the environment's API key
goes only to its own endpoint and no key survives in any message or file; job control signals and
deletes only this engine's jobs; the app binds loopback wherever it is started; every malformed
input is one clear line.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ASSETS, ROOT, cli, open_page, run_cli
from engine import jobs
from engine.errors import UserError, is_oom
from engine.boundary import browser_path
from engine.io import parse_json, parse_yaml, read_text_file
from engine.secrets import api_key, scrub
from helpers import KEY, FakeOpenAI, good_terms, llm_cfg as cfg, reply as _reply
from helpers import SUGGEST_CORPUS as CORPUS


class Boom:
    """Unpickling this runs `touch <marker>`: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"lora": {}, "optimizer": Boom(marker), "step": 1}, path)


# -- 1. resuming never executes code from a checkpoint ------------------------------------------------
def test_a_hostile_or_truncated_checkpoint_restarts_the_phase_and_runs_nothing(tiny_dir, tokenizer, tmp_path):
    from engine.models import ModelConfig, load_model
    from engine.data import pad_blocks
    from engine.methods import NextToken, TrainData
    from engine.train import Hooks, TrainSpec, load_trainer_state, lora_model, train

    ids, lengths = pad_blocks([tokenizer("Harry went to Hogwarts again and again.")["input_ids"]] * 2, 0)
    spec = TrainSpec("t", NextToken(), TrainData.next_token(ids, lengths), steps=2, lr=1e-3, batch_size=2)
    marker = tmp_path / "pwned"
    for make in ("hostile", "truncated"):
        ck = tmp_path / f"{make}.safetensors"
        if make == "hostile":  # a legacy pickle checkpoint beside the new name, whose unpickling runs `touch`
            found = ck.with_suffix(".pt")
            _hostile_checkpoint(found, marker)
        else:  # a safetensors checkpoint cut off mid-header (a full disk, a copy that stopped)
            found = ck
            ck.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"lora/a\": {\"dtype\"")
        lines, steps = [], []
        result = train(lora_model(load_model(ModelConfig(str(tiny_dir)))[0], rank=2), spec,
                       Hooks(checkpoint=ck, log=lines.append, on_step=lambda m: steps.append(m["step"])))
        assert result["steps"] == 2 and steps == [1, 2], "the phase restarted from step 0 and finished"
        assert not marker.exists(), "unpickling ran the checkpoint's code"
        assert any("unreadable" in line and "restarting the phase" in line for line in lines), lines
        assert found.with_name(found.name + ".bad").exists() and not found.exists(), "kept aside, not deleted"
    # and the good path: what save_trainer_state writes comes back exactly
    from engine.train import save_trainer_state
    lora = {"a.weight": torch.randn(2, 3)}
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}},
           "param_groups": [{"lr": 0.1, "betas": [0.9, 0.99], "params": [0]}]}
    save_trainer_state(tmp_path / "ok.safetensors", lora, opt, 7)
    l2, o2, step = load_trainer_state(tmp_path / "ok.safetensors")
    assert step == 7 and torch.equal(l2["a.weight"], lora["a.weight"])
    assert torch.equal(o2["state"][0]["exp_avg"], torch.ones(2)) and o2["param_groups"] == opt["param_groups"]


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_run_resume_from_a_copied_hostile_run_directory(tiny_dir, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    out = tmp_path / "copied-run"
    (out / "checkpoints").mkdir(parents=True)
    config = {"model": str(tiny_dir), "corpus": str(ASSETS / "demo_corpus.txt"), "method": "reinforce_only",
              "reinforce_steps": 2, "block_size": 32, "max_blocks": 2, "batch_size": 1}
    (out / "config.json").write_text(json.dumps(config))
    (out / "status.json").write_text(json.dumps({"state": "cancelled", "kind": "run", "done_phases": []}))
    marker = tmp_path / "pwned"
    _hostile_checkpoint(out / "checkpoints" / "reinforce.pt", marker)
    r = run_cli("run", "--resume", "--out", str(out), env={"OBLIVIATE_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert not marker.exists()
    assert "unreadable" in (out / "log.txt").read_text()
    assert (out / "checkpoints" / "reinforce.pt.bad").exists()
    assert (out / "adapters" / "expert" / "adapter_model.safetensors").exists()


# -- 2. a browser user reads only allowed files -------------------------------------------------------
def test_browser_paths_stay_inside_the_allowed_folders(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    assert browser_path(str(ASSETS / "demo_corpus.txt")) == (ASSETS / "demo_corpus.txt").resolve()
    assert browser_path("assets/probes.json") == (ASSETS / "probes.json").resolve()
    (home / "mine.txt").write_text("ok")
    assert browser_path(str(home / "mine.txt")).read_text() == "ok"
    (home / "link.txt").symlink_to("/etc/passwd")  # a link inside a root pointing out of it
    for bad in ("/proc/self/environ", "/etc/passwd", str(home / "link.txt"), str(ASSETS / ".." / "README.md"),
                str(tmp_path / "elsewhere.txt")):
        with pytest.raises(UserError, match="outside the folders"):
            browser_path(bad, "corpus")
    monkeypatch.setenv("OBLIVIATE_BROWSER_ROOTS", str(tmp_path))  # the owner may widen it, explicitly
    assert browser_path(str(tmp_path / "elsewhere.txt"))


def test_the_evaluate_and_runs_pages_refuse_server_files(app_env, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    at = open_page("evaluate")
    at.text_input(key="eval_corpus").set_value("/proc/self/environ")
    at.button(key="eval_start").click().run()
    assert not at.exception
    assert any("outside the folders" in e.value for e in at.error)
    assert not (app_env / "evals").exists() or not any((app_env / "evals").iterdir())
    at = open_page("runs")
    at.text_input(key="run_retain.text").set_value("/etc/passwd")
    at.button(key="run_start").click().run()
    assert not at.exception and any("outside the folders" in e.value for e in at.error)
    assert not any((app_env / "runs").glob("*/config.json"))


# -- 3. the environment's key goes to its own endpoint only -------------------------------------------
def test_the_environment_key_goes_only_to_the_endpoint_it_was_configured_for(monkeypatch):
    from engine.evaluation.judge import judge
    from engine.suggest import suggest_llm

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert api_key("https://api.openai.com/v1") == KEY and api_key("https://api.openai.com/v1/") == KEY
    assert api_key("http://attacker.example/v1") == "" and api_key("http://attacker.example/v1", "mine") == "mine"
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk))))) as srv:
        suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000))  # a URL typed in a page, no key typed
        assert srv.auth and all(KEY not in a for a in srv.auth)
    with FakeOpenAI(lambda n, msg, body: (200, _reply("1"))) as srv:
        judge([("a", "b")], "m", srv.url)
        assert all(KEY not in a for a in srv.auth)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.url)  # configured for this endpoint: now it may go there
        judge([("a", "b")], "m", srv.url)
        assert srv.auth[-1] == f"Bearer {KEY}"


def test_the_suggest_panel_calls_only_the_owners_endpoints_and_keeps_the_key_to_its_own(app_env, monkeypatch):
    """Class 9: the panel offers the owner's endpoints only (no URL can be typed); one the owner added
    with OBLIVIATE_ENDPOINTS gets no OPENAI_API_KEY, which belongs to OPENAI_BASE_URL."""
    from engine.anchors import AnchorDictionary

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(app_env / "anchors.json"))
    (app_env / "anchors.json").write_text(AnchorDictionary({"Harry": ["Jon"]}).to_json())
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk))))) as srv:
        at = open_page("anchors")
        assert at.selectbox(key="suggest_base_url").options == ["https://api.openai.com/v1"]
        monkeypatch.setenv("OBLIVIATE_ENDPOINTS", srv.url)
        at = open_page("anchors")
        assert len(at.selectbox(key="suggest_base_url").options) == 2
        at.selectbox(key="suggest_base_url").set_value(srv.url)
        at.text_input(key="suggest_model").set_value("m")
        at.button(key="suggest_llm").click().run()
        assert not at.exception
        assert srv.auth and all(KEY not in a for a in srv.auth)


# -- 4. no key survives in any message or file --------------------------------------------------------
def test_scrub_replaces_before_it_cuts():
    for pad in range(280, 300):
        text = scrub("x" * pad + f" key={KEY} tail", limit=300)
        assert not any(KEY[i: i + 6] in text for i in range(len(KEY) - 5)), pad
    os.environ["OBLIVIATE_JUDGE_API_KEY"] = "judge-key-123456"
    try:
        assert "judge-key" not in scrub("bad key judge-key-123456")
    finally:
        del os.environ["OBLIVIATE_JUDGE_API_KEY"]


def _echo(key_status: int):
    """A server that puts the caller's key in every position it can: error bodies and reply content."""
    def script(n, chunk, body):
        return key_status, {"error": {"message": f"{'x' * 280}{KEY} was rejected ({KEY})"}}
    return script


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_a_server_that_echoes_the_key_never_gets_it_into_messages_or_files(tmp_path, monkeypatch, tiny_dir):
    from engine.evaluation.judge import judge
    from engine.suggest import suggest_llm

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    for status in (400, 403, 418, 500):
        with FakeOpenAI(_echo(status)) as srv:
            monkeypatch.setenv("OPENAI_BASE_URL", srv.url)
            with pytest.raises(UserError) as e:
                suggest_llm(CORPUS, cfg(srv.url, chunk_words=1000, retries=0, json_mode=False))
            assert KEY not in str(e.value) and KEY[:8] not in str(e.value), status
            with pytest.raises(UserError) as e:
                judge([("a", "b")], "m", srv.url)
            assert KEY not in str(e.value), status
    # a reply whose terms and translations carry the key: never in the dictionary or the output
    def echo_terms(n, chunk, body):
        terms = good_terms(chunk)["terms"] + [{"term": "Harry", "translation": KEY},
                                               {"term": KEY, "translation": "x"}]
        return 200, _reply(json.dumps({"terms": terms}))
    out = tmp_path / "suggested.json"
    with FakeOpenAI(echo_terms) as srv:
        r = run_cli("anchors", "suggest", "--corpus", str(corpus), "--base-url", srv.url, "--model", "m",
                    "--out", str(out), "--json", env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.url})
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr + out.read_text()
    # the judge inside an evaluation job: its error is scrubbed in status.json and on stderr
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps({"completion": [{"prompt": "The train to", "references": ["Hogwarts"]}]}))
    with FakeOpenAI(_echo(418)) as srv:
        job = tmp_path / "eval-job"
        r = run_cli("eval", "--model", str(tiny_dir), "--judge-model", "m", "--judge-base-url", srv.url,
                    "--probes", str(probes), "--out", str(job), "--passages", "0", "--retain", "",
                    "--no-robustness", "--max-new-tokens", "2",
                    env={"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": srv.url, "OBLIVIATE_HOME": str(tmp_path / "h")})
    assert r.returncode == 2 and KEY not in r.stderr
    assert all(KEY not in p.read_text(errors="ignore") for p in job.rglob("*") if p.is_file())
    assert jobs.read_status(job).state == "failed"


# -- 5. job control trusts only this engine's jobs ----------------------------------------------------
def test_cancel_signals_no_process_but_the_jobs_own(tmp_path, monkeypatch):
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid in (-1, 0, "123", 1.5, True, victim.pid):
            out = tmp_path / f"job{len(sent)}{pid}"
            out.mkdir()
            (out / "status.json").write_text(json.dumps({"state": "running", "kind": "run", "pid": pid}))
            try:
                jobs.cancel(out)
            except UserError:
                pass  # a dead or missing pid reads as interrupted: nothing to cancel
        assert [s for s in sent if s[1] != 0] == [], "no signal to -1, 0, or a process that is not this job"
    finally:
        monkeypatch.undo()  # Popen.kill goes through os.kill: without this the test waits out the sleep
        victim.kill()
        victim.wait()


def test_delete_removes_only_marked_job_directories(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    precious = tmp_path / "my-documents"
    precious.mkdir()
    (precious / "status.json").write_text(json.dumps({"state": "finished", "kind": "run"}))
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not an Obliviate job"):
        jobs.delete(precious)
    r = run_cli("runs", "delete", str(precious), env={"OBLIVIATE_HOME": str(home)})
    assert r.returncode == 2 and (precious / "thesis.tex").exists()
    jobs.mark(precious)  # a real job directory outside the job roots: only with an explicit --yes
    with pytest.raises(UserError, match="--yes"):
        jobs.delete(precious)
    jobs.delete(precious, confirmed=True)
    assert not precious.exists()
    inside = home / "runs" / "r"
    inside.mkdir(parents=True)
    (inside / "status.json").write_text(json.dumps({"state": "finished", "kind": "run"}))  # an older run
    jobs.delete(inside)
    assert not inside.exists()


def test_garbage_status_files_are_safe_records(tmp_path, monkeypatch, app_env):
    runs = app_env / "runs"
    for name, data in [("bytes", os.urandom(300)), ("list", b"[1, 2, 3]"), ("string-pid", b'{"pid": "12", "state": "running"}'),
                       ("weird", b'{"state": "pwned", "step": "x", "summary": 3, "kind": "run"}'),
                       ("nan", b'{"state": "finished", "kind": "run", "loss": NaN}')]:
        (runs / name).mkdir(parents=True)
        (runs / name / "status.json").write_bytes(data)
    listed = jobs.list_jobs(runs)
    assert len(listed) == 5 and all(isinstance(s.state, str) for s in listed)
    assert {s.state for s in listed} <= {*jobs.STATES, "unreadable"}
    r = cli("runs", "list", "--root", str(runs))
    assert r.returncode == 0, r.stderr
    at = open_page("runs")
    assert not at.exception


# -- 6. local by default, whatever the working directory -----------------------------------------------
def test_the_app_binds_loopback_and_hides_errors_when_started_from_elsewhere(tmp_path):
    probe = ("import streamlit.config as c; c._main_script_path = %r; c.get_config_options(force_reparse=True); "
             "print(c.get_option('server.address'), c.get_option('client.showErrorDetails'))") % str(ROOT / "app" / "main.py")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert r.stdout.split() == ["127.0.0.1", "none"], r.stdout + r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app" / "main.py"),
                             "--server.port", str(port), "--server.headless", "true"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OBLIVIATE_HOME": str(tmp_path / "h")})
    try:
        listening = []
        for _ in range(120):
            listening = [line.split()[1] for f in ("/proc/net/tcp", "/proc/net/tcp6")
                         for line in Path(f).read_text().splitlines()[1:]
                         if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
            if listening:
                break
            time.sleep(0.5)
        assert listening, "the server never listened"
        assert all(a.split(":")[0] in ("0100007F", "00000000000000000000000001000000") for a in listening), listening
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# -- medium: malformed inputs, each one line ------------------------------------------------------------
def test_yaml_alias_bombs_and_huge_values_are_refused_quickly(tmp_path):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    (tmp_path / "bomb.yaml").write_text(bomb + "corpus: x\n")
    t0 = time.time()
    r = cli("run", str(tmp_path / "bomb.yaml"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and "aliases" in r.stderr and time.time() - t0 < 30
    (tmp_path / "big.yaml").write_text(f"corpus: x\nsteps: '{'9' * 100_000}'\nmethod: {'m' * 50_000}\n")
    r = cli("run", str(tmp_path / "big.yaml"), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and len(r.stderr) < 1500, len(r.stderr)
    with pytest.raises(UserError, match="aliases"):
        parse_yaml("a: &x 1\nb: *x\n")


def test_malformed_dictionaries_are_one_line_each(tmp_path):
    from engine.anchors import AnchorDictionary, load_anchors

    cases = {
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "digits.json": '{"Harry": ' + "9" * 5000 + "}",
        "dupes.json": '{"Harry": ["Jon"], "Harry": ["Ben"]}',
        "enabled.json": '{"Harry": {"translations": ["Jon"], "enabled": "false"}}',
        "field.csv": "term,translation\nHarry," + "x" * 200_000 + "\n",
        "quote.csv": 'term,translation\nHarry,"Jon\nRon,Mark\nHermione,Emily\n',
        "nul.csv": "term,translation\nHa\0rry,Jon\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UserError) as e:
            load_anchors(tmp_path / name).check()
        assert "\n" not in str(e.value) and len(str(e.value)) < 300, (name, str(e.value)[:300])
        r = cli("anchors", "validate", str(tmp_path / name))
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr[-500:])
    d = AnchorDictionary.from_json('{"Harry": {"translations": ["Jon"], "enabled": false}}')
    assert d.disabled == {"Harry"}, "a real false still switches a term off"


def test_the_anchors_page_refuses_a_malformed_upload_and_keeps_running(app_env, monkeypatch):
    path = app_env / "anchors.json"
    monkeypatch.setenv("OBLIVIATE_ANCHORS", str(path))
    path.write_text('{"Harry": ["Jon"]}')
    at = open_page("anchors")
    for name, data in (("dupes.json", b'{"Harry": ["Jon"], "Harry": ["Ben"]}'),
                       ("quote.csv", b'term,translation\nHarry,"Jon\nRon,Mark\n'),
                       ("deep.json", b"[" * 50_000 + b"]" * 50_000)):
        at.file_uploader(key="anchors_upload").upload(name, data, "application/octet-stream").run()
        at.button(key="anchors_import").click().run()
        assert not at.exception, (name, at.exception)
        assert at.error and len(at.error[-1].value) < 300, name
    assert json.loads(path.read_text()) == {"Harry": ["Jon"]}


def test_config_paths_must_be_readable_utf8_files(tmp_path, tiny_dir):
    from engine.config import run_config

    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UserError) as e:
        run_config({"corpus": str(tmp_path / "folder"), "retain": str(tmp_path / "latin1.txt"),
                             "anchors": str(ASSETS / "demo_anchors.json"), "model": str(tiny_dir)})
    assert "corpus" in str(e.value) and "is a directory" in str(e.value)
    assert "retain" in str(e.value) and "not UTF-8" in str(e.value)


def test_bad_outputs_are_refused_before_any_work(tmp_path, tiny_dir):
    existing = tmp_path / "a-file"
    existing.write_text("x")
    r = cli("run", str(ASSETS / "demo.yaml"), "--out", str(existing))
    assert r.returncode == 2 and "not a directory" in r.stderr
    corpus = tmp_path / "c.txt"
    corpus.write_text(CORPUS)
    with FakeOpenAI(lambda n, chunk, body: (200, _reply(json.dumps(good_terms(chunk))))) as srv:
        r = run_cli("anchors", "suggest", "--corpus", str(corpus), "--base-url", srv.url, "--model", "m",
                    "--out", str(tmp_path))
        assert r.returncode == 2 and "is a directory" in r.stderr
        assert srv.calls == [], "no paid request before the output is known to be writable"


def test_broken_adapter_directories_are_one_line(tiny_wb, tiny_expert_dir, tmp_path):
    import shutil

    def copy(name):
        d = tmp_path / name
        shutil.copytree(tiny_expert_dir, d)
        return d

    d = copy("truncated")
    w = d / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    d2 = copy("list-config")
    (d2 / "adapter_config.json").write_text("[1, 2]")
    d3 = copy("pickle-bin")
    (d3 / "adapter_model.safetensors").rename(d3 / "adapter_model.bin")
    for bad, fragment in ((d, "safetensors"), (d2, "JSON object"), (d3, "pickle")):
        with pytest.raises(UserError, match=fragment) as e:
            tiny_wb.add_adapter("x", bad)
        assert "\n" not in str(e.value)
    assert tiny_wb.add_adapter("good", tiny_expert_dir) == "good"  # a failed load leaves the rest working
    r = run_cli("inspect", "hi", "--model", str(tiny_wb.config.name), "--expert", str(d))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr


def test_size_limits_and_out_of_memory_are_clear(tiny_dir, tokenizer, monkeypatch, tmp_path):
    from engine import cli
    from engine import data as train_mod

    long = "\n".join(f"Harry went to Hogwarts on day {i}.\n  Then home." for i in range(3000))
    whole = tokenizer(long, add_special_tokens=False)["input_ids"]
    monkeypatch.setattr(train_mod, "CHUNK_CHARS", 997)
    assert train_mod.tokenize_long(tokenizer, long) == whole, "chunked tokenization equals one call"
    big = tmp_path / "big.txt"
    big.write_text("x" * 5000)
    with pytest.raises(UserError, match="MiB"):
        read_text_file(big, "corpus", max_bytes=1000)
    from conftest import make_tiny_llama

    long_context = make_tiny_llama(tmp_path / "long", tokenizer, context=1 << 16)  # like an 8k-128k model
    r = run_cli("inspect", "Ron and " * 15_000, "--model", str(long_context))
    assert r.returncode == 2 and "at most" in r.stderr and "tokens" in r.stderr, r.stderr[-500:]
    assert is_oom(RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"))

    def boom(args):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1099511627776 bytes")
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["translate"].set_defaults(func=boom)
    assert cli.main(["translate", "--anchors", "x", "--text", "y"]) == 2


def test_the_label_cache_key_follows_the_weights_not_the_file_names(tiny_dir, tmp_path, tokenizer):
    import shutil

    from conftest import make_tiny_llama
    from engine.labels import model_fingerprint
    from engine.models import ModelConfig, Workbench

    d = tmp_path / "m"
    shutil.copytree(tiny_dir, d)
    before = model_fingerprint(Workbench.load(ModelConfig(str(d))))
    size = (d / "model.safetensors").stat().st_size
    make_tiny_llama(d, tokenizer, seed=7)  # re-saved in place: same names, same size, new weights
    assert (d / "model.safetensors").stat().st_size == size
    assert model_fingerprint(Workbench.load(ModelConfig(str(d)))) != before


def test_alpha_must_be_finite_and_json_is_strict(tiny_dir):
    for alpha in ("nan", "inf", "-5"):
        r = cli("inspect", "Ron and", "--model", str(tiny_dir), "--alpha", alpha, "--json")
        assert r.returncode == 2 and "alpha" in r.stderr, alpha
    r = cli("inspect", "Harry met Ron and", "--model", str(tiny_dir), "--track", " Hermione", "--json",
                "--anchors", str(ASSETS / "demo_anchors.json"))
    assert r.returncode == 0, r.stderr

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")
    json.loads(r.stdout, parse_constant=no_constants)
    with pytest.raises(UserError, match="twice"):
        parse_json('{"a": 1, "a": 2}')


# -- issue 26: one trust boundary ---------------------------------------------------------------------
REFUSED = ("is outside the folders this page may read", "is not an adapter this page may load",
           "is not a model this page may load")


def _without_path(message: str, path: str) -> str:
    """The message with its (possibly shortened) echo of the path left out: what it says about it."""
    return message.split(" is ", 1)[1]


def test_every_refused_browser_path_reads_the_same(tmp_path, monkeypatch, tiny_dir, tiny_expert_dir):
    """Class 1: outside the roots, a missing path, a folder, a file, `..`, /proc/self/root and a link out
    of the home all get one message (no map of the file system); a full model is never an adapter; a
    hub id needs the owner's OBLIVIATE_HUB=on."""
    from engine.boundary import browser_adapter, browser_model

    home = tmp_path / "home"
    monkeypatch.setenv("OBLIVIATE_HOME", str(home))
    monkeypatch.delenv("OBLIVIATE_BROWSER_ROOTS", raising=False)
    monkeypatch.delenv("OBLIVIATE_MODEL", raising=False)
    shutil.copytree(tiny_dir, home / "models" / "full")
    (home / "link").symlink_to(tiny_expert_dir)
    bad = ["/etc", "/nonexistent", "/etc/passwd", str(home / ".." / ".." / "etc"), "/proc/self/root/etc/passwd",
           str(home / "link"), str(tiny_expert_dir), str(home / "models" / "full")]
    for check in (browser_path, browser_adapter):
        messages = set()
        for path in bad[:-1] if check is browser_path else bad:
            with pytest.raises(UserError) as e:
                check(path, "expert")
            messages.add(_without_path(str(e.value), path))
        assert len(messages) == 1, messages
    shutil.copytree(tiny_expert_dir, home / "runs" / "r" / "adapters" / "expert")
    assert browser_adapter(str(home / "runs" / "r" / "adapters" / "expert"))
    assert browser_model("embedded") == "embedded" and browser_model(str(home / "models" / "full"))
    for name in ("HuggingFaceTB/SmolLM2-135M", "/etc", str(tiny_dir)):
        with pytest.raises(UserError, match="not a model this page may load"):
            browser_model(name)
    monkeypatch.setenv("OBLIVIATE_HUB", "on")
    assert browser_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    monkeypatch.setenv("OBLIVIATE_MODEL", str(tiny_dir))  # the owner's choice is always allowed
    assert browser_model(str(tiny_dir)) == str(tiny_dir)


def test_a_link_loads_no_server_directory_and_adapters_are_evicted(app_env, monkeypatch, tiny_dir, tiny_expert_dir,
                                                                    tiny_unlearned_dir):
    """Class 1 through the app: URL parameters and the sidebar's path box go through the boundary; an
    adapter a session no longer shows is unloaded (three links do not pin three)."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("OBLIVIATE_BROWSER_ROOTS")
    shutil.copytree(tiny_dir, app_env / "models" / "full")
    for kind, src in (("e1", tiny_expert_dir), ("e2", tiny_unlearned_dir)):
        shutil.copytree(src, app_env / "runs" / kind / "adapters" / "expert")
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    at.query_params["expert"] = str(app_env / "models" / "full")
    at.query_params["unlearned"] = "/etc"
    at.run()
    assert not at.exception
    assert sum(any(r in e.value for r in REFUSED) for e in at.sidebar.error) == 2
    assert any("0 adapter(s) loaded" in c.value for c in at.sidebar.caption)
    at.session_state["model"] = "/etc"
    at.run()
    assert any("is not a model this page may load" in e.value for e in at.sidebar.error)
    at.session_state["model"] = str(tiny_dir)
    for run in ("e1", "e2"):
        at.session_state["expert"] = "a path…"
        at.session_state["expert_path"] = str(app_env / "runs" / run / "adapters" / "expert")
        at.session_state["unlearned"] = "none"
        at.run()
        assert not at.exception and any("1 adapter(s) loaded" in c.value for c in at.sidebar.caption), \
            [c.value for c in at.sidebar.caption]


def test_job_files_are_never_read_or_written_through_links(tmp_path):
    """Class 2: a copied run whose log.txt links to a secret, whose config.json links outside, whose
    metrics.jsonl is a FIFO: the readers say unreadable, the writer replaces the link."""
    secret = tmp_path / "shadow"
    secret.write_text("root:SECRET-HASH\n")
    outside = tmp_path / "cfg.json"
    outside.write_text(json.dumps({"method": "whp", "model": {"name": "leaked"}}))
    run = tmp_path / "runs" / "copied"
    run.mkdir(parents=True)
    (run / "log.txt").symlink_to(secret)
    (run / "config.json").symlink_to(outside)
    (run / "status.json").symlink_to(outside)
    os.mkfifo(run / "metrics.jsonl")
    t0 = time.perf_counter()
    assert "SECRET" not in jobs.read_log(run) and "unreadable" in jobs.read_log(run)
    assert jobs.read_json(run, "config.json") is None and jobs.run_model(run) == ""
    assert jobs.read_status(run).state == "unreadable" and jobs.read_metrics(run) == []
    assert time.perf_counter() - t0 < 5, "a FIFO is never opened for reading"
    (run / "status.json").unlink()
    job = jobs.JobWriter(run, "run")
    job.log("a line")
    assert secret.read_text() == "root:SECRET-HASH\n" and "a line" in (run / "log.txt").read_text()
    (run / "big.json").write_bytes(b" " * ((64 << 20) + 1))
    assert jobs.read_json(run, "big.json") is None


def test_the_server_never_calls_a_new_host_for_a_browser_user(app_env, monkeypatch, tmp_path):
    """Class 9: the hub is off in the server unless the owner opts in; the judge endpoint is the owner's
    list; a YAML loaded into the Runs form is refused the same for an existing and a missing path."""
    from engine.boundary import browser_endpoint, browser_path

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("OBLIVIATE_HUB", raising=False)
    open_page("inspect")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(UserError, match="OBLIVIATE_ENDPOINTS"):
        browser_endpoint("http://attacker.example/v1")
    monkeypatch.setenv("OBLIVIATE_ENDPOINTS", "http://127.0.0.1:8000/v1")
    assert browser_endpoint("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    monkeypatch.delenv("OBLIVIATE_BROWSER_ROOTS")
    messages = set()
    for path in ("/etc/passwd", "/nonexistent/x.txt"):
        with pytest.raises(UserError) as e:
            jobs.config_from_bytes(f"method: whp\ncorpus: {path}\n".encode(), "c.yaml", gate=browser_path)
        messages.add(_without_path(str(e.value), path))
    assert len(messages) == 1 and "outside the folders" in messages.pop()


def test_split_encoded_and_url_borne_keys_are_scrubbed(monkeypatch):
    """Class 10: a key broken by a line break, percent-encoded in an error body, or carried inside
    OPENAI_BASE_URL never reaches a message or a page."""
    from urllib.parse import quote

    from engine.boundary import allowed_endpoints, shown_url

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert KEY not in scrub(KEY[:9] + "\n" + KEY[9:], None).replace(" ", "")
    assert "***" in scrub(f"bad key {KEY[:5]}\r\n  {KEY[5:]} given", None)
    encoded = quote(KEY + "/+=", safe="")
    monkeypatch.setenv("OPENAI_API_KEY", KEY + "/+=")
    assert encoded not in scrub(f"GET /v1?key={encoded}", None) and "***" in scrub(f"?key={encoded}", None)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://user:s3cr3t-pass@proxy.example/v1?api-key=abcd1234")
    shown = shown_url(allowed_endpoints()[0])
    assert "s3cr3t" not in shown and "abcd1234" not in shown and "proxy.example" in shown
    assert "s3cr3t-pass" not in scrub("rejected s3cr3t-pass and abcd1234", None)
    assert "abcd1234" not in scrub("rejected s3cr3t-pass and abcd1234", None)
