"""engine/jobs/: the one failure ladder a run and an evaluation share, the face's names, run configs as
YAML and commands, run names, finished jobs reaped by their launcher, the demo built once."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import ASSETS
from engine import jobs
from engine.errors import UserError


@pytest.fixture()
def job(tmp_path, monkeypatch):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    writer = jobs.JobWriter(tmp_path / "job", "eval")
    writer.start(phase="probabilities")
    return writer


def _ends(job, exc: BaseException) -> tuple[BaseException, jobs.Status]:
    with pytest.raises(BaseException) as raised:
        with jobs.failures(job, lambda: "the probabilities stage"):
            raise exc
    return raised.value, jobs.read_status(job.out)


def test_a_user_error_fails_the_job_with_its_line(job):
    raised, status = _ends(job, UserError("corpus: /x does not exist"))
    assert isinstance(raised, UserError) and status.state == "failed" and status.error == "corpus: /x does not exist"
    assert "error: corpus: /x does not exist" in (job.out / "log.txt").read_text()


def test_out_of_memory_on_the_cpu_is_a_user_error_naming_what_ran_out(job):
    raised, status = _ends(job, RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"))
    assert isinstance(raised, UserError) and str(raised).startswith("the probabilities stage ran out of memory")
    assert status.state == "failed" and status.error == str(raised)


def test_a_bug_keeps_its_type_and_traceback_and_the_status_says_its_first_line(job):
    raised, status = _ends(job, ValueError("shapes do not match\nsecond line"))
    assert type(raised) is ValueError and raised.__traceback__ is not None
    assert status.state == "failed" and status.error == "ValueError: shapes do not match"


@pytest.mark.parametrize("exc", [jobs.Cancelled("asked to stop"), KeyboardInterrupt()])
def test_a_cancel_and_ctrl_c_pass_through_for_the_caller_to_say(job, exc):
    raised, status = _ends(job, exc)
    assert raised is exc and status.state == "running"


def test_the_face_keeps_every_name_pages_and_the_cli_use():
    for name in ("Status", "read_status", "list_runs", "list_evals", "launch_run", "launch_eval", "launch_demo",
                 "find_demo", "cancel", "delete", "JobWriter", "queue_slot", "failures", "read_metrics", "read_log",
                 "read_json", "read_eval", "run_adapters", "unlearn_change", "eta_s", "runs_root", "DEMO"):
        assert hasattr(jobs, name), name


# -- run configs as YAML and commands, names, ETA, reaping, the demo ----------------------------------
def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


TINY_DEMO = {"reinforce.steps": 2, "unlearn.steps": 2, "data.block_size": 32, "data.max_blocks": 4,
             "train.batch_size": 2, "probe_every": 1}


def wait_finished(d: str, timeout: float = 240) -> jobs.Status:
    deadline = time.time() + timeout
    while (s := jobs.read_status(d)).active and time.time() < deadline:
        time.sleep(0.5)
    return s


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


@pytest.mark.slow  # a subprocess or a whole run: `make test`, not `make test-fast`
def test_the_demo_run_is_built_once_for_its_model(monkeypatch, tmp_path, tiny_dir):
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path))
    assert jobs.find_demo(str(tiny_dir)) is None
    first = jobs.launch_demo(str(tiny_dir), TINY_DEMO)
    assert Path(first.dir) == tmp_path / "runs" / jobs.demo_name(str(tiny_dir))  # its own, beside the embedded one's
    assert jobs.launch_demo(str(tiny_dir), TINY_DEMO).dir == first.dir  # running: not started twice
    done = wait_finished(first.dir)
    assert done.state == "finished", (done.error, jobs.read_log(first.dir))
    assert set(jobs.run_adapters(first.dir)) == {"expert", "unlearned"}
    assert jobs.find_demo(str(tiny_dir)).state == "finished" and jobs.find_demo("embedded") is None
    again = jobs.launch_demo(str(tiny_dir), TINY_DEMO)
    assert again.state == "finished" and again.pid == done.pid  # finished: returned as is
    cfg = json.loads((Path(first.dir) / "config.json").read_text())
    assert cfg["model"]["name"] == str(tiny_dir) and cfg["unlearn"]["steps"] == 2


def test_a_job_reports_its_own_peak_memory_not_its_parents():
    """A job the Streamlit server starts is a fork + exec of a big process: ru_maxrss survives the exec
    and would report the server's peak; the cost card's VmHWM is the job's own."""
    import subprocess
    import sys

    cost = Path(__file__).resolve().parents[1] / "engine" / "cost.py"  # the file alone: no torch in the child
    child = (f"import importlib.util, resource, sys; s = importlib.util.spec_from_file_location('cost', {str(cost)!r}); "
             "m = sys.modules['cost'] = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
             "print(m.peak_rss_mib(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    code = ("import subprocess, sys\n"
            "big = b'x' * (768 << 20)  # the parent touches 768 MiB\n"
            f"print(subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True, check=True).stdout)")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True).stdout.split())
    assert own < 200, f"the job's own peak is {own:.0f} MiB"
    assert inherited > 700, "ru_maxrss no longer carries the parent's peak: this test no longer tells them apart"
