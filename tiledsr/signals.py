"""Signals and prompt cancellation for the command line.

SIGINT, SIGTERM and SIGHUP all raise :class:`Interrupted` (a ``KeyboardInterrupt``) in the
main thread, so every ``try/finally`` on the way out runs: temporary files are removed and
one line is printed. The exit code is 128 + the signal number (130, 143, 129).

Long computations run through :func:`run_interruptibly`: the work runs in a helper thread
while the main thread waits in short steps, so a signal takes effect within a fraction of a
second even while a model spends tens of seconds on one tile (the model libraries release
the GIL). The abandoned work is told to stop at its next progress report and its events are
dropped, so nothing is printed after the error line.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any, Callable, TypeVar

__all__ = ["Interrupted", "exit_code", "install", "name", "run_interruptibly", "worker_alive"]

T = TypeVar("T")
_HANDLED = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                 if s is not None)
_WAIT = 0.05  # seconds the main thread sleeps between looks at the worker
WORKER = "tiledsr-work"  # the worker thread's name
_UNFINISHED: list[threading.Event] = []  # one per worker started, set when it ends


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread when SIGINT, SIGTERM or SIGHUP arrives."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """128 + signal number for an interruption (130 for a plain KeyboardInterrupt)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def name(exc: BaseException) -> str:
    """The signal's name ("SIGTERM"); SIGINT for a plain KeyboardInterrupt."""
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name


def worker_alive() -> bool:
    """Whether abandoned work is still running in a worker thread.

    (Not ``Thread.is_alive()``: on Python 3.11 it says False once a ``join`` was interrupted.)"""
    return any(not done.is_set() for done in _UNFINISHED)


def _raise(signum: int, frame) -> None:
    # Later signals are ignored while the first one unwinds and cleans up.
    for s in _HANDLED:
        if signal.getsignal(s) is _raise:
            signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


def install() -> Callable[[], None]:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (main thread only), except the
    ones that are ignored already. Returns a function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    # A signal the parent asked us to ignore (nohup, background jobs) stays ignored.
    previous = {s: signal.signal(s, _raise) for s in _HANDLED if signal.getsignal(s) is not signal.SIG_IGN}
    hook = sys.unraisablehook
    sys.unraisablehook = _redeliver(hook)

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)
        sys.unraisablehook = hook
    return restore


def _redeliver(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    """An unraisable-exception hook: an :class:`Interrupted` raised where Python can only ignore it (a
    weakref or ``__del__`` callback, e.g. in the import machinery) is not printed as a traceback but
    sent again, so it takes effect at the next point the main thread can raise it; others go to ``hook``."""
    def unraisable(info: Any) -> None:
        exc = getattr(info, "exc_value", None)
        if isinstance(exc, Interrupted):  # from another thread, once the ignoring callback has returned
            threading.Timer(0.01, os.kill, (os.getpid(), exc.signum)).start()
            return
        hook(info)
    return unraisable


def run_interruptibly(fn: Callable[[], T], abandoned: threading.Event | None = None) -> T:
    """``fn()`` in a daemon thread while the main thread stays responsive to signals.

    Returns ``fn``'s result or re-raises its exception. If the main thread is interrupted
    while waiting, ``abandoned`` is set (so the work's progress callback can stop it) and the
    interruption propagates at once; the worker finishes its current call in the background.
    Called from a thread other than the main one, it simply calls ``fn()``.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn()
    box: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the main thread, re-raised there
            box["error"] = exc
        finally:
            done.set()

    _UNFINISHED[:] = [d for d in _UNFINISHED if not d.is_set()] + [done]
    threading.Thread(target=work, name=WORKER, daemon=True).start()
    try:
        while not done.wait(_WAIT):
            pass
    except BaseException:
        if abandoned is not None:
            abandoned.set()
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
