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
import re
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Callable

from .anchors import AnchorDictionary
from .errors import UserError
from .secrets import api_key as resolve_key
from .io import check_out_file
from .secrets import contains_key, remember, scrub

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


def _scrub(message, key: str | None = None) -> str:
    remember(key)
    return scrub(message)


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
        if contains_key(term) or contains_key(tr):
            dropped += 1  # a server that echoes the key must not get it into the dictionary
            continue
        out.append((term, tr))
    return out, dropped


def _client(config: LLMConfig, api_key: str | None):
    import openai

    key = resolve_key(config.base_url, api_key)  # the environment's key goes only to its own endpoint
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
        if state["stop"]:  # another chunk hit a fatal error: give up without another request
            raise _Fatal("stopped")
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
            raise _Fatal("the endpoint rejected the API key (401): type this endpoint's key (the key field), or "
                         "set OPENAI_API_KEY with OPENAI_BASE_URL naming this endpoint") from None
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
        except (json.JSONDecodeError, openai.APIResponseValidationError):
            raise _Fatal(f"{config.base_url} did not answer like an OpenAI-compatible chat endpoint (its reply "
                         "is not a chat completion): check the base URL (it usually ends in /v1)") from None
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
    state = {"json_mode": config.json_mode, "stop": False}

    def work(i: int) -> tuple[list[tuple[str, str]], str | None]:
        failure = None
        for _ in range(2):  # a malformed reply is retried once
            try:
                content = _ask(client, config, chunks[i], state, key)
            except _Fatal:
                state["stop"] = True  # the other chunks give up before their next request
                raise
            try:
                return parse_reply(content, chunks[i])[0], None
            except ValueError as e:
                failure = f"chunk {i + 1} of {len(chunks)}: the reply was unusable twice ({e})"
        return [], failure

    # Progress is reported from this (the caller's) thread, so a UI may draw it.
    if progress:
        progress(0, len(chunks))
    done: dict[int, tuple[list[tuple[str, str]], str | None]] = {}
    pool = ThreadPoolExecutor(max_workers=min(config.concurrency, len(chunks)))
    try:
        futures = {pool.submit(work, i): i for i in range(len(chunks))}
        for f in as_completed(futures):
            exc = f.exception()
            if isinstance(exc, _Fatal):
                raise UserError(str(exc)) from None
            if exc is not None:
                raise UserError(f"suggestion failed: {_scrub(exc, key)}") from None
            done[futures[f]] = f.result()
            if progress:
                progress(len(done), len(chunks))
    finally:
        state["stop"] = True  # on a fatal error, running chunks stop before their next request
        pool.shutdown(wait=True, cancel_futures=True)  # and queued ones never start
        client.close()
    results = [done[i] for i in range(len(chunks))]

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
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise UserError(f"no usable reply from {config.model!r}: {failures[0]}{more}; "
                        "try a stronger model or smaller chunks")
    items = []
    for term, c in candidates.items():
        count, example = _evidence(corpus, term)
        items.append(Suggestion(term, [t for t, _ in c.most_common()], float(chunks_naming[term]), count, example, "llm"))
    items.sort(key=lambda s: (-s.score, -s.count, s.term))
    items, report = _consolidated(items)
    return Suggestions(items, report, failures)


# -- offline route -------------------------------------------------------------------------------
# Capitalised words, optionally joined by "of" or "of the" ("Ministry of Magic", "Order of the
# Phoenix"). "and" and a bare "the" do not join ("Harry and Ron", "Buckbeak the Hippogriff"
# are two names each).
_WORD = r"[A-Za-z]+(?:[-'\u2019][A-Za-z]+)*"
_CAP = r"[A-Z][A-Za-z]*(?:[-'\u2019][A-Za-z]+)*"
_NAME_RE = re.compile(rf"(?<![\w'\u2019-]){_CAP}(?:(?:[ \t]+(?:of the|of))?[ \t]+{_CAP})*(?![\w-])")
_WORD_RE = re.compile(rf"(?<![\w'\u2019-]){_WORD}(?![\w-])")
_CONNECTORS = ("of", "and", "the")
# Words that open sentences; with the corpus's own lowercase words they tell a capital by position
# ("When Voldemort came") from a name, also in texts too short to contain "when" in lowercase.
_OPENERS = set("""a an the this that these those there then when while where after before during
since until as at by for from in into on onto over under with without of to but and or so yet if
though although because once he she it they we you i his her its their our my your however meanwhile
later soon still even also only all some many most each every both no not""".split())
_SENTENCE_START = re.compile(r"(?:^|[.!?:;]\s+|\n\s*)[\"'\u201c\u2018(]?$")
PRIOR_PREFIX = "Word:"
"""What the baseline reads before a term when we ask how improbable the term is on its own."""

FEW_SHOT = (
    "Each name from a story is replaced by a plain, generic equivalent.\n"
    "Frodo -> Tom\nBaggins -> Smith\nGaladriel -> Helen\nMordor -> the eastern land\nGandalf -> Walter\n"
    "Rivendell -> the valley town\nmithril -> silver\nSamwise -> Sam\nlembas -> bread\nGollum -> the creature\n"
)


def _strip_possessive(span: str) -> str:
    for suffix in ("'s", "\u2019s", "'", "\u2019"):
        if span.endswith(suffix):
            return span[: -len(suffix)]
    return span


def _candidates(text: str, with_lowercase: bool = False) -> dict[str, list[tuple[int, int]]]:
    """term -> its (start, end) char spans: proper names (capitalised spans whose words the corpus never
    writes in lowercase, and their single words), plus every lowercase word when an expert can judge it."""
    lower_words = Counter(m.group(0) for m in _WORD_RE.finditer(text) if m.group(0)[0].islower())
    spans: dict[str, set[tuple[int, int]]] = {}
    inside: dict[str, set[tuple[int, int]]] = {}
    for m in _NAME_RE.finditer(text):
        words = [w for w in _WORD_RE.finditer(text, m.start(), m.end())]
        # "The Dursleys", "When Voldemort": at a sentence start, a leading word the corpus also writes
        # in lowercase is capitalised by its position, not because it is a name ("Death Eaters" is one).
        if _SENTENCE_START.search(text, 0, m.start()) or m.start() == 0:
            while words and (lower_words[words[0].group(0).lower()] or words[0].group(0).lower() in _OPENERS):
                words = words[1:]
        while words and words[-1].group(0) in _CONNECTORS:
            words = words[:-1]
        if not words:
            continue
        term = _strip_possessive(text[words[0].start(): words[-1].end()])
        if len(term) > 1:
            spans.setdefault(term, set()).add((words[0].start(), words[0].start() + len(term)))
        parts = [_strip_possessive(w.group(0)) for w in words if w.group(0) not in _CONNECTORS]
        if len(parts) > 1 and not any(lower_words[p.lower()] for p in parts):
            for w in words:
                word = _strip_possessive(w.group(0))
                if word not in _CONNECTORS and len(word) > 1:
                    inside.setdefault(word, set()).add((w.start(), w.start() + len(word)))
    for word, found in inside.items():  # the words of a name are candidates too ("Harry", "Potter")
        spans.setdefault(word, set()).update(found)
    if with_lowercase:
        for m in _WORD_RE.finditer(text):
            if m.group(0)[0].islower() and len(m.group(0)) > 2:
                spans.setdefault(m.group(0), set()).add(m.span())
    return {t: sorted(s) for t, s in spans.items()}


def _consolidated_offline(items: list[Suggestion]) -> tuple[list[Suggestion], list[str]]:
    """The reference's two drops, then one more for names: "Harry's Expelliarmus" goes when
    "Harry" and "Expelliarmus" are terms (every word a term once its possessive is cut)."""
    items, report = _consolidated(items)
    terms = {s.term for s in items}
    kept = []
    for s in items:
        words = [_strip_possessive(w) for w in s.term.split()]
        if len(words) > 1 and all(w in terms for w in words):
            report.append(f"dropped {s.term!r}: every word is a term itself (possessives aside)")
        else:
            kept.append(s)
    return kept, report


def _prior_surprisal(wb, terms: list[str], batch_size: int = 64,
                     tick: Callable[[], None] = lambda: None) -> dict[str, float]:
    """-log p(term | PRIOR_PREFIX) under the baseline, in nats, summed over the term's tokens."""
    import torch

    tok = wb.tokenizer
    prefix = tok(PRIOR_PREFIX, add_special_tokens=False)["input_ids"]
    seqs = {t: prefix + tok(" " + t, add_special_tokens=False)["input_ids"] for t in terms}
    order = sorted(terms, key=lambda t: len(seqs[t]))  # similar lengths together: less padding
    out: dict[str, float] = {}
    for i in range(0, len(order), batch_size):
        batch = order[i: i + batch_size]
        logits = wb.logits([(seqs[t], None) for t in batch])  # [(T_i, V)]
        for t, lg in zip(batch, logits):
            s = seqs[t]
            lp = torch.log_softmax(lg[len(prefix) - 1: -1].float(), dim=-1)  # predictions of the term's tokens
            out[t] = float(-lp.gather(1, torch.tensor(s[len(prefix):], device=lp.device)[:, None]).sum())
        tick()
    return out


def _token_rise(wb, ids: list[int], expert: str, block: int, context: int,
                tick: Callable[[], None] = lambda: None) -> "torch.Tensor":
    """log p_expert - log p_baseline of every corpus token given the text before it; (N,).

    Blocks of `block` scored tokens, each read after `context` tokens of the text before it; the
    baseline and the expert of a block share one batched forward.
    """
    import torch

    n = len(ids)
    rise = torch.zeros(n)
    starts = list(range(0, n, block))
    for s in starts:
        lo = max(0, s - context)
        seq = ids[lo: s + block]
        base, exp = wb.logits([(seq, None), (seq, expert)])  # (T, V) each
        tgt = torch.tensor(seq[1:], device=base.device)[:, None]
        lp_b = torch.log_softmax(base[:-1].float(), -1).gather(1, tgt)[:, 0]  # (T-1,) predicts seq[1:]
        lp_e = torch.log_softmax(exp[:-1].float(), -1).gather(1, tgt)[:, 0]
        first = s - lo - 1 if s > 0 else 0  # the positions this block scores (the rest is context)
        rise[lo + 1 + first: lo + len(seq)] = (lp_e - lp_b)[first:].cpu()
        tick()
    return rise


def _continue_prompts(wb, prefix: str, suffixes: list[str], max_new_tokens: int, batch_size: int = 64,
                      tick: Callable[[], None] = lambda: None) -> list[str]:
    """Greedy baseline continuations of prefix + suffix (until a newline): the same tokens as
    reading each prompt alone, but the shared prefix is read once and its key/value cache copied."""
    import contextlib
    import copy

    import torch
    from peft import PeftModel

    tok = wb.tokenizer
    pre = tok(prefix, add_special_tokens=False)["input_ids"]
    P = len(pre)
    model = wb.model
    base_only = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    texts: list[str] = []
    with wb.lock, torch.no_grad(), base_only:
        cache = model(input_ids=torch.tensor([pre], device=wb.device), use_cache=True).past_key_values
        for i in range(0, len(suffixes), batch_size):
            rows = [tok(x, add_special_tokens=False)["input_ids"] for x in suffixes[i: i + batch_size]]
            B, L = len(rows), max(len(x) for x in rows)
            # Suffixes left-padded between the prefix and the term, masked out, with the positions each
            # row would have unpadded.
            ids = torch.full((B, L), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.ones((B, P + L), dtype=torch.long)
            pos = torch.zeros((B, L), dtype=torch.long)
            for b, x in enumerate(rows):
                ids[b, L - len(x):] = torch.tensor(x)
                mask[b, P: P + L - len(x)] = 0
                pos[b, L - len(x):] = torch.arange(P, P + len(x))
            nxt_pos = torch.tensor([P + len(x) for x in rows])[:, None]  # (B, 1)
            kv = copy.deepcopy(cache)
            kv.batch_repeat_interleave(B)
            new: list[torch.Tensor] = []
            for _ in range(max_new_tokens):
                out = model(input_ids=ids.to(wb.device), attention_mask=mask.to(wb.device),
                            position_ids=pos.to(wb.device), past_key_values=kv, use_cache=True)
                kv = out.past_key_values
                ids = out.logits[:, -1].argmax(-1, keepdim=True).cpu()  # (B, 1) greedy
                new.append(ids)
                if all("\n" in tok.decode(row) for row in torch.cat(new, dim=1).tolist()):
                    break  # every row has ended its line
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long)], dim=1)
                pos, nxt_pos = nxt_pos, nxt_pos + 1
            texts += [tok.decode(g, skip_special_tokens=True) for g in torch.cat(new, dim=1).tolist()]
            tick()
    return texts


def propose_translations(wb, terms: list[str], max_new_tokens: int = 8, avoid: set[str] = frozenset(),
                         tick: Callable[[], None] = lambda: None) -> dict[str, str]:
    """The baseline's few-shot generic counterpart per term (greedy, cut at the line end); '' where it
    proposed nothing usable: nothing, the term itself, a fragment of it, or a word of another of
    `terms` or of `avoid` (the corpus's names: "Weasley -> Harry" would teach the text's own names)."""
    if not terms:
        return {}
    texts = dict(zip(terms, _continue_prompts(wb, FEW_SHOT, [f"{t} ->" for t in terms], max_new_tokens, tick=tick)))
    names = {_strip_possessive(w) for t in (*terms, *avoid) for w in t.split()
             if w[:1].isupper() and w.lower() not in _OPENERS}  # "The" of "The Quibbler" is no name
    proposals = {}
    for term in terms:
        tr = texts[term].split("\n")[0].strip().strip(".,;:\"'").strip()
        low = tr.lower()
        if (not tr or "->" in tr or len(tr) > 40 or term.lower() in low or low in term.lower()
                or any(_strip_possessive(w) in names for w in re.findall(r"[\w'\u2019-]+", tr))):
            tr = ""  # left for the user
        proposals[term] = tr
    return proposals


def suggest_offline(wb, corpus: str, expert: str | None = None, top_k: int = 60, min_count: int = 2,
                    translate: bool = True, block: int = 512, context: int = 32,
                    progress: Progress | None = None) -> Suggestions:
    """Idiosyncratic terms of the corpus ranked by the models themselves, with evidence.

    With an expert adapter (the baseline reinforced on the corpus): every word span, scored by its
    mean log-likelihood rise from baseline to expert in context (nats, summed over its tokens) times
    log(1 + count): what reinforcement on this text taught most, and often. One pass over the corpus.
    Without one: proper names (capitalised spans the corpus never writes in lowercase), scored by
    their baseline surprisal on their own (-log p(term | "Word:"), nats) times log(1 + count):
    frequent in this text, improbable to a model that never read it. One short forward per name.
    Generic translations come from the baseline through a few-shot prompt (source "offline";
    blank where it proposed nothing usable, for the user to fill).
    """
    if not corpus or not corpus.strip():
        raise UserError("the corpus is empty: give a UTF-8 text file with the text to unlearn")
    if top_k < 1 or min_count < 1:
        raise UserError("top-k and min-count must be at least 1")
    if expert is not None and expert not in wb.adapters:
        raise UserError(f"no adapter named {expert!r} is loaded")
    spans = {t: s for t, s in _candidates(corpus, with_lowercase=expert is not None).items() if len(s) >= min_count}
    if not spans:
        raise UserError(f"no candidate term occurs {min_count} times or more in the corpus: "
                        "give a longer corpus or lower --min-count")
    block = max(16, min(block, wb.max_length - context))  # a block and its context fit the model
    enc = wb.tokenizer(corpus, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    batches = math.ceil(len(enc["input_ids"]) / block) if expert else math.ceil(len(spans) / 64)
    steps = [0, batches + (math.ceil(top_k / 64) if translate else 0)]

    def tick() -> None:
        steps[0] += 1
        if progress:
            progress(*steps)

    if progress:
        progress(*steps)
    with wb.lock:
        if expert is None:
            prior = _prior_surprisal(wb, list(spans), tick=tick)
            score = {t: prior[t] * math.log1p(len(s)) for t, s in spans.items()}
        else:
            import bisect

            ends = [b for _, b in enc["offset_mapping"]]
            starts = [a for a, _ in enc["offset_mapping"]]
            rise = _token_rise(wb, enc["input_ids"], expert, block, context, tick)
            score = {}
            for t, ss in spans.items():
                # the tokens overlapping a span (byte-level tokens carry their leading space)
                vals = [float(rise[bisect.bisect_right(ends, a): bisect.bisect_left(starts, b)].sum()) for a, b in ss]
                score[t] = sum(vals) / len(vals) * math.log1p(len(ss))
        ranked = [Suggestion(t, [], score[t], len(spans[t]), "", "offline")
                  for t in sorted(spans, key=lambda t: (-score[t], t))]
        # The drops apply to the dictionary being suggested: "Diagon Alley" goes only if "Diagon" and
        # "Alley" both make it in. Take the best terms until top_k survive consolidation.
        chosen: list[Suggestion] = []
        items, report = [], []
        for sug in ranked:
            if len(items) >= top_k:
                break
            chosen.append(sug)
            items, report = _consolidated_offline(chosen)
        for s in items:
            s.example = _evidence(corpus, s.term)[1]
        steps[1] = batches + (math.ceil(len(items) / 64) if translate else 0)
        if translate:
            proposals = propose_translations(wb, [s.term for s in items], avoid=set(spans), tick=tick)
            for s in items:
                s.candidates = [proposals[s.term]] if proposals[s.term] else []
    return Suggestions(items, report, [])


# -- CLI ------------------------------------------------------------------------------------------
def cmd_suggest(args) -> int:
    from .cli import _read_text

    corpus = _read_text(args.corpus, "--corpus")
    if args.out:  # before any paid request: a bad --out must not lose every answer afterwards
        check_out_file(args.out)
    if args.offline:
        from .models import ModelConfig, Workbench

        model = args.llm_model or "embedded"
        expert_path = args.expert
        if args.reinforce_steps:
            if args.expert:
                raise UserError("give --expert or --reinforce-steps, not both")
            expert_path = _reinforce(args.corpus, model, args.precision, args.device, args.reinforce_steps)
        wb = Workbench.load(ModelConfig(model, args.precision, args.device))
        expert = wb.add_adapter("expert", expert_path) if expert_path else None
        result = suggest_offline(wb, corpus, expert=expert, top_k=args.top_k, min_count=args.min_count,
                                 progress=_print_progress(args))
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


def _reinforce(corpus: str, model: str, precision: str, device: str, steps: int) -> str:
    """A quick expert for the offline route: a reinforce_only run (LoRA, next-token loss on the corpus)
    in OBLIVIATE_HOME/runs/suggest-reinforce-*, the same code path as `python -m engine reinforce`."""
    import tempfile
    from pathlib import Path

    from .io import obliviate_home
    from .runs import RunConfig, execute

    cfg = RunConfig(corpus=str(Path(corpus).resolve()), method="reinforce_only", reinforce_steps=steps,
                    model=model, precision=precision, device=device, block_size=256, batch_size=4)
    root = obliviate_home() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix="suggest-reinforce-", dir=root))
    print(f"reinforcing an expert for {steps} steps in {out}", file=sys.stderr)
    status = execute(cfg, out, queue=False)
    if status.get("state") != "finished":
        raise UserError(f"the reinforcement did not finish ({status.get('state')}): see {out}/log.txt")
    return str(out / "adapters" / "expert")


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
                   help="offline, no --expert: first reinforce an expert on the corpus for N LoRA steps "
                        "(a reinforce_only run under OBLIVIATE_HOME/runs), then rank by its rise")
    p.add_argument("--top-k", type=int, default=60, help="offline: how many terms to suggest")
    p.add_argument("--min-count", type=int, default=2, help="offline: occurrences a term needs")
    p.add_argument("--precision", default="auto", choices=["auto", "nf4", "bf16", "fp32"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="write the suggested dictionary here (.json or .csv), only on success")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_suggest)

    p = verbs.add_parser("validate", help="check a dictionary: problems, and what consolidation would drop")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)
