"""How long a run or an evaluation will take, before it starts: a cost model in forward-token units.

Every piece of work is counted as tokens through the model, times the seconds one token costs a
forward pass per parameter on this machine (`FORWARD_S`), so a bigger model scales by its parameter
count P:

    forward(tokens)   = tokens x P x FORWARD_S
    train step        = forward(batch x block) x (1 + BACKWARD x f)
                        f: the share of the parameters the backward pass crosses: the LM head always
                        (the loss is above it), and the adapted top layers (lora.layers of all)
    decode(rows, new) = forward(prompts) + new x (DECODE_STEP_S + forward(rows x DECODE))
                        a greedy step reads every weight for a few tokens: memory-bound, not FLOP-bound
    load              = LOAD_S + P x LOAD_PER_PARAM_S           (imports, weights, one job process)
    run   = load + reinforce.steps x step + labels + unlearn.steps x step x (1 + RETAIN) + probes
            labels:   two forwards per corpus token (baseline on the translation, expert on the original)
            RETAIN:   with a retain text each unlearn step also scores a retain batch: a baseline
                      forward and a second train step
            probes:   at step 0, every probe_every steps and at the end, every tracked probe's prompt
            (+ PHASE_S per training phase: a fresh LoRA, the optimizer, saving the adapter)
    eval  = load + per model: probe forwards, greedy completions and verbatim passages (decode),
            retain perplexity, the in-context variants (the summary / preamble as a shared prefix),
            relearning steps

The constants were fitted on the 2-core development machine to the phase times of real runs
(bench/estimate_error.py measures a short run and an evaluation next to this estimate in the same
process and prints the ratio). The error on that machine is in docs/workbench.md ("Expected durations"); a loaded
CPU runs slower by the load's factor, which no model of the run itself can know.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig

# Fitted on 2 shared cores (fp32, SmolLM2-135M, torch 2.x CPU): see the module docstring.
FORWARD_S = 3.0e-11  # seconds per token per parameter, batched forward (1.5 s for 4 x 128 tokens, 135M)
BACKWARD = 2.0  # a backward pass over the crossed parameters costs ~2 forwards
LOAD_S = 12.0  # a job process: python, torch, transformers, accelerate imports
LOAD_PER_PARAM_S = 1.5e-8  # reading and placing the weights (2 s for 135M fp32)
PHASE_S = 3.0  # a training phase's set-up: a fresh LoRA, the optimizer, saving the adapter
RETAIN = 1.6  # extra train-step equivalents per unlearn step with a retain text (baseline fwd + step)
PADDING = 1.4  # probe prompts of different lengths in one padded batch
DECODE = 3.7  # a greedy decoding step costs this many batched-forward tokens per row (memory-bound)
DECODE_STEP_S = 0.05  # and this much per step, whatever the batch
CHARS_PER_TOKEN = 4.2  # English text through a BPE tokenizer, when no tokenizer is at hand
EMBEDDED_PARAMS = 134_515_008  # SmolLM2-135M-Instruct
EMBEDDED_SHAPE = {"hidden_size": 576, "num_hidden_layers": 30, "vocab_size": 49_152}
GEMMA_SHAPE = {"embedded:gemma3-270m": {"params": 268_098_176, "hidden_size": 640, "num_hidden_layers": 18,
                                        "vocab_size": 262_144}}  # tied embeddings: the head is the embedding


@dataclass
class ModelShape:
    """What the cost model needs to know about a model: its size and where its parameters are."""

    params: float
    layers: int
    head_params: float  # the LM head (vocab x hidden): every backward pass crosses it

    def crossed(self, adapted_layers: int | list[int] | None) -> float:
        """Share of the parameters a LoRA backward pass crosses: the head and every block from the lowest
        adapted one up (lora.layers: the top N, or a list of blocks)."""
        body = max(self.params - self.head_params, 0.0)
        if isinstance(adapted_layers, list):
            adapted_layers = self.layers - min(adapted_layers) if adapted_layers else None
        n = self.layers if adapted_layers is None else min(adapted_layers, self.layers)
        return (self.head_params + body * n / max(self.layers, 1)) / max(self.params, 1.0)


@dataclass
class Estimate:
    """Expected seconds, in total and per part (load, reinforce, labels, unlearn ... / a stage)."""

    seconds: float
    parts: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        """'about 4 min (load 11 s · reinforce 52 s · ...)': what a page or `--check` prints."""
        parts = " · ".join(f"{k} {duration(v)}" for k, v in self.parts.items() if v >= 0.5)
        return f"about {duration(self.seconds)}" + (f" ({parts})" if parts else "")


def duration(seconds: float) -> str:
    """12 s, 3 min, 1 h 5 min: rounded as an estimate should be."""
    s = max(float(seconds), 0.0)
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 3600:
        return f"{round(s / 60)} min" if s >= 600 else f"{s / 60:.1f} min".replace(".0 min", " min")
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m} min" if m else f"{h} h"


# -- the model's shape, without loading it ----------------------------------------------------------
def model_shape(name: str) -> ModelShape | None:
    """From the model's config.json (a local directory, the embedded model, or a cached hub model);
    None when it cannot be read without downloading."""
    if name == "embedded":
        cfg = EMBEDDED_SHAPE
        return ModelShape(EMBEDDED_PARAMS, cfg["num_hidden_layers"], cfg["vocab_size"] * cfg["hidden_size"])
    if name in GEMMA_SHAPE:
        cfg = GEMMA_SHAPE[name]
        return ModelShape(cfg["params"], cfg["num_hidden_layers"], cfg["vocab_size"] * cfg["hidden_size"])
    path = Path(os.path.expanduser(name)) / "config.json"
    try:
        cfg = json.loads(path.read_text()) if path.is_file() else _hub_config(name)
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    cfg = cfg.get("text_config", cfg) if isinstance(cfg.get("text_config"), dict) else cfg
    h, layers = cfg.get("hidden_size") or cfg.get("n_embd"), cfg.get("num_hidden_layers") or cfg.get("n_layer")
    vocab = cfg.get("vocab_size")
    if not all(isinstance(x, int) and x > 0 for x in (h, layers, vocab)):
        return None
    inter = cfg.get("intermediate_size") if isinstance(cfg.get("intermediate_size"), int) else 4 * h
    # attention (4 h^2) + gated MLP (3 h x inter) per layer; embeddings and head
    params = layers * (4 * h * h + 3 * h * inter) + (1 if cfg.get("tie_word_embeddings") else 2) * vocab * h
    return ModelShape(float(params), layers, float(vocab * h))


def _hub_config(name: str):
    """A hub model's config.json if it is in the local Hugging Face cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(name, "config.json")
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def _tokens(path: str | None, tokenizer=None, limit: int | None = None) -> int:
    """Tokens of a text file: exact with a tokenizer, else from its size."""
    if not path:
        return 0
    try:
        if tokenizer is not None:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            n = math.ceil(Path(path).stat().st_size / CHARS_PER_TOKEN)
    except OSError:
        return 0
    return min(n, limit) if limit else n


def _forward(tokens: float, shape: ModelShape) -> float:
    return tokens * shape.params * FORWARD_S


def _probe_tokens(probes) -> tuple[int, int]:
    """(prompts, tokens) of a run's tracked probes (a probes.json path or a list), from their length."""
    from .probes import run_probes

    try:
        items = run_probes(probes)
    except Exception:  # noqa: BLE001 - an unreadable probes file is the config check's to report
        return 0, 0
    return len(items), sum(math.ceil(len(p["prompt"]) / CHARS_PER_TOKEN) + 1 for p in items)


# -- a run ---------------------------------------------------------------------------------------------
def estimate_run(cfg: RunConfig, tokenizer=None, shape: ModelShape | None = None) -> Estimate:
    """Expected wall time of `python -m engine run` for this config on this machine (one process).

    tokenizer: counts the corpus exactly (else its size / CHARS_PER_TOKEN); shape: the model's, when
    the caller knows it (else read from the model's config.json).
    """
    from .pipeline import plan

    shape = shape or model_shape(cfg.model.name)
    if shape is None:
        return Estimate(0.0, notes=[f"no estimate: the size of {cfg.model.name!r} is unknown until it is loaded"])
    phases = plan(cfg)
    block, batch = cfg.data.block_size, cfg.train.batch_size * cfg.train.grad_accum
    corpus = _tokens(cfg.corpus, tokenizer)
    blocks = max(1, math.ceil(corpus / block))
    if cfg.data.max_blocks:
        blocks = min(blocks, cfg.data.max_blocks)
    step_tokens = batch * min(block, corpus or block)
    step = _forward(step_tokens, shape) * (1 + BACKWARD * shape.crossed(cfg.lora.layers))
    n_probes, probe_tok = _probe_tokens(cfg.probes)
    parts = {"load": LOAD_S + shape.params * LOAD_PER_PARAM_S}

    def probing(steps: int) -> float:  # at step 0, every probe_every steps and at the end
        return (steps // cfg.probe_every + 2) * _forward(probe_tok * PADDING, shape) if n_probes else 0.0

    if "reinforce" in phases:
        parts["reinforce"] = PHASE_S + cfg.reinforce.steps * step + probing(cfg.reinforce.steps)
    if "labels" in phases:
        parts["labels"] = _forward(2 * blocks * block, shape)
    if "unlearn" in phases:
        retain = RETAIN if cfg.retain.text and cfg.retain.weight > 0 else 0.0
        parts["unlearn"] = PHASE_S + cfg.unlearn.steps * step * (1 + retain) + probing(cfg.unlearn.steps)
    notes = []
    if "labels" in phases:
        notes.append("labels already cached for the same model, expert, dictionary and corpus take seconds")
    return Estimate(sum(parts.values()), parts, notes)


# -- an evaluation -------------------------------------------------------------------------------------
def estimate_eval(request, tokenizer=None, shape: ModelShape | None = None) -> Estimate:
    """Expected wall time of `python -m engine eval` for an EvalRequest (engine.evaluation.settings)."""
    from .probes import load_probes

    s = request.settings
    shape = shape or model_shape(request.model.name)
    if shape is None:
        return Estimate(0.0, notes=[f"no estimate: the size of {request.model.name!r} is unknown until it is loaded"])
    try:
        probes = load_probes(request.probes)
    except Exception:  # noqa: BLE001 - the launch reports a bad probes file
        return Estimate(0.0, notes=["no estimate: the probes file cannot be read"])
    m = 1 + len(request.adapters)  # the baseline and each adapter

    def toks(items) -> int:
        return sum(math.ceil(len(p["prompt"]) / CHARS_PER_TOKEN) + 2 for p in items)

    prob, retain, comp = probes.probability, probes.retain, probes.completion
    parts = {"load": LOAD_S + shape.params * LOAD_PER_PARAM_S}
    def decode(rows: int, prompt_tokens: int, new: int) -> float:
        """Greedy decoding of `rows` prompts: the prompts' forward, then `new` memory-bound steps."""
        return _forward(prompt_tokens, shape) + new * (DECODE_STEP_S + _forward(rows * DECODE, shape))

    parts["probabilities"] = m * _forward((toks(prob) + toks(retain)) * PADDING, shape)
    if comp:
        parts["completions"] = m * decode(len(comp), toks(comp), s.max_new_tokens)
    if s.verbatim_passages:
        n = s.verbatim_passages
        parts["verbatim"] = m * decode(n, n * s.verbatim_prefix, s.verbatim_tokens)
    if s.retain_max_tokens and request.retain:
        parts["perplexity"] = m * _forward(_tokens(request.retain, tokenizer, s.retain_max_tokens), shape)
    if s.robustness and prob:  # the summary and the preamble are a shared prefix, read once per model
        summary = math.ceil(len(probes.summary or "") / CHARS_PER_TOKEN)
        preamble = math.ceil(len(probes.expert_preamble or "") / CHARS_PER_TOKEN)
        parts["robustness"] = m * 2 * _forward(summary + preamble + 2 * toks(prob) * PADDING, shape)
    if s.relearn_steps and prob:
        step = _forward(4 * 128, shape) * (1 + BACKWARD)  # relearning: LoRA on every layer
        parts["relearning"] = m * (s.relearn_steps * step + _forward(toks(prob), shape))
    notes = ["the LLM judge's time depends on its endpoint"] if s.judge_model else []
    if s.benchmarks:
        notes.append("benchmarks (lm-eval) are not included")
    return Estimate(sum(parts.values()), parts, notes)
