"""Jobs: long work as a detached `python -m engine <verb> ... --out DIR` process, seen through DIR.

This package owns the job-directory layout; pages and the CLI list, launch, follow and read jobs
through it and never open a job file themselves. Three modules, one face:

    status.py    the layout and the status record: where jobs live, how each of their files reads
    launch.py    starting a run, an evaluation, a corpus generation or the demo as a detached process
    control.py   cancel and delete from outside; JobWriter, the one job slot and the one failure
                 ladder from inside a job

One job runs at a time per OBLIVIATE_HOME: `queue_slot` holds an exclusive file lock for the job's
life, later jobs wait in state "queued". Nothing here imports torch or streamlit.
"""
from .control import Cancelled, JobWriter, cancel, delete, failures, is_job_process, queue_slot  # noqa: F401
from .launch import (config_from_bytes, config_yaml, demo_config, demo_name, find_demo, is_demo, launch,  # noqa: F401
                     launch_corpus, launch_demo, launch_eval, launch_run, list_corpora, resume_run, run_command,
                     run_dir)
from .status import (ACTIVE, DEMO, INTERRUPTED, MARK, STATES, Status, corpora_root, cost_card, eta_s, evals_root,  # noqa: F401
                     Unreadable, is_job_dir, job_roots, list_evals, list_jobs, list_runs, mark, now, pid_alive, read_eval,
                     job_file, read_json, read_log, read_metrics, read_status, run_adapters, run_method, run_model, run_roots,
                     runs_root, unlearn_change)
