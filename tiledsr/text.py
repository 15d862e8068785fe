"""One-line message pieces: names and paths shown safely, values and other libraries' errors
shortened, so that no message holds a control character, a second line or a huge value."""
from __future__ import annotations

import os
import reprlib
from typing import Any

__all__ = ["brief", "cut", "short", "show"]


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


class _ShortRepr(reprlib.Repr):
    """reprlib that never builds the whole repr of a big value, nor of a huge integer."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxset = 3, 4, 3, 4
        self.maxstring = self.maxother = self.maxlong = 60

    def repr_int(self, x, level):
        if x.bit_length() > 64:
            return f"<an integer of {x.bit_length()} bits>"
        return repr(x)


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to about ``limit`` characters (then '…'), cheap for any value."""
    if isinstance(value, str) and len(value) <= limit:
        text = repr(value)
    else:
        text = _ShortRepr().repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def cut(text: Any, limit: int = 300) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters (then '…')."""
    text = " ".join(str(text)[: limit * 4].split())
    if len(text) <= limit:
        return text
    head = text[:limit]
    word = head.rsplit(" ", 1)[0] if " " in head[limit // 2:] else head
    return word.rstrip(",;:") + "…"
