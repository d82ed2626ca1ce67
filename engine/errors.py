"""The one error type users see: a bad input, said in one line (CLI exit 2, UI st.error)."""
from __future__ import annotations

import errno

# What the file system says that a user can fix (free space, permissions, another place): one line.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})
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


def first_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one bounded line: its type when it has no message."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(e: BaseException, limit: int = 400) -> str:
    """An exception's whole message on one bounded line (PyTorch's size-mismatch errors put the
    useful part on the lines after the first)."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_user_error(e: BaseException, doing: str = "this") -> UserError | None:
    """The one place an exception becomes a user's line: a UserError as it is, an out-of-memory
    (host, CUDA or the CPU allocator) as "<doing> ran out of memory: ...", a full disk or a refused
    write (ENOSPC, EACCES, EROFS, ...) as "<doing> failed: No space left on device (path)"; None for
    anything else, a bug whose traceback must stay."""
    if isinstance(e, UserError):
        return e
    if is_oom(e):
        return oom_error(doing)
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:  # a full disk, /sys as --out, a read-only mount
        where = f" ({e.filename})" if e.filename else ""
        return UserError(f"{doing} failed: {e.strerror or errno.errorcode.get(e.errno, 'OS error')}{where}")
    return None
