"""What an evaluation measures (EvalSettings), on what (EvalInputs), and the request a job runs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from ..config import ModelConfig, Section
from ..errors import UserError
from ..io import ASSETS, read_text_file


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
    """Familiarity with the summary and with the expert preamble in context."""
    relearn_steps: int = Field(0, ge=0, le=10_000)
    """Relearning attack: LoRA steps on a corpus slice before familiarity is measured again (0: skip)."""
    relearn_tokens: int = Field(512, ge=0)
    """The slice: the first relearn_tokens tokens of the corpus, in blocks of 128."""
    relearn_lr: float = Field(3e-4, gt=0, lt=1)
    """Learning rate of the relearning attack."""
    relearn_rank: int = Field(8, ge=1)
    """LoRA rank of the fresh adapter relearning starts from on the baseline."""
    judge_model: str | None = None
    """LLM judge (OpenAI-compatible chat model) grading completions 0-3; None: no judge."""
    judge_base_url: str | None = None
    """The judge's endpoint (None: the official one). Its key: see engine/secrets.py."""
    benchmarks: bool = False
    """The paper's benchmarks through lm-evaluation-harness, when it is installed and works offline."""
    benchmark_limit: int = Field(200, ge=1)
    """Examples per benchmark task (lm-eval `limit`)."""
    token_budget: int = Field(2048, ge=1)
    """Tokens per forward batch (a batch holds B x T x vocabulary logits in memory)."""
    seed: int = 0
    """Seeds the relearning adapter's initialisation and data order."""


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
    settings: EvalSettings = EvalSettings()


@dataclass
class EvalInputs:
    """The texts an evaluation reads, loaded."""

    probes: object  # engine.probes.Probes
    corpus: str
    retain: str = ""
    anchors: object = None  # an AnchorDictionary (its enabled terms) or an iterable of terms

    @classmethod
    def load(cls, request: EvalRequest) -> "EvalInputs":
        from ..anchors import load_anchors
        from ..probes import load_probes

        for name, path in request.adapters.items():
            if not Path(os.path.expanduser(path)).exists():
                raise UserError(f"adapter {name}: path does not exist: {path}")
        return cls(load_probes(request.probes), read_text_file(request.corpus, "corpus"),
                   read_text_file(request.retain, "retain") if request.retain else "",
                   load_anchors(request.anchors) if request.anchors else None)
