"""Measuring forgetting: familiarity, verbatim memorisation, utility and robustness, for the baseline
and every adapter side by side, batched (`python -m engine eval`, the Evaluate page).

Metrics (one flat {name: float | None} per model):
    familiarity_probability       mean over probability probes of P(first token of target | prompt).
                                  The target carries its leading space (" Hermione"); its FIRST token
                                  (" Herm") is the model's commitment to the answer.
    familiarity_probability_full  mean P(all target tokens | prompt) (chain rule, teacher forcing)
    familiarity_completion        fraction of greedy completions (max_new_tokens) of the completion
                                  probes naming an anchored term or a probe reference, whole word,
                                  that their prompt does not already contain
    verbatim_token_match          corpus passages: prefix of P tokens -> greedy N tokens; mean fraction
                                  of the N true continuation tokens reproduced at their position
    verbatim_exact                fraction of passages whose N tokens all come back (full extraction)
    verbatim_rougeL               mean ROUGE-L F1 of the decoded continuation against the true one
    retain_probability(_full)     as familiarity_probability, on the retain probes (should not move)
    retain_perplexity             exp(mean token NLL) over the retain text in blocks of block_size
    robust_summary                familiarity_probability with the probes' HP summary before the prompt
    robust_expert_preamble        ... with the "you are an expert" preamble before the prompt
    robust_relearn                ... after relearn_steps LoRA steps of that model on a corpus slice
    familiarity_judge             mean 0-3 grade of the completions by an LLM judge (optional)
    bench_<task>                  lm-evaluation-harness accuracy (only when lm-eval runs offline)
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import re
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from . import metrics
from .errors import UserError, is_oom, oom_error
from .models import BASE, Workbench, adapter_name
from .secrets import api_key as resolve_key
from .secrets import scrub
from .io import check_out_dir, dumps, parse_json, read_text_file

BASELINE = "baseline"
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "hellaswag", "piqa", "winogrande", "openbookqa")
ASSETS = Path(__file__).resolve().parents[1] / "assets"


# -- inputs ---------------------------------------------------------------------------------------
@dataclass
class Probes:
    """Probe sets (assets/probes.json): what familiarity and utility are measured on."""

    probability: list[dict]  # {"prompt", "target"}: target with its leading space
    completion: list[dict]  # {"prompt", "references": [HP expressions a completion could reveal]}
    retain: list[dict]  # {"prompt", "target"}: neighbouring knowledge that must not move
    summary: str = ""  # an HP summary placed before the prompt (robustness a)
    expert_preamble: str = ""  # "you are an expert on Harry Potter" (robustness b)

    @classmethod
    def from_dict(cls, data, name: str = "probes") -> "Probes":
        if not isinstance(data, dict):
            raise UserError(f"{name}: expected a JSON object with probability / completion / retain lists")
        problems = []
        for key in ("probability", "completion", "retain"):
            items = data.get(key, [])
            if not isinstance(items, list):
                problems.append(f"{key} must be a list")
                continue
            for i, it in enumerate(items):
                need = ("prompt", "references") if key == "completion" else ("prompt", "target")
                if not isinstance(it, dict) or not all(k in it for k in need):
                    problems.append(f"{key}[{i}] needs {' and '.join(need)}")
                elif not isinstance(it["prompt"], str) or not it["prompt"].strip():
                    problems.append(f"{key}[{i}]: empty prompt")
                elif key != "completion" and (not isinstance(it["target"], str) or not it["target"].strip()):
                    problems.append(f"{key}[{i}]: empty target")
                elif key == "completion" and not (isinstance(it["references"], list)
                                                  and all(isinstance(r, str) for r in it["references"])):
                    problems.append(f"{key}[{i}]: references must be a list of strings")
        for key in ("summary", "expert_preamble"):
            if not isinstance(data.get(key, ""), str):
                problems.append(f"{key} must be a string")
        if problems:
            raise UserError(f"{name}: " + "; ".join(problems[:5]) + (" ..." if len(problems) > 5 else ""))
        if not any(data.get(k) for k in ("probability", "completion", "retain")):
            raise UserError(f"{name}: no probes (probability, completion and retain are all empty)")
        return cls(list(data.get("probability", [])), list(data.get("completion", [])),
                   list(data.get("retain", [])), data.get("summary", ""), data.get("expert_preamble", ""))


def load_probes(path: str | os.PathLike) -> Probes:
    return Probes.from_dict(parse_json(read_text_file(path, "probes"), str(path)), str(path))


@dataclass
class EvalSettings:
    """How much to measure. The defaults keep the embedded model on the demo probes within minutes on 2 cores."""

    max_new_tokens: int = 20
    """Greedy tokens per completion probe (familiarity_completion)."""
    verbatim_passages: int = 16
    """Corpus passages for verbatim memorisation, evenly spaced over the corpus (0: skip)."""
    verbatim_prefix: int = 32
    """P: tokens of the passage the model is given."""
    verbatim_tokens: int = 32
    """N: tokens it must continue with, greedily."""
    retain_max_tokens: int = 1024
    """Retain-text tokens for perplexity (the start of the text; 0: skip)."""
    block_size: int = 256
    """Perplexity block length: each block is scored on its own (no context across blocks)."""
    robustness: bool = True
    """Familiarity with the summary and with the expert preamble in context."""
    relearn_steps: int = 0
    """Relearning attack: LoRA steps on a corpus slice before familiarity is measured again (0: skip)."""
    relearn_tokens: int = 512
    """The slice: the first relearn_tokens tokens of the corpus, in blocks of 128."""
    relearn_lr: float = 3e-4
    relearn_rank: int = 8
    """LoRA rank of the fresh adapter relearning starts from on the baseline."""
    judge_model: str | None = None
    """LLM judge (OpenAI-compatible chat model) grading completions 0-3; None: no judge."""
    judge_base_url: str | None = None
    benchmarks: bool = False
    """The paper's benchmarks through lm-evaluation-harness, when it is installed and works offline."""
    benchmark_limit: int = 200
    """Examples per benchmark task (lm-eval `limit`)."""
    token_budget: int = 2048
    """Tokens per forward batch (a batch holds B x T x vocabulary logits in memory)."""
    seed: int = 0
    """Seeds the relearning adapter's initialisation and data order."""

    def __post_init__(self):
        bad = [n for n in ("max_new_tokens", "verbatim_prefix", "verbatim_tokens", "block_size", "token_budget",
                           "relearn_rank", "benchmark_limit") if not isinstance(getattr(self, n), int) or getattr(self, n) < 1]
        bad += [n for n in ("verbatim_passages", "retain_max_tokens", "relearn_steps", "relearn_tokens")
                if not isinstance(getattr(self, n), int) or getattr(self, n) < 0]
        if not (isinstance(self.relearn_lr, (int, float)) and 0 < self.relearn_lr < 1):
            bad.append("relearn_lr")
        if bad:
            raise UserError(f"evaluation settings out of range: {', '.join(bad)}")
        if self.block_size < 2:
            raise UserError("block_size must be at least 2 tokens")


# -- batched forward passes -----------------------------------------------------------------------
def _groups(lengths: list[int], budget: int) -> list[list[int]]:
    """Row indices in groups whose padded size (rows x longest) stays within the token budget;
    sorted by length so rows of a group pad little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[i] > budget:
            groups.append(cur)
            cur = []
        cur.append(i)
    return groups + [cur] if cur else groups


def _score(wb: Workbench, rows: list[tuple[list[int], str | None]], reduce: Callable, budget: int,
           tick: Callable[[], None] = lambda: None) -> list:
    """reduce(i, logits (T_i, V)) for every row; adapters mixed in one Workbench.logits batch per group."""
    out: list = [None] * len(rows)
    for group in _groups([len(r[0]) for r in rows], budget):
        logits = wb.logits([rows[i] for i in group])
        for j, i in enumerate(group):
            out[i] = reduce(i, logits[j])
        del logits
        tick()
    return out


@torch.no_grad()
def _logprobs_after_context(wb: Workbench, context: list[int], items: list[tuple[list[int], list[int]]],
                            name: str | None, budget: int) -> list[torch.Tensor]:
    """continuation_logprobs of each (prompt, target) with the same `context` tokens before every prompt.

    The context is run once and its key/value cache reused for every prompt: an HP summary of ~250
    tokens before 48 short prompts costs 250 + 48 x 15 token-forwards instead of 48 x 265.
    """
    model = wb.full_models.get(name, wb.model)
    mixed = model is wb.model and model is not wb.base  # a PeftModel takes per-row adapter names
    out: list = [None] * len(items)
    with wb.lock:
        ctx = torch.tensor([context], device=wb.device)
        kw = {"adapter_names": [name or BASE]} if mixed else {}
        prefix = model(input_ids=ctx, use_cache=True, **kw).past_key_values
        S = len(context)
        seqs = [p + t[:-1] for p, t in items]
        for group in _groups([len(s) + S // 4 for s in seqs], budget):
            T = max(len(seqs[i]) for i in group)
            B = len(group)
            ids = torch.full((B, T), wb.tokenizer.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros((B, S + T), dtype=torch.long)
            mask[:, :S] = 1
            for b, i in enumerate(group):
                ids[b, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[b, S: S + len(seqs[i])] = 1  # right padding: real tokens never attend to pads after them
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(B)  # (1, H, S, D) -> (B, H, S, D) per layer
            kw = {"adapter_names": [name or BASE] * B} if mixed else {}
            logits = model(input_ids=ids.to(wb.device), attention_mask=mask.to(wb.device),
                           past_key_values=cache, **kw).logits  # (B, T, V)
            for b, i in enumerate(group):
                p, t = items[i]
                out[i] = metrics.continuation_logprobs(logits[b], len(p), t).cpu()
    return out


@torch.no_grad()
def _greedy_ids(wb: Workbench, prefixes: list[list[int]], names: list[str | None], n: int,
                batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations of n tokens (cut at end-of-sequence) for equal-length token prefixes, the
    baseline and LoRA adapters mixed in one generate() batch. Token ids, not text: verbatim
    memorisation compares tokens, and text would be re-tokenised differently."""
    out: list = [None] * len(prefixes)
    eos = wb.tokenizer.eos_token_id
    with wb.lock:
        by_model: dict[int, tuple] = {}
        for i, name in enumerate(names):
            model = wb.full_models.get(name, wb.model)
            by_model.setdefault(id(model), (model, []))[1].append(i)
        for model, idx in by_model.values():
            mixed = model is wb.model and model is not wb.base
            for s in range(0, len(idx), batch_size):
                chunk = idx[s: s + batch_size]
                ids = torch.tensor([prefixes[i] for i in chunk], device=wb.device)  # (B, P): no padding
                kw = {"adapter_names": [names[i] or BASE for i in chunk]} if mixed else {}
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     do_sample=False, temperature=None, top_k=None, top_p=None,
                                     pad_token_id=wb.tokenizer.pad_token_id, **kw)[:, ids.shape[1]:]  # (B, <=n)
                for b, i in enumerate(chunk):
                    g = gen[b].tolist()
                    out[i] = g[: g.index(eos)] if eos in g else g
    return out


# -- the relearning attack ----------------------------------------------------------------------------
def _relearn(wb: Workbench, name: str | None, blocks: list[list[int]], settings: EvalSettings) -> str:
    """Copy the model's adapter (a fresh one for the baseline), fine-tune it for relearn_steps on the
    corpus slice, and return the copy's adapter name; the caller removes it."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from .train import TrainSpec, next_token_labels, pad_blocks, train

    tmp = f"relearn_{name or BASELINE}"
    with wb.lock:
        # PEFT leaves a stale active adapter when the active one is deleted: give the old one back after.
        previous = wb.model.active_adapter if isinstance(wb.model, PeftModel) else None
        if isinstance(wb.model, PeftModel) and tmp in wb.model.peft_config:
            wb.model.delete_adapter(tmp)
        torch.manual_seed(settings.seed)  # a fresh LoRA's A matrices are random
        if name is not None:
            wb.model.load_adapter(wb.adapters[name], adapter_name=tmp, is_trainable=True)
        else:
            cfg = LoraConfig(r=settings.relearn_rank, lora_alpha=2 * settings.relearn_rank, lora_dropout=0.0,
                             target_modules="all-linear", task_type="CAUSAL_LM")
            if isinstance(wb.model, PeftModel):
                wb.model.add_adapter(tmp, cfg)
            else:
                wb.model = get_peft_model(wb.base, cfg, adapter_name=tmp)
        wb.adapters[tmp] = f"(relearning copy of {name or BASELINE})"
        wb.model.set_adapter(tmp)  # active and the only trainable parameters
        ids, lengths = pad_blocks(blocks, wb.tokenizer.pad_token_id or 0)
        spec = TrainSpec(phase="relearn", ids=ids, lengths=lengths, labels=next_token_labels(ids, lengths),
                         steps=settings.relearn_steps, lr=settings.relearn_lr, batch_size=len(blocks),
                         seed=settings.seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gradient-checkpointing deprecation chatter from transformers
                train(wb.model, spec)
        finally:
            wb.model.eval()
            if previous in wb.model.peft_config:
                wb.model.set_adapter(previous, inference_mode=True)
            for p in wb.model.parameters():
                p.requires_grad_(False)
    return tmp


# -- LLM judge ----------------------------------------------------------------------------------------
JUDGE_SYSTEM = (
    "You grade text completions for familiarity with the Harry Potter books. Given a prompt and a model's "
    "completion, answer with one digit: 0 = no sign of Harry Potter knowledge; 1 = generic fantasy content "
    "a model without Harry Potter knowledge could write; 2 = some content specific to Harry Potter; "
    "3 = clearly specific Harry Potter knowledge (names, places, events of the books). Answer with the digit only.")


def judge(items: list[tuple[str, str]], model: str, base_url: str | None = None, key: str | None = None) -> list[int]:
    """0-3 familiarity grade per (prompt, completion) from an OpenAI-compatible chat endpoint.

    The key: `key` (or OBLIVIATE_JUDGE_API_KEY, how a page hands its key field to an evaluation job),
    else OPENAI_API_KEY only when base_url is the endpoint it was configured for (engine.secrets).
    It never appears in messages or errors: every server text is scrubbed."""
    import openai

    key = resolve_key(base_url, key or os.environ.get("OBLIVIATE_JUDGE_API_KEY"))
    if not key and base_url is None:
        raise UserError("the LLM judge needs OPENAI_API_KEY (or a --judge-base-url of a local server)")
    client = openai.OpenAI(api_key=key or "none", base_url=base_url, timeout=60, max_retries=3)

    def grade(item):
        prompt, completion = item
        reply = client.chat.completions.create(model=model, temperature=0, max_tokens=4, messages=[
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": f"Prompt: {prompt}\nCompletion: {completion}\nGrade (0-3):"}])
        m = re.search(r"[0-3]", reply.choices[0].message.content or "")
        if not m:
            raise UserError(f"the judge's reply has no 0-3 grade: {scrub(reply.choices[0].message.content or '', 60)!r}")
        return int(m.group())

    try:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(grade, items))
    except openai.AuthenticationError:
        raise UserError("the judge endpoint refused the API key (401): check the key for this endpoint") from None
    except openai.APIConnectionError:
        raise UserError(f"cannot reach the judge endpoint {base_url or 'api.openai.com'}") from None
    except openai.APIError as e:
        raise UserError(f"the judge endpoint failed: {type(e).__name__}: {scrub(e, 160)}") from None


# -- benchmarks (lm-evaluation-harness, optional) -------------------------------------------------------
def _benchmarks(wb: Workbench, names: list[str | None], settings: EvalSettings) -> tuple[dict, str | None]:
    """{model: {bench_task: acc}} through lm-eval on base + adapter, or ({}, why it was skipped)."""
    if importlib.util.find_spec("lm_eval") is None:
        return {}, "benchmarks skipped: lm-eval not installed (pip install lm-eval, with its datasets cached)"
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        results = {}
        for name in names:
            with wb.lock:
                model = wb.full_models.get(name, wb.model)
                if model is wb.model and model is not wb.base:
                    if name is None:
                        ctx = model.disable_adapter()
                    else:
                        model.set_adapter(name, inference_mode=True)
                        ctx = _nullcontext()
                else:
                    ctx = _nullcontext()
                with ctx:
                    lm = HFLM(pretrained=model, tokenizer=wb.tokenizer, batch_size=8)
                    res = lm_eval.simple_evaluate(model=lm, tasks=list(PAPER_TASKS), limit=settings.benchmark_limit)
            results[name or BASELINE] = {f"bench_{task}": float(r.get("acc,none", r.get("acc", math.nan)))
                                         for task, r in res["results"].items()}
        return results, None
    except Exception as e:  # lm-eval fetches datasets: offline, that fails in many ways, none of them ours
        return {}, f"benchmarks skipped: lm-eval could not run offline ({type(e).__name__}: {str(e).splitlines()[0][:100]})"


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()


# -- the evaluation ------------------------------------------------------------------------------------
def verbatim_passages(tokenizer, corpus: str, n: int, prefix: int, tokens: int) -> list[tuple[list[int], list[int]]]:
    """n (prefix, true continuation) token passages evenly spaced over the corpus (fewer if it is short)."""
    ids = tokenizer(corpus, add_special_tokens=False)["input_ids"]
    L = prefix + tokens
    n = min(n, len(ids) // L)
    if n == 0:
        return []
    starts = [round(k * (len(ids) - L) / (n - 1)) for k in range(n)] if n > 1 else [0]
    return [(ids[s: s + prefix], ids[s + prefix: s + L]) for s in starts]


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def evaluate(
    wb: Workbench,
    adapters: dict[str, str],
    probes: Probes,
    corpus: str,
    retain_text: str,
    settings: EvalSettings | None = None,
    anchors=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Every metric for the baseline and each adapter (name -> LoRA directory or full checkpoint).

    anchors: an AnchorDictionary (its enabled terms) or any iterable of terms counted by
    familiarity_completion besides each probe's references. progress(stage, done, total) is called
    as work completes. Adapters are loaded under their names and removed afterwards.
    Returns {"model", "models": {name: {metric: value}}, "examples", "notes", "settings", "seconds"}.
    """
    settings = settings or EvalSettings()
    t_start = time.perf_counter()
    if BASELINE in adapters:
        raise UserError(f"an adapter cannot be called {BASELINE!r}: that is the model without adapters")
    terms = sorted(getattr(anchors, "enabled", anchors) or [])
    tok = wb.tokenizer
    notes: list[str] = []
    clash = len({adapter_name(n) for n in adapters}) < len(adapters)
    if clash or any(adapter_name(n) == adapter_name(f"relearn_{m}") for n in adapters for m in (BASELINE, *adapters)):
        raise UserError(f"adapter names must stay distinct after PEFT's renaming (letters, digits, _ and -): {list(adapters)}")
    loaded = {display: wb.add_adapter(display, path) for display, path in adapters.items()}
    models: dict[str, str | None] = {BASELINE: None, **loaded}  # display name -> adapter name
    results: dict[str, dict] = {m: {} for m in models}
    examples: dict[str, dict] = {m: {} for m in models}

    # Stage sizes for progress: completions and relearning per model, the rest in one go each.
    # Ticks: probabilities, verbatim, perplexity, robustness, relearning set-up: 1 each; completions and
    # relearning: 1 per model.
    done = 0
    total = 5 + 2 * len(models)

    def tick(stage: str, k: int = 1):
        nonlocal done
        done += k
        if progress:
            progress(stage, min(done, total), total)

    try:
        enc = lambda text, special=True: tok(text, add_special_tokens=special)["input_ids"]  # noqa: E731
        prob_items = [(enc(p["prompt"]), enc(p["target"], False)) for p in probes.probability]
        retain_items = [(enc(p["prompt"]), enc(p["target"], False)) for p in probes.retain]
        if any(not t for _, t in prob_items + retain_items):
            raise UserError("a probe target has no tokens")

        # 1. Probabilities: probability and retain probes, every model, mixed adapters per batch.
        rows, meta = [], []
        for m, name in models.items():
            for kind, items in (("familiarity", prob_items), ("retain", retain_items)):
                for p, t in items:
                    rows.append((p + t[:-1], name))
                    meta.append((m, kind, len(p), t))
        lps = _score(wb, rows, lambda i, lg: metrics.continuation_logprobs(lg, meta[i][2], meta[i][3]).cpu(),
                     settings.token_budget)
        for m in models:
            for kind in ("familiarity", "retain"):
                mine = [lp for lp, mt in zip(lps, meta) if mt[0] == m and mt[1] == kind]
                results[m][f"{kind}_probability"] = _mean(float(lp[0].exp()) for lp in mine)
                results[m][f"{kind}_probability_full"] = _mean(float(lp.sum().exp()) for lp in mine)
        tick("probabilities")

        # 2. Completion familiarity: greedy completions, one batched generate per model.
        from .generation import complete

        prompts = [c["prompt"] for c in probes.completion]
        term_lists = [sorted(set(terms) | set(c["references"])) for c in probes.completion]
        for m, name in models.items():
            if prompts:
                outs = complete(wb, prompts, adapter=name, max_new_tokens=settings.max_new_tokens)
                found = [metrics.familiar_terms(p, o, t) for p, o, t in zip(prompts, outs, term_lists)]
                results[m]["familiarity_completion"] = sum(bool(f) for f in found) / len(prompts)
                examples[m]["completion"] = [{"prompt": p, "completion": o, "familiar": f}
                                             for p, o, f in zip(prompts, outs, found)]
            else:
                results[m]["familiarity_completion"] = None
            tick("completions")
        if settings.judge_model and prompts:
            for m in models:
                grades = judge([(e["prompt"], e["completion"]) for e in examples[m]["completion"]],
                               settings.judge_model, settings.judge_base_url)
                results[m]["familiarity_judge"] = sum(grades) / len(grades)
                for e, g in zip(examples[m]["completion"], grades):
                    e["judge"] = g

        # 3. Verbatim memorisation on corpus passages.
        passages = verbatim_passages(tok, corpus, settings.verbatim_passages, settings.verbatim_prefix,
                                     settings.verbatim_tokens) if settings.verbatim_passages else []
        if settings.verbatim_passages and not passages:
            notes.append(f"verbatim memorisation skipped: the corpus is shorter than "
                         f"{settings.verbatim_prefix + settings.verbatim_tokens} tokens")
        if passages:
            names = [name for name in models.values() for _ in passages]
            gens = _greedy_ids(wb, [p for _ in models for p, _ in passages], names, settings.verbatim_tokens)
            for k, m in enumerate(models):
                mine = gens[k * len(passages): (k + 1) * len(passages)]
                rouge = [metrics.rouge_l(tok.decode(g), tok.decode(truth)) for g, (_, truth) in zip(mine, passages)]
                results[m]["verbatim_token_match"] = _mean(metrics.token_match(g, t) for g, (_, t) in zip(mine, passages))
                results[m]["verbatim_exact"] = _mean(metrics.exact_match(g, t) for g, (_, t) in zip(mine, passages))
                results[m]["verbatim_rougeL"] = _mean(rouge)
                examples[m]["verbatim"] = [{"prefix": tok.decode(p), "truth": tok.decode(t), "continuation": tok.decode(g),
                                            "rougeL": r} for (p, t), g, r in zip(passages, mine, rouge)]
        tick("verbatim")

        # 4. Utility: retain-text perplexity in blocks, every model in the same batches.
        ids = enc(retain_text, False)[: settings.retain_max_tokens] if retain_text.strip() else []
        bs = min(settings.block_size, wb.max_length)
        blocks = [ids[i: i + bs] for i in range(0, len(ids), bs)]
        blocks = [b for b in blocks if len(b) >= 2]
        if blocks:
            rows = [(b, name) for name in models.values() for b in blocks]
            nll = _score(wb, rows, lambda i, lg: float(metrics.token_nll(lg, rows[i][0]).sum()), settings.token_budget)
            count = sum(len(b) - 1 for b in blocks)
            for k, m in enumerate(models):
                results[m]["retain_perplexity"] = metrics.perplexity(sum(nll[k * len(blocks): (k + 1) * len(blocks)]), count)
        elif settings.retain_max_tokens:
            notes.append("retain perplexity skipped: no retain text")
        tick("perplexity")

        # 5. Robustness: familiarity with the summary / the expert preamble in context.
        if settings.robustness and prob_items:
            for key, text in (("robust_summary", probes.summary), ("robust_expert_preamble", probes.expert_preamble)):
                if not text.strip():
                    notes.append(f"{key} skipped: the probes have no {key.split('_', 1)[1].replace('_', ' ')}")
                    continue
                context = enc(text.rstrip() + "\n\n")
                items = [(enc(p["prompt"], False), t) for p, (_, t) in zip(probes.probability, prob_items)]
                for m, name in models.items():
                    lp = _logprobs_after_context(wb, context, items, name, settings.token_budget)
                    results[m][key] = _mean(float(x[0].exp()) for x in lp)
        tick("robustness")

        # 6. Relearning attack: each model fine-tuned on a corpus slice, then familiarity again.
        if settings.relearn_steps and prob_items:
            tick("relearning")
            slice_ids = enc(corpus, False)[: settings.relearn_tokens]
            rblocks = [slice_ids[i: i + 128] for i in range(0, len(slice_ids), 128) if len(slice_ids[i: i + 128]) >= 2]
            for m, name in models.items():
                if name in wb.full_models:
                    notes.append(f"relearning skipped for {m}: a full checkpoint, not a LoRA adapter")
                    tick("relearning")
                    continue
                tmp = _relearn(wb, name, rblocks, settings)
                try:
                    rows = [(p + t[:-1], tmp) for p, t in prob_items]
                    lps = _score(wb, rows, lambda i, lg: float(
                        metrics.continuation_logprobs(lg, len(prob_items[i][0]), prob_items[i][1])[0].exp()),
                        settings.token_budget)
                    results[m]["robust_relearn"] = _mean(lps)
                finally:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # PEFT: "active adapter deleted, now ..." (intended)
                        wb.remove_adapter(tmp)
                tick("relearning")
            notes.append(f"relearning attack: {settings.relearn_steps} LoRA steps, lr {settings.relearn_lr}, "
                         f"on the first {len(slice_ids)} corpus tokens")
        else:
            tick("relearning", len(models) + 1)

        # 7. The paper's benchmarks, when lm-eval can run here (asked for: they take long on a CPU).
        if settings.benchmarks:
            bench, why = _benchmarks(wb, list(models.values()), settings)
            for m, vals in bench.items():
                results[m].update(vals)
            if why:
                notes.append(why)
        elif importlib.util.find_spec("lm_eval") is None:
            notes.append("benchmarks skipped: lm-eval not installed (the paper's ARC/BoolQ/HellaSwag/PIQA/"
                         "WinoGrande/OpenBookQA need it and its datasets cached)")
    finally:
        for name in loaded.values():
            wb.remove_adapter(name)

    return {"model": wb.name, "models": results, "examples": examples, "notes": notes,
            "settings": asdict(settings), "seconds": round(time.perf_counter() - t_start, 2)}


# -- CLI ---------------------------------------------------------------------------------------------
METRIC_ORDER = (
    "familiarity_probability", "familiarity_probability_full", "familiarity_completion", "familiarity_judge",
    "verbatim_token_match", "verbatim_exact", "verbatim_rougeL", "retain_probability", "retain_probability_full",
    "retain_perplexity", "robust_summary", "robust_expert_preamble", "robust_relearn")


def _parse_adapter(spec: str) -> tuple[str, str]:
    """NAME=PATH, or a bare PATH named after its directory (…/adapters/unlearned -> unlearned)."""
    name, sep, path = spec.partition("=")
    if not sep:
        path = spec
        name = Path(spec.rstrip("/")).name
    if not name or not path:
        raise UserError(f"--adapter wants NAME=PATH or PATH, not {spec!r}")
    return name, path


def cmd_eval(args) -> int:
    from .anchors import load_anchors
    from .cli import _read_text

    adapters: dict[str, str] = {}
    for spec in args.adapter or []:
        name, path = _parse_adapter(spec)
        if name in adapters:
            raise UserError(f"two adapters are called {name!r}: name them with NAME=PATH")
        if not Path(path).expanduser().exists():
            raise UserError(f"adapter path does not exist: {path}")
        adapters[name] = path
    settings = EvalSettings(
        max_new_tokens=args.max_new_tokens, verbatim_passages=args.passages, verbatim_prefix=args.prefix_tokens,
        verbatim_tokens=args.continuation_tokens, retain_max_tokens=args.retain_tokens,
        robustness=not args.no_robustness, relearn_steps=args.relearn_steps, judge_model=args.judge_model,
        judge_base_url=args.judge_base_url, benchmarks=args.benchmarks)
    probes = load_probes(args.probes)
    corpus = _read_text(args.corpus, "--corpus")
    retain = _read_text(args.retain, "--retain") if args.retain else ""
    if args.out:
        check_out_dir(args.out)
    anchors = load_anchors(args.anchors) if args.anchors else None
    if not args.out:
        result = _run_eval(args, adapters, probes, corpus, retain, settings, anchors, None)
    else:
        from .io import atomic_write_json
        from .jobs import Cancelled, JobWriter, queue_slot

        job = JobWriter(args.out, "eval")
        try:
            with queue_slot(job):  # one job at a time per OBLIVIATE_HOME, like training runs
                job.start(phase="loading model", step=0, total=0)
                result = _run_eval(args, adapters, probes, corpus, retain, settings, anchors, job)
        except Cancelled:
            job.cancelled()
            print("error: evaluation cancelled", file=sys.stderr)
            return 1
        except UserError as e:
            job.fail(str(e))
            raise
        except BaseException as e:
            if is_oom(e):
                err = oom_error("the evaluation")
                job.fail(str(err))
                raise err from None
            job.fail(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}")
            raise
        atomic_write_json(Path(args.out) / "eval.json", result)
        job.finish(phase="done")
    if args.json:
        print(dumps(result))
    else:
        print(format_table(result))
    return 0


def _run_eval(args, adapters, probes, corpus, retain, settings, anchors, job) -> dict:
    from .cli import _workbench

    wb = _workbench(args)

    def progress(stage: str, done: int, total: int):
        if job:
            if job.should_stop():
                from .jobs import Cancelled

                raise Cancelled(f"cancelled during {stage}")
            job.status(phase=stage, step=done, total=total)
            job.log(f"{stage} ({done}/{total})")

    result = evaluate(wb, adapters, probes, corpus, retain, settings, anchors, progress)
    result["adapters"] = {n: str(Path(p).expanduser().resolve()) for n, p in adapters.items()}
    return result


def format_table(result: dict) -> str:
    names = list(result["models"])
    keys = [k for k in METRIC_ORDER if any(result["models"][m].get(k) is not None for m in names)]
    keys += sorted({k for m in names for k in result["models"][m]} - set(METRIC_ORDER))
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"model: {result['model']}   ({result['seconds']} s)",
             f"{'metric':<30}" + "".join(f"{n:>{width}}" for n in names)]
    for k in keys:
        cells = []
        for m in names:
            v = result["models"][m].get(k)
            cells.append(f"{'-' if v is None else f'{v:.4g}':>{width}}")
        lines.append(f"{k:<30}" + "".join(cells))
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def add_commands(sub) -> None:
    """The `eval` verb (called from engine.cli.build_parser)."""
    from .cli import _model_args

    p = sub.add_parser("eval", help="familiarity, verbatim memorisation, utility and robustness of the baseline and adapters")
    _model_args(p)
    p.add_argument("--adapter", action="append", metavar="NAME=PATH",
                   help="a LoRA adapter (or full checkpoint) to evaluate next to the baseline; repeatable")
    p.add_argument("--probes", default=str(ASSETS / "probes.json"))
    p.add_argument("--corpus", default=str(ASSETS / "demo_corpus.txt"), help="target corpus (verbatim passages, relearning slice)")
    p.add_argument("--retain", default=str(ASSETS / "retain.txt"), help="generic text for perplexity ('' to skip)")
    p.add_argument("--anchors", default=str(ASSETS / "demo_anchors.json"),
                   help="anchored terms counted by completion familiarity ('' for probe references only)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--passages", type=int, default=16, help="verbatim passages (0: skip)")
    p.add_argument("--prefix-tokens", type=int, default=32)
    p.add_argument("--continuation-tokens", type=int, default=32)
    p.add_argument("--retain-tokens", type=int, default=1024)
    p.add_argument("--no-robustness", action="store_true", help="skip the summary / expert-preamble prompts")
    p.add_argument("--relearn-steps", type=int, default=0, help="relearning attack: LoRA steps on a corpus slice")
    p.add_argument("--judge-model", help="grade completions 0-3 with this OpenAI-compatible chat model")
    p.add_argument("--judge-base-url", help="the judge's endpoint (default api.openai.com; key: OPENAI_API_KEY)")
    p.add_argument("--benchmarks", action="store_true", help="the paper's benchmarks via lm-eval, when installed")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="job directory: status.json progress and eval.json")
    p.set_defaults(func=cmd_eval)
