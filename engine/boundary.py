"""The trust boundary: what a browser user may name, and which hosts the server may call for one.

The CLI is run by the machine's owner and may read any path and call any endpoint. A page is run
by whoever opens it, so everything a page (or a link's URL parameters) names passes one of these,
after symlinks are resolved, and every refusal of a kind reads the same whether the path exists, is
a folder, a file or a link: the messages never map the server's file system.

    browser_path(path, what)      a file under the browser roots (assets/, OBLIVIATE_HOME, ./runs, ...)
    browser_adapter(path, kind)   a LoRA adapter directory under the roots (never a full model)
    browser_model(name)           `embedded`, the owner's OBLIVIATE_MODEL, a model directory under the
                                  roots; a hub id only when the owner opts in (OBLIVIATE_HUB=on)
    browser_endpoint(url)         an OpenAI-compatible base URL the owner allowed
    shown_url(url)                a URL with its credentials masked, for showing it on a page
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import UserError
from .io import ASSETS, ROOT, obliviate_home, short
from .secrets import configured_base_url, remember
from .sections import EMBEDDED_KEYS

ROOTS_HELP = "assets/, OBLIVIATE_HOME, runs/ or OBLIVIATE_BROWSER_ROOTS"
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def hub_allowed() -> bool:
    """The owner lets browser users name hub ids (and the server reach the hub): OBLIVIATE_HUB=on."""
    return os.environ.get("OBLIVIATE_HUB") == "on"


def browser_roots() -> list[Path]:
    """Folders whose files a browser user may name: the project's assets, OBLIVIATE_HOME, ./runs, and
    any folder the machine's owner lists in OBLIVIATE_BROWSER_ROOTS (os.pathsep-separated)."""
    roots = [ASSETS, obliviate_home(), ROOT / "runs"]
    roots += [Path(p).expanduser() for p in os.environ.get("OBLIVIATE_BROWSER_ROOTS", "").split(os.pathsep) if p]
    return [r.resolve() for r in roots]


def _inside(path: str) -> Path | None:
    """The real path (symlinks and .. resolved; relative to the project) when it lies under a browser
    root, else None. Never says why: existence outside the roots is not the browser's business."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        return None
    p = Path(os.path.expanduser(path.strip()))
    if not p.is_absolute():
        p = ROOT / p
    try:
        real = p.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return real if any(real == r or real.is_relative_to(r) for r in browser_roots()) else None


def browser_path(path: str, what: str = "file") -> Path:
    """A file a browser user typed, resolved, or one UserError line that is the same for every path
    outside the roots (a missing one, a folder, /etc/passwd, a link out of the home)."""
    if not isinstance(path, str) or not path.strip():
        raise UserError(f"{what}: no path given")
    anchors = os.environ.get("OBLIVIATE_ANCHORS")  # the dictionary file the owner pointed the workbench at
    if anchors and Path(os.path.expanduser(path.strip())).resolve() == Path(anchors).expanduser().resolve():
        return Path(anchors).expanduser().resolve()
    real = _inside(path)
    if real is None:
        raise UserError(f"{what}: {short(path.strip())} is outside the folders this page may read "
                        f"({ROOTS_HELP}): upload it or copy it there")
    return real


def browser_adapter(path: str, kind: str = "adapter") -> Path:
    """A LoRA adapter directory a browser user (or a link) named. A full model, a file, a missing or
    outside path are all refused in one message: a page never loads a second base model."""
    real = _inside(path)
    if real is None or not (real / "adapter_config.json").is_file():
        raise UserError(f"{kind} adapter: {short(str(path).strip())} is not an adapter this page may load "
                        f"(a LoRA adapter directory under {ROOTS_HELP})")
    return real


def browser_model(name: str) -> str:
    """A base model a browser user typed: `embedded`, the model the owner started the server with
    (OBLIVIATE_MODEL), a model directory (config.json) under the roots, or, with OBLIVIATE_HUB=on,
    a hub id. Returns the name to load; anything else is one message."""
    name = (name or "").strip()
    owner = os.environ.get("OBLIVIATE_MODEL", "").strip()
    if name in EMBEDDED_KEYS or (owner and name == owner):
        return name
    real = _inside(name)
    if real is not None and (real / "config.json").is_file():
        return str(real)
    local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if hub_allowed() and not local and HUB_ID.match(name):
        return name
    hub = " or a Hugging Face hub id" if hub_allowed() else ""
    raise UserError(f"base model: {short(name)} is not a model this page may load: `embedded` (or "
                    f"`embedded:gemma3-270m`), a model "
                    f"directory under {ROOTS_HELP}{hub} (the machine's owner can allow hub ids with "
                    "OBLIVIATE_HUB=on)")


# -- endpoints ---------------------------------------------------------------------------------------
def allowed_endpoints() -> list[str]:
    """Base URLs a page may call: OPENAI_BASE_URL (the official endpoint when unset) and those the owner
    lists in OBLIVIATE_ENDPOINTS (spaces or commas between them). Credentials inside are remembered,
    so the scrubber removes them from every message."""
    extra = re.split(r"[\s,]+", os.environ.get("OBLIVIATE_ENDPOINTS", "").strip())
    urls = list(dict.fromkeys(u.strip() for u in [configured_base_url(), *extra] if u.strip()))
    for u in urls:
        _remember_credentials(u)
    return urls


def _canon(url: str) -> str:
    return url.strip().rstrip("/")


def browser_endpoint(url: str | None, what: str = "endpoint") -> str:
    """An endpoint a page may call, or one UserError line naming how the owner allows another."""
    allowed = allowed_endpoints()
    if url is None or not str(url).strip():
        return allowed[0]
    for u in allowed:
        if _canon(u) == _canon(str(url)):
            return u
    raise UserError(f"{what}: {shown_url(str(url))[:80]} is not an endpoint this server calls for a browser; "
                    "the machine's owner lists the allowed ones in OBLIVIATE_ENDPOINTS")


def _remember_credentials(url: str) -> None:
    u = urlsplit(url)
    remember(u.password)
    for _, v in parse_qsl(u.query):
        remember(v)


def shown_url(url: str) -> str:
    """The URL with a password and every query value masked: what a page may show of it."""
    try:
        u = urlsplit(url.strip())
    except ValueError:
        return "<an unreadable URL>"
    host = u.hostname or ""
    if u.port:
        host = f"{host}:{u.port}"
    if u.username:
        host = f"{u.username}{':***' if u.password else ''}@{host}"
    query = urlencode([(k, "***") for k, _ in parse_qsl(u.query)], safe="*")
    return urlunsplit((u.scheme, host, u.path, query, ""))
