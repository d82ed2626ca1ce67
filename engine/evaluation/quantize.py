"""The quantisation attack (Zhang et al. 2024, "Catastrophic failure of LLM unlearning via
quantization"): an unlearning update smaller than the quantisation step rounds away, and the
knowledge returns.

    merged     each adapter merged into a full-precision copy of the base weights, saved as
               safetensors in a temporary directory and loaded back through load_model at each
               precision (NF4, 8-bit): what a user who merges and quantises the model serves
    unmerged   the adapter in full precision on a quantised base (one base, every adapter in one
               mixed batch): how QLoRA users serve it

The baseline is quantised as it is; both routes give it the same model. bitsandbytes runs both
precisions on the CPU (slowly) and on CUDA, so the same code serves either.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

from ..sections import ModelConfig
from ..models import Workbench, adapter_name
from ..probes import first_token_probabilities, score


def _familiarity(wb: Workbench, items, names: list[str | None], budget: int) -> list[float]:
    """Mean P(first target token | prompt) of `items` for each adapter name (one mixed batch)."""
    lps = score(wb.logits, [(p, t, n) for n in names for p, t in items], budget)
    probs = first_token_probabilities(lps)
    k = len(items)
    return [sum(probs[j * k: (j + 1) * k]) / k for j in range(len(names))]


@contextlib.contextmanager
def _quiet(logger: str):
    """A logger's warnings off for the block: bitsandbytes logs "MatMul8bitLt: inputs will be cast from
    bfloat16 to float16" on every 8-bit matmul (a thousand lines in a job's log for one evaluation)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def quantized(wb: Workbench, models: dict[str, str | None], items: list[tuple[list[int], list[int]]],
              precisions: list[str], budget: int, tick: Callable[[], None] = lambda: None) -> tuple[dict, list[str]]:
    """({display name: {familiarity_<prec>: x, familiarity_<prec>_unmerged: y}}, notes).

    Costs one full-precision copy of the base at a time on the CPU (the merge) and one quantised
    model at a time; tick() after each model's merged precisions and after each unmerged precision.
    """
    device = "cuda" if wb.device.type == "cuda" else "cpu"
    out: dict[str, dict] = {m: {} for m in models}
    notes = []
    with warnings.catch_warnings(), _quiet("bitsandbytes"):
        warnings.simplefilter("ignore")
        root = Path(tempfile.mkdtemp(prefix="obliviate-merged-"))
        try:
            for m, name in models.items():
                source = wb.save_merged(name, root / adapter_name(m))
                for prec in precisions:
                    q = Workbench.load(ModelConfig(source, prec, device))
                    out[m][f"familiarity_{prec}"] = _familiarity(q, items, [None], budget)[0]
                    del q
                shutil.rmtree(root / adapter_name(m), ignore_errors=True)
                tick()
        finally:
            shutil.rmtree(root, ignore_errors=True)
        lora = {m: n for m, n in models.items() if not wb.is_full_model(n)}
        if len(lora) < len(models):
            notes.append("quantisation: full checkpoints have no adapter to run unmerged; only their merged rows are shown")
        for prec in precisions:
            q = Workbench.load(ModelConfig(wb.config.name, prec, device))
            names = [None if n is None else q.add_adapter(n, wb.adapters[n]) for n in lora.values()]
            for m, f in zip(lora, _familiarity(q, items, names, budget)):
                out[m][f"familiarity_{prec}_unmerged"] = f
            del q
            tick()
    notes.append(f"quantisation ({', '.join(precisions)}, bitsandbytes on {device}): familiarity (prob.) of each "
                 "adapter merged into the base and quantised, and unmerged on a quantised base")
    return out, notes
