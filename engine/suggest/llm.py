"""The LLM route: chunks of the corpus to any OpenAI-compatible chat endpoint, term -> candidates back.

The API key goes only where engine/secrets.py allows, is held in memory for the run, and never
written, logged or put into an error message (server messages are scrubbed of it).
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from ..errors import UserError
from ..secrets import api_key as resolve_key
from ..secrets import Deadline, contains_key, remember, scrub, within
from .base import SuggestProgress, Suggestion, Suggestions, consolidated, evidence, split_chunks


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
            reply = within(config.timeout, lambda: client.chat.completions.create(**kwargs))
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
        except (openai.APITimeoutError, Deadline):
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
        except (json.JSONDecodeError, openai.APIResponseValidationError, AttributeError, TypeError):
            raise _Fatal(f"{config.base_url} did not answer like an OpenAI-compatible chat endpoint (its reply "
                         "is not a chat completion): check the base URL (it usually ends in /v1)") from None
        if attempt < config.retries:
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
    raise _Fatal(last)


def suggest_llm(corpus: str, config: LLMConfig, api_key: str | None = None,
                progress: SuggestProgress | None = None) -> Suggestions:
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
        count, example = evidence(corpus, term)
        items.append(Suggestion(term, [t for t, _ in c.most_common()], float(chunks_naming[term]), count, example, "llm"))
    items.sort(key=lambda s: (-s.score, -s.count, s.term))
    items, report = consolidated(items)
    return Suggestions(items, report, failures)


