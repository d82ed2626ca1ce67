"""The one error type users see: a bad input, said in one line (CLI exit 2, UI st.error)."""
from __future__ import annotations

OOM_HINT = "out of memory: try a shorter text, a smaller batch or model, or NF4 precision on a GPU"


class UserError(Exception):
    """Bad input from a user: a one-line message that says what is wrong and what to do."""


def is_oom(e: BaseException) -> bool:
    """Host MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError
    ("DefaultCPUAllocator: can't allocate memory"): the same event, reported the same way."""
    if isinstance(e, MemoryError):
        return True
    if not isinstance(e, RuntimeError):
        return False
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def oom_error(doing: str = "this") -> UserError:
    return UserError(f"{doing} ran {OOM_HINT}")
