"""Probes: the prompts forgetting is measured on, and the one function that scores them.

A probes file (assets/probes.json) holds
    probability      [{prompt, target}]: "what comes next", target with its leading space (" Paris")
    completion       [{prompt, references}]: open prompts; references are the names a knowing answer uses
    retain           [{prompt, target}]: neighbouring knowledge that must not move
    summary          a summary of the target text, for the in-context attack
    expert_preamble  "you are an expert on ...", likewise
    concept          what the probes are about ("the books of the corpus"), for the LLM judge's prompt
    few_shot         [{question, answer}]: question/answer pairs for the few-shot in-context attack

`score` gives log P(each target token | prompt) for (prompt, target) items through any forward
function. Training curves (engine/pipeline.py, on the model being trained) and the evaluation table
(engine/evaluation/, through the Workbench) both call it, so the two can never drift apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

from .data import grouped
from .errors import UserError
from .io import parse_json, read_text_file, short


@dataclass
class Probes:
    probability: list[dict] = field(default_factory=list)
    completion: list[dict] = field(default_factory=list)
    retain: list[dict] = field(default_factory=list)
    summary: str = ""
    expert_preamble: str = ""
    concept: str = "the target text"
    few_shot: list[dict] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data, name: str = "probes") -> "Probes":
        if isinstance(data, list):  # a bare list: probability probes (a run config's inline probes)
            data = {"probability": [p for p in data if not isinstance(p, dict) or p.get("kind", "forget") == "forget"],
                    "retain": [p for p in data if isinstance(p, dict) and p.get("kind") == "retain"]}
        if not isinstance(data, dict):
            raise UserError(f"{name}: expected a JSON object with probability / completion / retain lists")
        problems = []
        for key in ("probability", "completion", "retain"):
            items = data.get(key, [])
            if not isinstance(items, list):
                problems.append(f"{key} must be a list")
                continue
            for i, it in enumerate(items):
                if (m := _problem(it, key)):
                    problems.append(f"{key}[{i}]{' ' if m.startswith('needs') else ': '}{m}")
        for key in ("summary", "expert_preamble", "concept"):
            if not isinstance(data.get(key, ""), str):
                problems.append(f"{key} must be a string")
        shots = data.get("few_shot", [])
        if not (isinstance(shots, list) and all(isinstance(q, dict) and isinstance(q.get("question"), str)
                                                and isinstance(q.get("answer"), str) for q in shots)):
            problems.append("few_shot must be a list of {question, answer} strings")
        if problems:
            raise UserError(f"{name}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
        if not any(data.get(k) for k in ("probability", "completion", "retain")):
            raise UserError(f"{name}: no probes (probability, completion and retain are all empty)")
        return cls(list(data.get("probability", [])), list(data.get("completion", [])),
                   list(data.get("retain", [])), data.get("summary", ""), data.get("expert_preamble", ""),
                   data.get("concept") or "the target text", list(shots))

    def tracked(self) -> list[dict]:
        """The probes a run tracks while it trains: {name, prompt, target, kind: forget | retain}."""
        return [{"name": probe_name(p), "prompt": p["prompt"], "target": p["target"], "kind": kind}
                for kind, items in (("forget", self.probability), ("retain", self.retain)) for p in items]


def _problem(it, key: str) -> str | None:
    need = ("prompt", "references") if key == "completion" else ("prompt", "target")
    if not isinstance(it, dict) or not all(k in it for k in need):
        return f"needs {' and '.join(need)}"
    if not isinstance(it["prompt"], str) or not it["prompt"].strip():
        return "empty prompt"
    if key == "completion":
        refs = it["references"]
        if not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
            return "references must be a list of strings"
    elif not isinstance(it["target"], str) or not it["target"].strip():
        return "empty target"
    if it.get("kind", "forget") not in ("forget", "retain"):
        return f"kind must be forget or retain, not {short(it.get('kind'))}"
    return None


def load_probes(path: str | os.PathLike) -> Probes:
    """The one probe loader: a probes.json (or a list of {prompt, target[, kind]})."""
    return Probes.from_dict(parse_json(read_text_file(path, "probes"), f"probes {path}"), f"probes {path}")


def probe_problems(value) -> list[str]:
    """What is wrong with a run config's `probes` field (a path or an inline list), as config problems."""
    if value is None:
        return []
    try:
        if isinstance(value, str):
            load_probes(value)
        elif isinstance(value, list):
            bad = [f"probes[{i}]: {m}" for i, p in enumerate(value) if (m := _problem(p, "probability"))]
            if bad:
                return bad
        else:
            return [f"probes: expected a list of {{prompt, target}} or a probes.json path, got {short(value)}"]
    except UserError as e:
        return [f"probes: {e}"]
    return []


def run_probes(value) -> list[dict]:
    """A run config's `probes` field as the tracked list (empty when there are none)."""
    if value is None:
        return []
    return (load_probes(value) if isinstance(value, str) else Probes.from_dict(value)).tracked()


def probe_name(p: dict) -> str:
    """How a tracked probe is named in metrics.jsonl and on the pages: P(' Paris' | …The capital of France is)."""
    tail = " ".join(p["prompt"].split()[-5:])
    return f"P({p['target']!r} | …{tail})"


# -- scoring ------------------------------------------------------------------------------------------
Row = tuple[list[int], "str | None"]  # token ids, adapter name (None: the baseline)


def encode(tokenizer, items: list[dict]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with the tokenizer's special tokens, target ids without) for {prompt, target} items."""
    out = [(tokenizer(p["prompt"], add_special_tokens=True)["input_ids"],
            tokenizer(p["target"], add_special_tokens=False)["input_ids"]) for p in items]
    if any(not t for _, t in out):
        raise UserError("a probe target has no tokens")
    return out


def continuation_logprobs(logits: torch.Tensor, start: int, targets: list[int]) -> torch.Tensor:
    """log P(targets[j] | ids[: start + j]) for a forward over ids = prompt + targets[:-1].

    logits: (T, V) next-token logits of that forward, start = len(prompt). The prediction made at
    position start - 1 + j is for targets[j]. Returns (len(targets),).
    """
    n = len(targets)
    rows = logits[start - 1: start - 1 + n].float()  # (n, V)
    if rows.shape[0] != n:
        raise ValueError(f"logits cover {logits.shape[0]} positions, need {start - 1 + n}")
    idx = torch.tensor(targets, device=rows.device).unsqueeze(1)  # (n, 1)
    return torch.log_softmax(rows, dim=-1).gather(1, idx).squeeze(1)


@torch.no_grad()
def score(forward: Callable[[list[Row]], list[torch.Tensor]], items: list[tuple[list[int], list[int], "str | None"]],
          budget: int = 2048) -> list[torch.Tensor]:
    """log P(target tokens | prompt) on the CPU, (len(target),) per (prompt ids, target ids, adapter) item.

    forward(rows) -> one (T_i, V) logits tensor per row: Workbench.logits (adapters mixed in one batch)
    or a training model's own forward. Rows are grouped to at most `budget` padded tokens.
    """
    rows = [(p + t[:-1], a) for p, t, a in items]
    return grouped(rows, budget, forward, lambda i, lg: continuation_logprobs(lg, len(items[i][0]), items[i][1]).cpu())


def first_token_probabilities(logprobs: list[torch.Tensor]) -> list[float]:
    """P(first target token | prompt): where the model commits to the answer (" Par" of " Paris", if it splits)."""
    return [float(lp[0].exp()) for lp in logprobs]
