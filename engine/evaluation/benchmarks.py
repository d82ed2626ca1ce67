"""The paper's benchmarks (ARC-Easy/Challenge, BoolQ, HellaSwag, PIQA, WinoGrande, OpenBookQA)
through lm-evaluation-harness, on the baseline and each adapter. Optional: skipped with a note when
lm-eval is not installed or cannot run offline."""
from __future__ import annotations

import importlib.util
import math
import os

from ..models import Workbench

PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa")


def benchmarks(wb: Workbench, models: dict[str, str | None], limit: int) -> tuple[dict, str | None]:
    """({display name: {bench_<task>: accuracy}}, None) or ({}, why it was skipped)."""
    if importlib.util.find_spec("lm_eval") is None:
        return {}, "benchmarks skipped: lm-eval not installed (pip install lm-eval, with its datasets cached)"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        results = {}
        for display, name in models.items():
            with wb.plain_model(name) as model:
                lm = HFLM(pretrained=model, tokenizer=wb.tokenizer, batch_size=8)
                res = lm_eval.simple_evaluate(model=lm, tasks=list(PAPER_TASKS), limit=limit)
            results[display] = {f"bench_{task}": float(r.get("acc,none", r.get("acc", math.nan)))
                                for task, r in res["results"].items()}
        return results, None
    except Exception as e:  # noqa: BLE001 - lm-eval fetches datasets: offline, that fails in many ways, none of them ours
        return {}, f"benchmarks skipped: lm-eval could not run offline ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
