"""Finding an input's bytes: a regular file (opened again to decode), or a stream (stdin, a
FIFO, a ``<(...)`` pipe, a device) read once into memory, capped at what the pixel limit
allows, and kept, so that ``probe`` then ``read_image`` of the same stream both work.
"""
from __future__ import annotations

import io
import os
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from ..errors import InputError
from .meta import pixel_counts, quoted, sniff_format

__all__ = ["Source", "open_source", "reason"]

STREAM_BYTES_PER_PIXEL = 16  # an uncompressed float32 RGBA TIFF, the largest file per pixel
STREAM_SLACK = 64 * 2**20  # room for metadata (ICC profiles, EXIF, previews) in a stream
HEAD_BYTES = 64  # what format sniffing looks at
_STREAMS: dict[tuple[str, int, int], bytes] = {}  # stdin and other streams, read once
_STREAM_LOCK = threading.Lock()
_PYTHON_ERRORS = (KeyError, IndexError, AssertionError, TypeError, AttributeError,
                  ArithmeticError)  # a decoder tripping over a value: the type says most


@dataclass(frozen=True)
class Source:
    name: str
    path: Path | None  # a regular file, opened again to decode
    data: bytes | None  # the whole of a stream, read once
    head: bytes
    format: str

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")


def reason(err: BaseException, limit: int = 160) -> str:
    """A short one-line reason: the message, with the exception type when the message alone
    says little (a bare number, a key, nothing at all)."""
    text = " ".join(str(err).split())
    terse = sum(c.isalpha() for c in text) < 4
    if terse or isinstance(err, _PYTHON_ERRORS):
        text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def open_source(src: str | Path, max_pixels: int, keep: bool = False) -> Source:
    """Locate ``src`` and sniff its format; InputError for missing, empty or non-image files.

    A stream's bytes are read once; ``keep`` holds them for the next call (probe, then read)."""
    name = str(src)
    if name == "-":
        return _streamed(name, _stream(name, ("-", 0, 0), _stdin_reader, max_pixels, keep))
    path = Path(src)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"cannot read {quoted(name)}: it is a folder, not an image file; "
                             "pass an image file")
        if not stat.S_ISREG(info.st_mode):
            return _streamed(name, _stream(name, (name, info.st_dev, info.st_ino),
                                           lambda: open(path, "rb", buffering=0), max_pixels, keep))
        with open(path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
    except (OSError, ValueError) as err:
        raise _open_error(name, err) from err
    if not head:
        raise InputError(f"cannot read {quoted(name)}: the file is empty (0 bytes); re-export it")
    return Source(name, path, None, head, sniff_format(head, name))


def _streamed(name: str, data: bytes) -> Source:
    return Source(name, None, data, data[:HEAD_BYTES], sniff_format(data[:HEAD_BYTES], name))


def _open_error(name: str, err: OSError | ValueError) -> InputError:
    if isinstance(err, (FileNotFoundError, NotADirectoryError)):
        return InputError(f"cannot read {quoted(name)}: no such file; check the path")
    text = getattr(err, "strerror", None) or reason(err)
    return InputError(f"cannot read {quoted(name)}: {text}; check the path and its permissions")


def _stdin_reader() -> BinaryIO:
    """stdin's binary stream; InputError when it is closed or a terminal (reading would hang)."""
    stream = sys.stdin
    if stream is None or getattr(stream, "closed", False):
        raise InputError("cannot read stdin: it is closed; pipe an image into tiledsr "
                         "(tiledsr ... - < in.png) or pass a file name")
    try:
        terminal = stream.isatty()
    except (OSError, ValueError):
        terminal = False
    if terminal:
        raise InputError("cannot read stdin: it is a terminal, not an image; pipe an image into "
                         "tiledsr (tiledsr ... - < in.png) or pass a file name")
    return _Borrowed(getattr(stream, "buffer", stream))


class _Borrowed:
    """A stream used as a context manager without being closed (stdin stays open)."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream

    def __enter__(self) -> BinaryIO:
        return self.stream

    def __exit__(self, *exc: object) -> None:
        return None


def _stream(name: str, key: tuple[str, int, int], opener: Callable[[], BinaryIO],
            max_pixels: int, keep: bool) -> bytes:
    """All bytes of a stream, sniffed as soon as the first bytes arrive (endless data such as
    /dev/zero is refused at once) and capped at what an image of ``max_pixels`` can need.

    ``keep`` (a probe) keeps them under ``key`` for the read that follows; a read takes them
    back out, so the next read of the same stream reads it again."""
    with _STREAM_LOCK:
        data = _STREAMS.pop(key, None)
        if data is None:
            try:
                with opener() as fh:
                    data = _read_capped(fh, name, max_pixels)
            except (OSError, ValueError) as err:
                raise _open_error(name, err) from err
        if keep:
            _STREAMS[key] = data
        return data


def _read_capped(fh: BinaryIO, name: str, max_pixels: int) -> bytes:
    """Read ``fh`` to its end; InputError when empty, not an image, or beyond the cap."""
    limit = max_pixels * STREAM_BYTES_PER_PIXEL + STREAM_SLACK
    chunks, total, sniffed = [], 0, False
    while chunk := fh.read(min(2**20, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if not sniffed and total >= HEAD_BYTES:
            sniff_format(b"".join(chunks)[:HEAD_BYTES], name)
            sniffed = True
        if total > limit:
            raise InputError(
                f"cannot read {quoted(name)}: it goes on past {limit / 2**20:,.0f} MB, more than "
                f"an image of at most {pixel_counts(max_pixels)[0]} can take; pass a finite "
                "image (or a larger --max-pixels)")
    if not total:
        raise InputError(f"cannot read {quoted(name)}: it is empty (0 bytes); pass an image")
    return b"".join(chunks)
