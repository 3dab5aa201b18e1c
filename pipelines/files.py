"""Reading a file with one clear error, and an exclusive lock beside a file.

A spec, a manifest, a profile or a token file that is missing or unreadable gets one
message naming the file (no traceback: :func:`read_text`, :func:`read_json`,
:func:`read_json_or_none` for state files that may not exist yet); files that
several processes rewrite (the audit keyring, the serving token file) are rewritten
under :func:`exclusive_lock`. Standard library only: the serving runtime uses it too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_text(path: Path, error: type[Exception], missing: str, unreadable: str) -> str:
    """``path``'s UTF-8 text; ``error("PATH: MISSING")`` when there is no such file,
    ``error("PATH: UNREADABLE (why)")`` when it cannot be read (neither with a traceback)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as exc:
        raise error(f"{path}: {unreadable} ({exc.strerror})") from None


def read_json(path: Path, error: type[Exception], label: str) -> Any:
    """The JSON value in ``path``; ``error("LABEL not found")`` when there is no such file,
    ``error("LABEL is not readable JSON: why")`` when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise error(f"{label} not found") from exc
    except (OSError, ValueError) as exc:
        raise error(f"{label} is not readable JSON: {exc}") from exc


def read_json_or_none(path: Path, error: type[Exception], label: str) -> Any:
    """The JSON value in ``path``, or None when there is no such file (state not written
    yet); ``error("LABEL: why")`` when it cannot be read or parsed (no traceback)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise error(f"{label}: {exc}") from None


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``PATH.lock`` (mode 0600) beside ``path``: two
    processes that rewrite ``path`` never both read the old content."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
