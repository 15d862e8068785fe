"""Keep native libraries' own output off the user's terminal, and off an image on stdout.

libpng and libtiff print warnings with ``printf``, ncnn prints with ``fprintf(stderr, ...)``
(``FATAL ERROR! pool allocator destroyed too early`` after a failed allocation); no Python
setting silences them. :func:`quiet_fds` points file descriptors at a temporary file for a
short block and restores them in a ``finally``. Descriptors belong to the whole process:
:data:`LOCK` serialises every redirect, and the command line takes the same lock before it
writes a line of its own, so no line of ours is ever swallowed by another thread's redirect.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import tempfile
import threading
from typing import Iterator

__all__ = ["LOCK", "quiet_fds"]

LOCK = threading.RLock()
_KEEP = 4000  # characters of captured text kept


@contextlib.contextmanager
def quiet_fds(fds: tuple[int, ...] = (1, 2)) -> Iterator[list[str]]:
    """Send ``fds`` (those that are open) to a temporary file inside the block; the yielded
    list receives their text (at most a few thousand characters) when the block ends."""
    captured: list[str] = []
    with LOCK:
        _flush()
        try:
            sink = tempfile.TemporaryFile()
        except OSError:
            sink = open(os.devnull, "w+b")  # noqa: SIM115 - closed below
        saved: list[tuple[int, int]] = []
        try:
            with _signals_held():  # a signal now would leave a descriptor redirected
                for fd in fds:
                    with contextlib.suppress(OSError):  # a closed descriptor has nothing to protect
                        saved.append((fd, os.dup(fd)))
                        os.dup2(sink.fileno(), fd)
            yield captured
        finally:
            with _signals_held():
                _flush()
                for fd, copy in saved:
                    os.dup2(copy, fd)
                    os.close(copy)
            with contextlib.suppress(OSError, ValueError):
                sink.seek(0)
                captured.append(sink.read(_KEEP).decode(errors="replace").strip())
            sink.close()


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back in this thread inside the block (delivered after it)."""
    held = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _flush() -> None:
    """Python's and C's stdio buffers written out now, to wherever fds 1 and 2 point."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    libc = _libc()
    if libc is not None and hasattr(libc, "fflush"):
        libc.fflush(None)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None
