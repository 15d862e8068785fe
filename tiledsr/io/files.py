"""Files and stdout: atomic writes through short temporary files, and checked writes to stdout.

A file is encoded into a temporary file in the destination folder (``.tiledsr-<pid>-<6
chars>.tmp``, created only when encoding starts, removed on any exception, KeyboardInterrupt
included) and moved into place with one rename, so a crash, a signal or a full disk never
leaves a partial output behind and never touches an existing file; :func:`remove_stale_temps`
clears what a killed run left, and :func:`discard_live_temps` what this process's own writers
still hold (a worker thread given up on). stdout is written with ``os.write`` and checked: a
reader that goes away is an error, never success.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import re
import select
import socket
import stat
import string
import sys
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from ..errors import InputError, OutOfMemory, TiledsrError
from .meta import quoted

__all__ = ["discard_live_temps", "remove_stale_temps"]

_USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS, errno.ENOTDIR)
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
TEMP_PREFIX = ".tiledsr-"
HOST = hashlib.sha1(socket.gethostname().encode(errors="replace")).hexdigest()[:4]  # whose temp it is
FOREIGN_TEMP_AGE = 24 * 3600  # seconds after which another host's temp file counts as stale
_TEMP = re.compile(r"\.tiledsr-([0-9a-f]{4})-(\d{1,12})-[a-z0-9]{6}\.tmp")
_OLD_TEMP = r"[a-z0-9_]{8}\.tmp"  # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp"), before 0.2
_NAMES = random.Random()  # private: never disturbs the caller's random state
_LIVE: set[Path] = set()  # this process's temporary files that exist now
_LIVE_LOCK = threading.RLock()  # re-entrant: a signal handler may discard while a write registers


def _exists(name: str) -> InputError:
    return InputError(f"refusing to write {quoted(name)}: the file already exists; "
                      "pass --overwrite to replace it")


def _text(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__

def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None



def _atomic_write(path: Path, name: str, encode: Callable[[BinaryIO], None], overwrite: bool,
                  streamed: bool) -> None:
    """Encode into a temporary file next to ``path``, then move it into place.

    Unless ``streamed``, the image is encoded in memory first, so the temporary file exists
    only while bytes are written. ``encode`` quiets its own library calls (it may pull the
    caller's bands, whose computation must never hold the library lock). The file is created
    inside the ``try`` and registered while it exists (see :func:`discard_live_temps`):
    whatever is raised from then on (KeyboardInterrupt, a signal's exception, a full disk, an
    error in the bands) removes it.
    """
    if not streamed:
        buffer = io.BytesIO()
        encode(buffer)
        payload = buffer.getbuffer()
        encode = lambda fh: fh.write(payload)  # noqa: E731
    temp, created = _temp_path(path.parent), False
    try:
        with _created(temp) as fh:
            created = True
            encode(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(temp, path, name, overwrite)
    except BaseException as exc:
        if created or not isinstance(exc, FileExistsError):  # never another process's file of that name
            _discard(temp)
        raise
    finally:
        _forget(temp)


def _created(temp: Path) -> BinaryIO:
    """``temp`` created (see :func:`_create_temp`) and registered as live, in one step."""
    with _LIVE_LOCK:
        fh = _create_temp(temp)
        _LIVE.add(temp)
    return fh


def _forget(temp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(temp)


def discard_live_temps() -> int:
    """Remove every temporary file this process's writers hold now; returns how many.

    For a main thread that gives up on a worker thread still encoding (a signal): the worker
    may go on writing into the removed file (POSIX allows it) but can never publish it. Safe
    from any thread and from a signal handler; errors are ignored. A temporary file created
    after this call is not removed (:func:`remove_stale_temps` clears it on the next run).
    """
    with _LIVE_LOCK:
        temps = sorted(_LIVE)
        _LIVE.clear()
    return sum(_remove_file(temp) for temp in temps)


def _temp_path(folder: Path) -> Path:
    """A free temporary name in ``folder``: ``.tiledsr-<host>-<pid>-<6 random chars>.tmp`` (32
    characters at most, whatever the output's name; ``host`` is 4 hex digits naming this
    machine, so folders shared between machines stay safe); nothing is created."""
    while True:
        tag = "".join(_NAMES.choices(string.ascii_lowercase + string.digits, k=6))
        temp = folder / f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{tag}.tmp"
        if not os.path.lexists(temp):
            return temp


def _create_temp(temp: Path) -> BinaryIO:
    """Create ``temp`` (never an existing file) for reading and writing, mode 0o666 - umask."""
    return open(temp, "x+b")


def _discard(temp: Path) -> None:
    try:
        os.unlink(temp)
    except OSError:
        pass


def _publish(temp: Path, path: Path, name: str, overwrite: bool) -> None:
    """Rename ``temp`` to ``path``; without ``overwrite`` a hard link makes it no-clobber."""
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError as err:
        raise _exists(name) from err
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise _exists(name) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def remove_stale_temps(*paths: str | Path) -> int:
    """Remove temporary files that killed runs of tiledsr left; returns how many.

    Each path is an output file (its folder is cleaned, including the older
    ``.NAME.XXXXXXXX.tmp`` files of that output) or a folder; each folder is listed once.
    Only regular files named ``.tiledsr-<host>-<pid>-<6 chars>.tmp`` are removed: of this
    machine when their process is gone, of another machine when untouched for a day. Never a
    live process's file, never anything else. Errors are ignored.
    """
    olds: dict[Path, set[str]] = {}
    for path in paths:
        if str(path) == "-":
            continue
        target = Path(path)
        folder = target if target.is_dir() else target.parent
        olds.setdefault(folder, set()).update(() if folder == target else (target.name,))
    return sum(_clean(folder, names) for folder, names in olds.items())


def _clean(folder: Path, outputs: set[str]) -> int:
    """Remove the stale temporary files in ``folder`` (old-style ones only of ``outputs``)."""
    old = re.compile("|".join(re.escape(f".{n}.") + _OLD_TEMP for n in sorted(outputs))) if outputs else None
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    removed = 0
    for entry in names:
        match = _TEMP.fullmatch(entry)
        stale = (match is not None and _stale(folder / entry, match.group(1), int(match.group(2)))) \
            or (old is not None and old.fullmatch(entry) is not None)
        removed += stale and _remove_file(folder / entry)
    return removed


def _stale(path: Path, host: str, pid: int) -> bool:
    """A temporary file of a run that is gone: its process (on this machine), or a day of silence."""
    if host == HOST:
        return not _alive(pid)
    try:
        return time.time() - os.lstat(path).st_mtime > FOREIGN_TEMP_AGE
    except OSError:
        return False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (True when unsure)."""
    if pid == os.getpid():
        return True
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # beyond any process id
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def _remove_file(path: Path) -> bool:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


class _encode_errors:
    """Encoder and file-system exceptions as one-line errors naming the output; those ``keep``
    says True of (what the caller's own bands raised) pass through unchanged."""

    def __init__(self, name: str, keep: Callable[[BaseException], bool] = lambda err: False):
        self.name = name
        self.keep = keep

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        if err is None or not isinstance(err, Exception) or isinstance(err, TiledsrError) \
                or self.keep(err):
            return False
        raise _write_error(quoted(self.name, "stdout"), err) from err


def _write_error(where: str, err: Exception) -> TiledsrError:
    if isinstance(err, MemoryError):
        return OutOfMemory(f"cannot write {where}: not enough memory to encode it; free memory "
                           "or write a smaller image")
    if not isinstance(err, OSError):
        return TiledsrError(f"cannot write {where}: the encoder failed ({_text(err)}); try "
                            "another --format")
    text = (err.strerror or _text(err))
    if err.errno in _FULL_ERRNOS:
        return TiledsrError(f"cannot write {where}: the disk is full ({text}); nothing was "
                            "written; free some space or write elsewhere")
    kind = InputError if err.errno in _USER_ERRNOS else TiledsrError
    return kind(f"cannot write {where}: {text}; check the output folder and its free space")


def _write_stdout(encode: Callable[[BinaryIO], None], streamed: bool = False) -> None:
    """Write what ``encode`` writes to stdout, every byte checked, or raise TiledsrError (exit 1).

    Unless ``streamed``, the image is encoded in memory first, so an error can say how much
    of the total went out. ``encode`` quiets its own library calls (see :func:`_atomic_write`);
    its errors are the caller's to word (:class:`_encode_errors`).
    """
    total = None
    if not streamed:
        buffer = io.BytesIO()
        encode(buffer)
        data = buffer.getbuffer()
        total, encode = len(data), lambda out: out.write(data)
    encode(_Stdout(total))


class _Stdout:
    """stdout as a binary file for an encoder: text written before goes first, every write
    completes or raises TiledsrError (exit 1) saying how many bytes went out."""

    def __init__(self, total: int | None):
        self.total, self.done = total, 0
        stream = sys.stdout
        self.fd = _fileno(stream)
        self.stream = getattr(stream, "buffer", stream)
        self._checked(stream.flush)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        self._checked(lambda: self._write(view))
        return len(view)

    def _write(self, view: memoryview) -> None:
        if self.fd is None:
            self.done += _write_buffered(self.stream, view)
            return
        start = self.done
        for done in _write_fd(self.fd, view):
            self.done = start + done

    def _checked(self, call: Callable[[], object]) -> None:
        try:
            call()
        except OSError as err:
            _silence_stdout()
            raise _stdout_error(err, self.done, self.total) from err


def _write_fd(fd: int, data: memoryview) -> Iterator[int]:
    """os.write ``data`` to ``fd`` in a loop, yielding the bytes written so far."""
    done = 0
    while done < len(data):
        try:
            count = os.write(fd, data[done: done + 2**20])
        except BlockingIOError:  # a non-blocking pipe is full: wait, then go on
            select.select([], [fd], [])
            continue
        if count <= 0:
            raise OSError(errno.EIO, "stdout took no more data")
        done += count
        yield done


def _write_buffered(stream: BinaryIO, data: memoryview) -> int:
    """An in-memory binary stream (no file descriptor): write and flush."""
    try:
        count = stream.write(data)
        stream.flush()
    except TypeError as err:  # a text-only stream
        raise OSError(errno.EINVAL, "stdout takes only text") from err
    if count is not None and count < len(data):
        raise OSError(errno.EIO, "stdout took no more data")
    return len(data)


def _stdout_error(err: OSError, done: int, total: int | None) -> TiledsrError:
    """The one-line error of a failed write to stdout; ``total`` None while streaming."""
    count = f"{done:,} bytes" if total is None else f"{done:,} of {total:,} bytes"
    incomplete = f"after {count}; the output is incomplete"
    if isinstance(err, BrokenPipeError) or err.errno == errno.EPIPE:
        return TiledsrError(f"stdout was closed {incomplete}")
    if err.errno in _FULL_ERRNOS:
        return TiledsrError(f"cannot write stdout: the disk is full {incomplete}")
    return TiledsrError(f"cannot write stdout: {(err.strerror or _text(err))} {incomplete}")


def _silence_stdout() -> None:
    """Point stdout's file descriptor at /dev/null after a failed write, so nothing left in
    its buffers raises again when the interpreter exits."""
    stream = sys.stdout
    fd = _fileno(stream)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        if fd is not None:
            os.dup2(null, fd)
    except OSError:
        pass
    finally:
        os.close(null)
