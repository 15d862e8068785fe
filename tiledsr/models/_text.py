"""One-line message pieces: names and paths shown safely, other libraries' errors shortened."""
from __future__ import annotations

import os
from typing import Any

__all__ = ["brief", "show"]


def show(value: Any, limit: int = 160) -> str:
    """A name or path for a one-line message: control characters escaped, the middle of a
    very long one elided."""
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(text, bytes):
        text = text.decode(errors="backslashreplace")
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
    if len(text) > limit:
        text = f"{text[: limit // 2]}...{text[-limit // 2 :]}"
    return text


def brief(exc: BaseException | str, limit: int = 120) -> str:
    """An error message for a one-line error: an OSError's strerror, else the first sentence
    of the first non-empty line, at most ``limit`` characters (or the exception's type)."""
    if isinstance(exc, OSError) and exc.strerror:
        return show(exc.strerror, limit)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    sentence = lines[0].split(". ")[0]
    text = show(sentence if len(sentence) >= 20 else lines[0], 10 * limit)
    return text if len(text) <= limit else text[: limit - 3] + "..."
