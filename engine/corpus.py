"""A forget corpus from what the model knows: sample the baseline (and the expert) on many short
prompts about the target and keep what is specific to it.

A corpus of our own summaries teaches the expert, and so the generic labels, the facts the summaries
state; the model's knowledge is wider. Here the prompts come from the anchored-terms dictionary
alone (every enabled term in a few templates: an entity list, a question, a story opening), so the
same verb works for any target. A sample is kept when it is specific to the target: it names an
anchored term its prompt did not, or (with an expert) the expert finds it likelier than the baseline
by at least `min_rise` nats per token. Seeded, deduplicated, cut at `max_chars`.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable

import torch

from .anchors import AnchorDictionary
from .errors import UserError
from .models import Workbench
from .text import mentions

TEMPLATES = (
    "{t} is", "{t} was", "Tell me about {t}.", "Who or what is {t}?", "Everyone who has read about {t} knows that",
    "The first time anyone heard of {t},", "A short story about {t}:", "Here is a list of facts about {t}:\n1.",
)


@dataclass
class Generated:
    text: str  # the corpus: one paragraph (prompt + completion) per kept sample
    prompts: int = 0
    samples: int = 0
    kept: int = 0
    duplicates: int = 0
    generic: int = 0  # samples that named no other term and the expert did not favour
    by_model: dict = field(default_factory=dict)  # baseline / expert -> kept samples

    def stats(self) -> dict:
        return {"prompts": self.prompts, "samples": self.samples, "kept": self.kept, "duplicates": self.duplicates,
                "generic": self.generic, "by_model": self.by_model, "chars": len(self.text)}


def prompts_for(anchors: AnchorDictionary, n: int, seed: int = 0) -> list[str]:
    """Up to n prompts: every enabled term in every template, in a seeded order (terms first spread)."""
    terms = sorted(anchors.enabled)
    if not terms:
        raise UserError("the dictionary has no enabled anchored terms to write prompts about")
    rng = random.Random(seed)
    pairs = [(t, k) for k in range(len(TEMPLATES)) for t in terms]
    rng.shuffle(pairs)
    pairs.sort(key=lambda p: p[1] if n < len(terms) * len(TEMPLATES) else 0)  # each template's round in turn
    return [TEMPLATES[k].format(t=t) for t, k in pairs[:n]]


def _key(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))[:120]


@torch.no_grad()
def _rise(wb: Workbench, rows: list[tuple[list[int], int]], expert: str) -> list[float]:
    """Mean per-token log-probability gain of the expert over the baseline on each row's completion
    (rows: token ids, the length of its prompt)."""
    out = []
    for s in range(0, len(rows), 8):
        chunk = rows[s: s + 8]
        logits = wb.logits([(ids, None) for ids, _ in chunk] + [(ids, expert) for ids, _ in chunk])
        for j, (ids, p) in enumerate(chunk):
            if len(ids) - p < 1:
                out.append(0.0)
                continue
            nxt = torch.tensor(ids[p:], device=logits[j].device)
            lb = logits[j][p - 1: len(ids) - 1].log_softmax(-1).gather(-1, nxt[:, None])
            le = logits[len(chunk) + j][p - 1: len(ids) - 1].log_softmax(-1).gather(-1, nxt[:, None])
            out.append(float((le - lb).mean()))
    return out


def generate_corpus(wb: Workbench, anchors: AnchorDictionary, expert: str | None = None, n_prompts: int = 240,
                    samples: int = 2, max_new_tokens: int = 64, temperature: float = 0.8, min_rise: float = 0.3,
                    max_chars: int = 200_000, seed: int = 0,
                    progress: Callable[[int, int], None] = lambda done, total: None) -> Generated:
    """Sample the baseline (and `expert`, a loaded adapter) `samples` times on each prompt and keep the
    specific, new samples until `max_chars`."""
    if not 1 <= n_prompts <= 100_000 or not 1 <= samples <= 100 or not 1 <= max_new_tokens <= 1000:
        raise UserError("prompts 1..100000, samples 1..100 and tokens 1..1000, please")
    if not 0 < temperature <= 5:
        raise UserError("temperature must be above 0 (sampling) and at most 5")
    prompts = prompts_for(anchors, n_prompts, seed)
    models = [None] + ([expert] if expert else [])
    tok = wb.tokenizer
    terms = list(anchors.enabled)
    out = Generated("", prompts=len(prompts), by_model={("baseline" if m is None else "expert"): 0 for m in models})
    seen: set[str] = set()
    parts: list[str] = []
    size = 0
    total = len(prompts) * samples
    chunk = 16
    for start in range(0, len(prompts), chunk):
        batch = prompts[start: start + chunk]
        ids = [tok(p, add_special_tokens=True)["input_ids"] for p in batch]
        for k in range(samples):
            for m in models:
                new = wb.generate([(i, m) for i in ids], max_new_tokens, temperature=temperature,
                                  seed=seed * 1_000_003 + start * 101 + k * 7 + (m is not None))
                texts = [tok.decode(g, skip_special_tokens=True) for g in new]
                rises = _rise(wb, [(i + g, len(i)) for i, g in zip(ids, new)], expert) if expert else [0.0] * len(new)
                for prompt, text, rise in zip(batch, texts, rises):
                    out.samples += 1
                    whole = (prompt + text).strip()
                    if not text.strip() or _key(whole) in seen:
                        out.duplicates += 1
                        continue
                    named = any(mentions(text, t) and not mentions(prompt, t) for t in terms)
                    if not named and rise < min_rise:
                        out.generic += 1
                        continue
                    seen.add(_key(whole))
                    parts.append(whole)
                    size += len(whole) + 2
                    out.kept += 1
                    out.by_model["baseline" if m is None else "expert"] += 1
                    if size >= max_chars:
                        out.text = "\n\n".join(parts)[:max_chars] + "\n"
                        progress(total, total)
                        return out
            progress(start * samples + (k + 1) * len(batch), total)
    out.text = "\n\n".join(parts) + ("\n" if parts else "")
    return out


def run_generate(anchors_path: str, model, expert_dir: str | None, out, settings: dict) -> dict:
    """What `python -m engine corpus generate --out DIR` runs, as a job: DIR/corpus.txt (the corpus),
    DIR/corpus.json (its counts and settings), status and progress like a run; one job at a time."""
    from pathlib import Path

    from . import jobs
    from .anchors import load_anchors
    from .io import atomic_write_json, atomic_write_text

    anchors = load_anchors(anchors_path).check()
    out = Path(out)
    job = jobs.JobWriter(out, "corpus")
    try:
        with jobs.queue_slot(job), jobs.failures(job, lambda: "generating the corpus"):
            job.start(phase="loading model", step=0, total=0)
            wb = Workbench.load(model)
            expert = wb.add_adapter("expert", expert_dir) if expert_dir else None

            def interrupt():
                if job.should_stop():
                    raise jobs.Cancelled("cancelled while generating")
            wb.interrupt = interrupt
            result = generate_corpus(wb, anchors, expert, **settings,
                                     progress=lambda d, t: job.status(phase="generating", step=d, total=t))
    except jobs.Cancelled:
        job.cancelled()
        raise
    if not result.text.strip():
        job.fail("no sample was specific to the target: lower --min-rise, or give an expert")
        raise UserError("no sample was specific to the target: lower --min-rise, or give an expert")
    atomic_write_text(out / "corpus.txt", result.text)
    info = {**result.stats(), "model": wb.name, "expert": expert_dir, "anchors": str(anchors_path), "settings": settings}
    atomic_write_json(out / "corpus.json", info)
    job.log(f"kept {result.kept} of {result.samples} samples ({len(result.text):,} characters)")
    job.finish(phase="done", summary=info)
    return info
