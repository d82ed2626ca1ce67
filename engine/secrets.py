"""API keys: where the environment's key may go, and the one scrubber for every message and file.

The key in OPENAI_API_KEY was configured for one endpoint: OPENAI_BASE_URL, or the official one
when that is unset. It is sent to that endpoint only; any other base URL (one a browser user typed,
say) needs its own key. Every text that can carry an endpoint's words (errors, job status, the
suggested dictionary) passes `scrub` first, which replaces every key this process knows BEFORE
cutting the text to length, so no part of a key survives at the cut.
"""
from __future__ import annotations

import os
import re
import threading
from typing import Callable, TypeVar
from urllib.parse import quote, urlsplit

T = TypeVar("T")

OFFICIAL_BASE_URL = "https://api.openai.com/v1"
KEY_ENV = ("OPENAI_API_KEY", "OBLIVIATE_JUDGE_API_KEY")
_known: set[str] = set()  # keys typed into this process (a page's key field), scrubbed like the environment's


def remember(key: str | None) -> str | None:
    """Register a key so that `scrub` removes it from everything; returns it."""
    if key and len(key) >= 4:
        _known.add(key)
    return key


def _endpoint(url: str) -> tuple[str, str, int | None, str]:
    u = urlsplit(url.strip())
    port = u.port or {"http": 80, "https": 443}.get(u.scheme.lower())
    return u.scheme.lower(), (u.hostname or "").lower(), port, u.path.rstrip("/")


def configured_base_url() -> str:
    return os.environ.get("OPENAI_BASE_URL") or OFFICIAL_BASE_URL


def env_key_for(base_url: str | None) -> str | None:
    """OPENAI_API_KEY, only when base_url is the endpoint it was configured for."""
    key = os.environ.get("OPENAI_API_KEY")
    if not key:
        return None
    if _endpoint(base_url or OFFICIAL_BASE_URL) != _endpoint(configured_base_url()):
        return None
    return remember(key)


def api_key(base_url: str | None, typed: str | None = None) -> str:
    """The key to send to base_url: the one typed for it, else the environment's if configured for
    it, else '' (most local servers need none; one that does answers 401)."""
    return remember(typed) or env_key_for(base_url) or ""


def _key_pattern(key: str) -> str:
    """A key as a regex that also matches it split by whitespace (a wrapped error body) and with any
    of its characters percent-encoded (a key echoed inside a URL)."""
    def char(c: str) -> str:
        enc = quote(c, safe="")
        alts = [re.escape(c)] + ([] if enc == c else [re.escape(enc)])
        alts += [f"%{b:02x}" for b in c.encode()] if len(c.encode()) == 1 else []
        return "(?:" + "|".join(dict.fromkeys(alts)) + ")"

    return r"\s*".join(char(c) for c in key)


def scrub(text, limit: int | None = 300) -> str:
    """One line with every known key replaced by ***, then cut to `limit` characters. A key split by
    line breaks or spaces, or percent-encoded, is found too."""
    text = str(text)
    keys = {os.environ.get(k) for k in KEY_ENV} | _known
    for key in sorted((k for k in keys if k and len(k) >= 4), key=len, reverse=True):
        text = re.sub(_key_pattern(key), "***", text)
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def contains_key(text: str) -> bool:
    return scrub(text, None) != " ".join(str(text).split())


class Deadline(Exception):
    """A request that did not complete within its overall deadline."""


def within(seconds: float, call: Callable[[], T]) -> T:
    """call() with an overall deadline: a reply that trickles in a byte a second, or never ends, is
    given up at `seconds` (a client's read timeout restarts at every byte). The call runs in a daemon
    thread, which ends by itself once its connection yields or closes."""
    box: dict = {}

    def run():
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the caller as it is
            box["error"] = e

    worker = threading.Thread(target=run, name="request", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise Deadline(f"no complete reply within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
