"""Measuring forgetting: the baseline and every adapter side by side, batched.

    evaluate(wb, adapters, inputs, settings)   the stages below over one EvalContext -> a result dict
    run_request(request, job)                  what `python -m engine eval` (and an Evaluate-page job) runs

Stages (engine/evaluation/stages.py): probabilities, completions (+ the LLM judge), verbatim
memorisation, retain perplexity, in-context attacks, relearning attack, benchmarks. Each declares
its cost in progress units, so the progress bar spans them without a hand-kept budget. The metrics
and their meaning are one table (engine/evaluation/table.py) that the page and the CLI both read.
"""
from __future__ import annotations

from .settings import EvalInputs, EvalRequest, EvalSettings  # noqa: F401
from .stages import BASELINE, evaluate, run_request  # noqa: F401
from .table import METRICS, format_table  # noqa: F401
