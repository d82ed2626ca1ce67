"""engine/jobs/: the one failure ladder a run and an evaluation share, and the face's names."""
from __future__ import annotations

import pytest

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
