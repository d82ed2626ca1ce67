"""A first draft of the anchored-terms dictionary (algorithm step 2), for the user to review.

Two routes, one result shape (`Suggestions`: term -> candidate generic translations, with evidence):
- LLM: any OpenAI-compatible chat endpoint reads the corpus in chunks and returns, per chunk, the
  idiosyncratic expressions copied exactly with a generic counterpart, as JSON (the paper's GPT-4 step).
- offline: the models themselves. Word spans whose log-likelihood rises most from baseline to
  expert, or, without an expert, proper names frequent in the corpus but improbable under the
  baseline; generic translations proposed by the baseline through a few-shot prompt.
Both end in the original pipeline's consolidation (`AnchorDictionary.consolidate`). Nothing here
writes the user's dictionary: the caller saves accepted rows explicitly.

The API key is read from OPENAI_API_KEY or passed in, held in memory for the run, and never
written, logged or put into an error message (server messages are scrubbed of it).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

from .anchors import AnchorDictionary
from .errors import UserError

Progress = Callable[[int, int], None]  # (done, total)


# -- result ---------------------------------------------------------------------------------------
@dataclass
class Suggestion:
    term: str
    candidates: list[str] = field(default_factory=list)
    """Generic translations, most frequent first; empty when nothing good was proposed (the user fills it)."""
    score: float = 0.0
    """Why it ranks where it does: LLM = chunks that named it; offline = see `suggest_offline`."""
    count: int = 0
    """Occurrences in the corpus (case-sensitive, whole words)."""
    example: str = ""
    """A sentence of the corpus that contains the term."""
    source: str = "llm"
    """llm, or offline (then the candidates are the baseline model's suggestions)."""


@dataclass
class Suggestions:
    items: list[Suggestion]
    report: list[str] = field(default_factory=list)
    """What consolidation dropped, and why."""
    failures: list[str] = field(default_factory=list)
    """Chunks whose reply stayed unusable after one retry (the other chunks are kept)."""

    def to_anchors(self) -> AnchorDictionary:
        return AnchorDictionary({s.term: list(s.candidates) for s in self.items})

    def rows(self) -> list[dict]:
        """Review rows: accept, term, translation (editable; ' | ' between candidates) and evidence."""
        return [
            {"accept": bool(s.candidates), "term": s.term, "translation": " | ".join(s.candidates),
             "score": round(s.score, 3), "count": s.count, "example": s.example, "source": s.source}
            for s in self.items
        ]

    def to_json(self) -> dict:
        return {"suggestions": self.rows(), "consolidation": self.report, "failures": self.failures}


def accept_rows(rows: list[dict], into: AnchorDictionary | None = None) -> tuple[AnchorDictionary, list[str]]:
    """Merge the accepted review rows into a copy of `into`; returns it and one note per skipped row.

    A term already in `into` keeps its candidates and gains the new ones (no duplicates). Rows with
    no translation are skipped: an anchored term without a translation is not usable.
    """
    entries = {t: list(c) for t, c in (into.entries.items() if into else ())}
    disabled = set(into.disabled) if into else set()
    skipped: list[str] = []
    for row in rows:
        if not row.get("accept"):
            continue
        term = str(row.get("term") or "").strip()
        cands = [c.strip() for c in str(row.get("translation") or "").split("|") if c.strip()]
        if not term:
            continue
        if not cands:
            skipped.append(f"{term!r}: no translation, not added")
            continue
        bad = [c for c in cands if c == term]
        if bad:
            skipped.append(f"{term!r}: translation equals the term, not added")
            continue
        merged = entries.setdefault(term, [])
        merged += [c for c in cands if c not in merged]
    return AnchorDictionary(entries, {t for t in disabled if t in entries}), skipped


# -- corpus helpers -------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_chunks(text: str, chunk_words: int = 800) -> list[str]:
    """Cut at paragraph boundaries (then sentences, then words) into chunks of at most ~chunk_words."""
    if chunk_words < 10:
        raise UserError("chunk size must be at least 10 words")
    pieces: list[str] = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        if len(para.split()) <= chunk_words:
            pieces.append(para)
            continue
        for sent in _SENTENCE_END.split(para):
            words = sent.split()
            for i in range(0, len(words), chunk_words):  # a "sentence" longer than a chunk
                pieces.append(" ".join(words[i: i + chunk_words]))
    chunks: list[str] = []
    cur: list[str] = []
    n = 0
    for p in pieces:
        w = len(p.split())
        if cur and n + w > chunk_words:
            chunks.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += w
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


def _word_re(term: str) -> re.Pattern:
    # Whole-word match that also works for terms starting or ending in punctuation ("You-Know-Who").
    return re.compile(r"(?<![\w'\u2019-])" + re.escape(term) + r"(?![\w-])")


def _evidence(text: str, term: str) -> tuple[int, str]:
    """(whole-word occurrences, the first sentence containing one)."""
    pat = _word_re(term)
    matches = list(pat.finditer(text))
    if not matches:
        return 0, ""
    m = matches[0]
    start = max(text.rfind("\n", 0, m.start()), max((x.end() for x in _SENTENCE_END.finditer(text, 0, m.start())), default=0))
    start = max(start, 0)
    end_m = _SENTENCE_END.search(text, m.end())
    nl = text.find("\n", m.end())
    end = min([e for e in (end_m.start() if end_m else -1, nl) if e >= 0], default=len(text))
    sentence = text[start:end].strip()
    return len(matches), sentence[:300]


def _consolidated(items: list[Suggestion]) -> tuple[list[Suggestion], list[str]]:
    kept, report = AnchorDictionary({s.term: s.candidates for s in items}).consolidate()
    return [s for s in items if s.term in kept.entries], report


# -- LLM route ------------------------------------------------------------------------------------
SYSTEM_PROMPT = """You help build an "anchored terms" dictionary for unlearning a text from a language model.
Read the text and list the expressions that are idiosyncratic to it: names of people, creatures, places, \
objects, spells, institutions, invented words and distinctive phrases. Copy each expression EXACTLY as it \
appears in the text (same spelling and capitalisation). For each, give a generic counterpart: a plain \
expression that keeps the sentence coherent but is not specific to this text (a common first name for a \
character, an ordinary place or object for an invented one). Leave out ordinary words.
Reply with JSON only, in this form:
{"terms": [{"term": "<expression as in the text>", "translation": "<generic counterpart>"}]}"""


@dataclass
class LLMConfig:
    base_url: str
    """The endpoint's OpenAI-compatible base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1."""
    model: str
    """Model name as the endpoint knows it."""
    chunk_words: int = 800
    """Words per request, cut at paragraph and sentence boundaries."""
    concurrency: int = 4
    """Requests in flight at once."""
    timeout: float = 120.0
    """Seconds to wait for one reply."""
    retries: int = 3
    """Retries of a rate-limited (429), timed-out or server-failed (5xx) request before giving up."""
    backoff: float = 2.0
    """First retry delay in seconds; doubles each time (capped at 30 s)."""
    temperature: float = 0.0
    json_mode: bool = True
    """Ask for response_format json_object; dropped automatically if the server rejects it."""

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not re.match(r"^https?://[^/\s]+", self.base_url.strip()):
            raise UserError(f"base URL must start with http:// or https://, not {self.base_url!r}")
        self.base_url = self.base_url.strip()
        if not isinstance(self.model, str) or not self.model.strip():
            raise UserError("a model name is needed (e.g. gpt-4o-mini, or the name a local server serves)")
        if self.chunk_words < 10:
            raise UserError("chunk size must be at least 10 words")
        if not 1 <= self.concurrency <= 64:
            raise UserError("concurrency must be between 1 and 64")
        if self.timeout <= 0:
            raise UserError("timeout must be positive")
        if self.retries < 0 or self.backoff < 0:
            raise UserError("retries and backoff must not be negative")


class _Fatal(Exception):
    """Stops the whole run (bad key, unreachable endpoint, ...): the message is user-facing and key-free."""


def _scrub(message: str, key: str | None) -> str:
    message = " ".join(str(message).split())[:300]
    if key:
        message = message.replace(key, "***")
    return message


def parse_reply(content: str | None, chunk: str) -> tuple[list[tuple[str, str]], int]:
    """Strict JSON -> [(term, translation)] for terms that occur in the chunk, and how many were dropped.

    Raises ValueError for a reply that is not the asked-for JSON (the caller retries once).
    """
    if not content or not content.strip():
        raise ValueError("empty reply")
    text = content.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", text, flags=re.S)
    if fence:  # many chat models wrap JSON in a code fence even when told not to
        text = fence.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at line {e.lineno})") from None
    terms = obj.get("terms") if isinstance(obj, dict) else obj if isinstance(obj, list) else None
    if not isinstance(terms, list):
        raise ValueError('JSON without a "terms" list')
    out: list[tuple[str, str]] = []
    dropped = 0
    for item in terms:
        if not isinstance(item, dict) or not isinstance(item.get("term"), str):
            dropped += 1
            continue
        term = item["term"].strip()
        tr = item.get("translation", "")
        tr = tr.strip() if isinstance(tr, str) else ""
        if not term or term not in chunk or tr == term:
            dropped += 1  # not copied exactly from the text, or no generic counterpart
            continue
        out.append((term, tr))
    return out, dropped


def _client(config: LLMConfig, api_key: str | None):
    import openai

    key = api_key or os.environ.get("OPENAI_API_KEY") or ""
    # Local servers (vLLM, llama.cpp) usually need no key; the client insists on one, so send a
    # placeholder and let a server that does need one answer 401.
    # max_retries=0: retries and their backoff are ours, so they are bounded and testable.
    return openai.OpenAI(api_key=key or "no-key", base_url=config.base_url, timeout=config.timeout,
                         max_retries=0), key


def _ask(client, config: LLMConfig, chunk: str, state: dict, key: str) -> str | None:
    """One chat completion with bounded backoff on 429 / timeouts / 5xx; _Fatal for what retrying cannot fix."""
    import openai

    delay = config.backoff
    for attempt in range(config.retries + 1):
        kwargs = dict(model=config.model, temperature=config.temperature,
                      messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": chunk}])
        if state["json_mode"]:
            kwargs["response_format"] = {"type": "json_object"}
        try:
            reply = client.chat.completions.create(**kwargs)
            if not reply.choices:
                return None
            return reply.choices[0].message.content
        except openai.AuthenticationError:
            raise _Fatal("the endpoint rejected the API key (401): set OPENAI_API_KEY (or the key field) "
                         "to a valid key for this endpoint") from None
        except openai.PermissionDeniedError as e:
            raise _Fatal(f"the endpoint refused access (403): {_scrub(e.message, key)}") from None
        except openai.NotFoundError:
            raise _Fatal(f"the endpoint answered 404: check the base URL ({config.base_url}; it usually ends in /v1) "
                         f"and the model name {config.model!r}") from None
        except openai.BadRequestError as e:
            if state["json_mode"]:  # a server without JSON mode: ask again without it, for every chunk
                state["json_mode"] = False
                continue
            raise _Fatal(f"the endpoint rejected the request (400): {_scrub(e.message, key)}") from None
        except openai.APITimeoutError:
            last = f"no reply within {config.timeout:g} s (timeout): raise the timeout or use smaller chunks"
        except openai.APIConnectionError:
            raise _Fatal(f"cannot reach {config.base_url}: is the server running and the URL right?") from None
        except openai.RateLimitError:
            last = (f"rate limited (429) after {config.retries} retries: wait a minute, lower the concurrency "
                    "or check the account's quota")
        except openai.InternalServerError as e:
            last = f"the endpoint failed ({e.status_code}) after {config.retries} retries: {_scrub(e.message, key)}"
        except openai.APIStatusError as e:
            raise _Fatal(f"the endpoint answered {e.status_code}: {_scrub(e.message, key)}") from None
        if attempt < config.retries:
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise _Fatal(last)


def suggest_llm(corpus: str, config: LLMConfig, api_key: str | None = None,
                progress: Progress | None = None) -> Suggestions:
    """Chunks -> concurrent chat completions -> term -> candidates -> consolidation.

    Raises UserError for what stops the run (empty corpus, bad key, unreachable endpoint, 429 or
    timeouts after the retries); a chunk whose reply is malformed twice is listed in `failures`.
    """
    if not corpus or not corpus.strip():
        raise UserError("the corpus is empty: give a UTF-8 text file with the text to unlearn")
    chunks = split_chunks(corpus, config.chunk_words)
    client, key = _client(config, api_key)
    state = {"json_mode": config.json_mode}
    done = [0]
    lock = threading.Lock()

    def work(i: int) -> tuple[list[tuple[str, str]], str | None]:
        pairs, failure = [], None
        for attempt in range(2):  # a malformed reply is retried once
            content = _ask(client, config, chunks[i], state, key)
            try:
                pairs, _ = parse_reply(content, chunks[i])
                failure = None
                break
            except ValueError as e:
                failure = f"chunk {i + 1} of {len(chunks)}: the reply was unusable twice ({e})"
        with lock:
            done[0] += 1
            if progress:
                progress(done[0], len(chunks))
        return pairs, failure

    if progress:
        progress(0, len(chunks))
    with ThreadPoolExecutor(max_workers=min(config.concurrency, len(chunks))) as pool:
        futures = [pool.submit(work, i) for i in range(len(chunks))]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in finished:
            if isinstance(f.exception(), _Fatal):
                raise UserError(str(f.exception())) from None
            if f.exception() is not None:
                raise UserError(f"suggestion failed: {_scrub(f.exception(), key)}") from None
        results = [f.result() for f in futures]
    client.close()

    candidates: dict[str, Counter] = {}
    chunks_naming: Counter = Counter()
    failures = [f for _, f in results if f]
    for pairs, _ in results:
        seen = set()
        for term, tr in pairs:
            c = candidates.setdefault(term, Counter())
            if tr:
                c[tr] += 1
            if term not in seen:
                chunks_naming[term] += 1
                seen.add(term)
    if not candidates and failures:
        raise UserError(f"no usable reply from {config.model!r}: {failures[0]} (and {len(failures) - 1} more); "
                        "try a stronger model or smaller chunks")
    items = []
    for term, c in candidates.items():
        count, example = _evidence(corpus, term)
        items.append(Suggestion(term, [t for t, _ in c.most_common()], float(chunks_naming[term]), count, example, "llm"))
    items.sort(key=lambda s: (-s.score, -s.count, s.term))
    items, report = _consolidated(items)
    return Suggestions(items, report, failures)


# -- CLI ------------------------------------------------------------------------------------------
def cmd_suggest(args) -> int:
    from .cli import _read_text

    corpus = _read_text(args.corpus)
    if args.offline:
        from .models import ModelConfig, Workbench

        wb = Workbench.load(ModelConfig(args.llm_model or "embedded", args.precision, args.device))
        expert = wb.add_adapter("expert", args.expert) if args.expert else None
        result = suggest_offline(wb, corpus, expert=expert, top_k=args.top_k,
                                 reinforce_steps=args.reinforce_steps, progress=_print_progress(args))
    else:
        if not args.base_url or not args.llm_model:
            raise UserError("give --base-url and --model for the LLM route, or --offline")
        config = LLMConfig(args.base_url, args.llm_model, chunk_words=args.chunk_words,
                           concurrency=args.concurrency, timeout=args.timeout)
        result = suggest_llm(corpus, config, progress=_print_progress(args))
    if args.out:  # only now, after every chunk succeeded or was reported: no partial dictionary
        from .anchors import save_anchors

        anchors, skipped = accept_rows(result.rows())
        save_anchors(anchors, args.out)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    for s in result.items:
        cands = " | ".join(s.candidates) or "(no suggestion: fill in)"
        print(f"{s.score:9.2f} {s.count:5d}  {s.term!r} -> {cands}")
    for line in result.report:
        print(f"consolidation: {line}")
    for line in result.failures:
        print(f"failed: {line}", file=sys.stderr)
    if args.out:
        print(f"wrote {len(anchors)} terms to {args.out}" + (f" ({len(skipped)} rows without a translation left out)"
                                                            if skipped else ""))
    return 0


def cmd_validate(args) -> int:
    from .anchors import load_anchors

    anchors = load_anchors(args.file)
    problems = anchors.validate()
    _, report = anchors.consolidate()
    for p in problems:
        print(f"problem: {p}")
    for line in report:
        print(f"consolidation would drop: {line}")
    print(f"{len(anchors)} terms, {len(anchors.disabled)} disabled, {len(problems)} problems")
    return 2 if problems else 0


def _print_progress(args) -> Progress | None:
    if args.json:
        return None
    def show(done: int, total: int) -> None:
        if done:
            print(f"{done}/{total} done", file=sys.stderr, flush=True)
    return show


def add_commands(sub) -> None:
    """`anchors suggest` and `anchors validate` under the CLI's subparsers."""
    anchors = sub.add_parser("anchors", help="draft and check anchor dictionaries")
    verbs = anchors.add_subparsers(dest="anchors_verb", required=True)

    p = verbs.add_parser("suggest", help="suggest anchored terms and generic translations (LLM or offline)",
                         description="The API key is read from OPENAI_API_KEY only (never a flag: it would "
                                     "land in shell history) and never written anywhere.")
    p.add_argument("--corpus", required=True, help="the text to unlearn (UTF-8)")
    route = p.add_mutually_exclusive_group(required=True)
    route.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    route.add_argument("--offline", action="store_true", help="no API: use the baseline (and expert) model")
    p.add_argument("--model", dest="llm_model", help="LLM route: the chat model's name; offline: the baseline "
                                                     "('embedded', a path or a hub id)")
    p.add_argument("--chunk-words", type=int, default=800)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--expert", help="offline: expert LoRA adapter directory")
    p.add_argument("--reinforce-steps", type=int, default=0,
                   help="offline, no expert: first reinforce a LoRA expert on the corpus for N steps")
    p.add_argument("--top-k", type=int, default=60, help="offline: how many terms to suggest")
    p.add_argument("--precision", default="auto", choices=["auto", "nf4", "bf16", "fp32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="write the suggested dictionary here (.json or .csv), only on success")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suggest)

    p = verbs.add_parser("validate", help="check a dictionary: problems, and what consolidation would drop")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
