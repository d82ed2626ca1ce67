"""Files in and out: atomic writes, the Obliviate home, and the one way to read user files.

Every file a user names goes through here, so the whole class of bad inputs gets one answer:
    read_text_file   a UTF-8 text file, or one UserError line (missing, a folder, not UTF-8, too big)
    parse_json       JSON with duplicate keys, absurd nesting and huge numbers refused in one line
    parse_yaml       YAML without aliases (an alias bomb grows a process by gigabytes)
    check_out_dir / check_out_file   an output place that can be written, checked before any work
    short            a value bounded for echoing in a message
"""
from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path

from .errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets"
MAX_TEXT_BYTES = 256 << 20  # 256 MiB: a whole book series is ~7 MB; beyond this a typo is likelier than a corpus
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


def obliviate_home() -> Path:
    """Cache and runs live here: $OBLIVIATE_HOME, default ~/.cache/obliviate."""
    home = Path(os.environ.get("OBLIVIATE_HOME") or Path.home() / ".cache" / "obliviate")
    home.mkdir(parents=True, exist_ok=True)
    return home


def short(value, limit: int = 60) -> str:
    """repr(value) cut to `limit` characters: messages never echo a megabyte (or an alias bomb)."""
    if isinstance(value, (dict, list, tuple)) and len(value) > 20:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except (RecursionError, ValueError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- writing ----------------------------------------------------------------------------------------
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def finite(obj):
    """A copy with NaN and infinities replaced by None: every JSON file this writes is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj, **kw) -> str:
    """json.dumps of finite(obj): never NaN or Infinity, which are not JSON."""
    return json.dumps(finite(obj), ensure_ascii=False, allow_nan=False, **kw)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, dumps(obj, indent=2) + "\n")


def _writable_dir(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK)


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output directory that exists as a directory or can be created; checked before any work."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists() and not p.is_dir():
        raise UserError(f"{what}: {p} exists and is not a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not _writable_dir(parent):
        raise UserError(f"{what}: cannot write under {parent} (permission denied)")
    try:  # root passes every access() test: /sys or a read-only mount refuses only a real write
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".obliviate-check-"))
    except OSError as e:
        raise UserError(f"{what}: cannot write under {parent} ({e.strerror})") from None
    return p


def check_out_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """An output file that can be (over)written: not a directory, its folder writable or creatable."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        raise UserError(f"{what}: {p} is a directory, not a file")
    if p.exists() and not os.access(p, os.W_OK):
        raise UserError(f"{what}: {p} is not writable")
    check_out_dir(p.parent, what)
    return p


# -- reading ----------------------------------------------------------------------------------------
def read_bytes_file(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    p = Path(os.path.expanduser(str(path)))
    try:
        if p.is_dir():
            raise UserError(f"{what}: {p} is a directory, not a file")
        size = p.stat().st_size
        if size > max_bytes:
            raise UserError(f"{what}: {p} is {size / 2**20:.0f} MiB, more than the {max_bytes / 2**20:.0f} MiB "
                            "this reads; split it or pass a slice")
        return p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what}: file not found: {p}") from None
    except PermissionError:
        raise UserError(f"{what}: cannot read {p} (permission denied)") from None
    except OSError as e:
        raise UserError(f"{what}: cannot read {p}: {e.strerror}") from None


def read_text_file(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file (a BOM is dropped); every way it can fail is one UserError line."""
    data = read_bytes_file(path, what, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{what}: {path} is not UTF-8 text; save it as UTF-8") from None


def check_text_file(path: str | os.PathLike, what: str) -> str | None:
    """The problem with a text file as one line (None: readable UTF-8), for config validation."""
    try:
        read_text_file(path, what)
    except UserError as e:
        return str(e)
    return None


def _depth(obj, limit: int) -> int:
    stack, deepest = [(obj, 1)], 0
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        if isinstance(o, dict):
            stack += [(v, d + 1) for v in o.values()]
        elif isinstance(o, list):
            stack += [(v, d + 1) for v in o]
    return deepest


def parse_json(text: str, what: str = "JSON"):
    """json.loads that refuses duplicate keys, nesting deeper than MAX_JSON_DEPTH and numbers Python
    will not convert, each as one UserError line (json.loads raises RecursionError or ValueError)."""
    if len(text) > MAX_JSON_BYTES:
        raise UserError(f"{what}: {len(text) / 2**20:.0f} MiB of JSON is more than this reads")

    def pairs(items):
        out = {}
        for k, v in items:
            if k in out:
                raise UserError(f"{what}: the key {short(k)} appears twice (the second would silently win)")
            out[k] = v
        return out

    try:
        obj = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except RecursionError:
        raise UserError(f"{what}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. a 5,000-digit integer ("Exceeds the limit ... for integer string conversion")
        raise UserError(f"{what}: unreadable value ({str(e).splitlines()[0][:80]})") from None
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise UserError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


@functools.cache
def _yaml_loader():
    """SafeLoader that reads `1e-4` as a float, as YAML 1.2 (and every config example) does: YAML 1.1,
    PyYAML's, wants a dot (1.0e-4) and would leave it a string that float fields refuse."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
    return Loader


def parse_yaml(text: str, what: str = "YAML"):
    """yaml.safe_load without aliases: `*a` references can expand a 1 kB file into gigabytes."""
    import yaml

    loader = _yaml_loader()
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent):
                raise UserError(f"{what}: YAML aliases (*name) are not accepted; write the values out")
        obj = yaml.load(text, Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise UserError(f"{what}: cannot parse YAML ({str(e).splitlines()[0][:100]})") from None
    except RecursionError:
        raise UserError(f"{what}: YAML nested too deeply") from None
    if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise UserError(f"{what}: YAML nested deeper than {MAX_JSON_DEPTH} levels")
    return obj
