"""Atomic file writes and the Obliviate home directory."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def obliviate_home() -> Path:
    """Cache and runs live here: $OBLIVIATE_HOME, default ~/.cache/obliviate."""
    home = Path(os.environ.get("OBLIVIATE_HOME") or Path.home() / ".cache" / "obliviate")
    home.mkdir(parents=True, exist_ok=True)
    return home


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


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
