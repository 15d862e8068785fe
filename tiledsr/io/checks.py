"""Checks on an output made before any computation: format, size limits, bit depth, the
destination folder and name, and stdout.

:func:`check_output` holds every one of them; ``write_image`` calls it again, so the two never
disagree. Every failure is an InputError naming the path.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from . import files
from .files import _FULL_ERRNOS, _exists, _fileno, _text
from .meta import EXTENSIONS, FORMATS, quoted

__all__ = ["check_output", "output_format"]

MAX_SIDE = {"PNG": 2**31 - 1, "JPEG": 65500, "TIFF": 2**32 - 1, "WEBP": 16383}  # codec limits
FORMAT_NAMES = {"PNG": "PNG", "JPEG": "JPEG", "TIFF": "TIFF", "WEBP": "WebP"}  # for messages
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}


def output_format(path: str | Path, format: str | None) -> str:
    """"PNG", "JPEG", "TIFF" or "WEBP" from ``format`` (any case, jpg/tif allowed) or the extension.

    InputError for unknown formats or extensions, a format that contradicts a known image
    extension, and stdout ("-") without a format.
    """
    name = str(path)
    ext = "" if name == "-" else Path(name).suffix.lower()
    by_ext = EXTENSIONS.get(ext)
    if format is not None:
        fmt = _ALIASES.get(format.strip().upper(), format.strip().upper())
        if fmt not in FORMATS:
            raise InputError(f"unknown output format {format!r}; use png, jpeg, tiff or webp")
        if by_ext and by_ext != fmt:
            raise InputError(f"output {quoted(name)} has the extension {ext} but the format is "
                             f"{fmt.lower()}; rename the output or change --format")
        return fmt
    if name == "-":
        raise InputError("writing to stdout ('-') needs a format; "
                         "pass --format png, jpeg, tiff or webp")
    if by_ext is None:
        raise InputError(f"cannot tell the output format of {quoted(name)} from its extension "
                         f"'{ext}'; use .png, .jpg, .tif or .webp, or pass --format")
    return by_ext


def check_output(dst: str | Path, *, format: str | None = None,
                 size: tuple[int, int] | None = None, channels: int = 3,
                 bit_depth: int | None = None, overwrite: bool = False,
                 inputs: Sequence[str | Path] = ()) -> str:
    """Every check on an output that can be made before any computation; returns its format.

    ``size`` is the image's (height, width) in pixels, checked against the format's limits;
    ``channels`` 1..4; ``bit_depth`` is a requested depth (None: whatever the image has), and
    16 is refused for JPEG and WebP. ``dst`` "-" (stdout) must be open and not a terminal; a
    file must be creatable: its folder exists and is writable (a temporary file is made and
    removed there), its name fits the file system, and without ``overwrite`` it is neither an
    existing file nor one of ``inputs``. Raises InputError (one line naming the path).
    """
    name = str(dst)
    fmt = output_format(name, format)
    _check_image(name, fmt, size, channels, bit_depth)
    if name == "-":
        _check_stdout()
    else:
        _check_destination(Path(name), name, inputs, overwrite)
    return fmt


def _check_image(name: str, fmt: str, size: tuple[int, int] | None, channels: int,
                 bit_depth: int | None) -> None:
    """InputError for a depth, channel count or size the format cannot hold."""
    where = quoted(name, "stdout")
    if bit_depth not in (None, 8, 16):
        raise InputError(f"cannot write {where}: bit depth {bit_depth} is not 8 or 16")
    if bit_depth == 16 and fmt in ("JPEG", "WEBP"):
        raise InputError(f"cannot write {where} at 16 bits: {FORMAT_NAMES[fmt]} holds 8 bits per "
                         "channel; use png or tiff for 16 bits")
    if not 1 <= channels <= 4:
        raise InputError(f"cannot write {where}: {channels} channels; images have 1 to 4")
    if size is not None and max(size) > MAX_SIDE[fmt]:
        height, width = size
        raise InputError(f"cannot write {where}: {width}x{height} is larger than {FORMAT_NAMES[fmt]} "
                         f"allows ({MAX_SIDE[fmt]} pixels a side); use --format tiff")


def _check_stdout() -> None:
    """InputError when stdout is closed, not writable, or a terminal."""
    stream = sys.stdout
    closed = ("cannot write to stdout: it is closed; redirect it to a file (> out.png) or "
              "pass -o FILE")
    if stream is None or getattr(stream, "closed", False):
        raise InputError(closed)
    fd = _fileno(stream)
    if fd is None:
        return  # an in-memory stream
    try:
        os.fstat(fd)
        writable = _writable_fd(fd)
    except OSError as err:
        raise InputError(closed) from err
    if not writable:
        raise InputError("cannot write to stdout: it is open for reading only; redirect it to "
                         "a file (> out.png) or pass -o FILE")
    if os.isatty(fd):
        raise InputError("refusing to write a binary image to the terminal; redirect stdout "
                         "(> out.png, | program) or pass -o FILE")



def _writable_fd(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:
        return True
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY


def _check_destination(path: Path, name: str, inputs: Sequence[str | Path],
                       overwrite: bool) -> None:
    """InputError unless ``path`` can be created: see :func:`check_output`."""
    try:
        _check_place(path, name)
        _check_existing(path, name, inputs, overwrite)
    except OSError as err:
        raise InputError(f"cannot write {quoted(name)}: {err.strerror or _text(err)}; check "
                         "the path") from err
    _try_folder(path.parent, name)


def _check_place(path: Path, name: str) -> None:
    """Its name is not too long, the folder exists (and is a folder), ``path`` is not one."""
    parent = path.parent
    _check_name(path, name)
    if path.is_dir():
        raise InputError(f"cannot write {quoted(name)}: it is a folder; pass a file name")
    if not parent.is_dir():
        blocker = next((p for p in (parent, *parent.parents) if os.path.lexists(p)), None)
        if blocker is not None and not blocker.is_dir():
            raise InputError(f"cannot write {quoted(name)}: '{blocker}' is a file, not a folder; "
                             "choose another output folder")
        raise InputError(f"cannot write {quoted(name)}: the folder '{parent}' does not exist; "
                         "create it first")


def _check_name(path: Path, name: str) -> None:
    """InputError for a NUL in the name, or a name or path longer than the file system takes."""
    if "\x00" in name:
        raise InputError(f"cannot write {quoted(name)}: its name contains a null character; "
                         "choose another name")
    parent = path.parent
    limit, length = _limit(parent, "PC_NAME_MAX", 255), len(os.fsencode(path.name))
    if length > limit:
        raise InputError(f"cannot write {quoted(name)}: its name is {length} bytes long, more "
                         f"than the {limit} this file system allows; choose a shorter name")
    limit, length = _limit(parent, "PC_PATH_MAX", 4096), len(os.fsencode(path.absolute()))
    if length >= limit:
        raise InputError(f"cannot write {quoted(name)}: its path is {length} bytes long, more "
                         f"than the {limit - 1} this system allows; choose a shorter path")


def _limit(folder: Path, key: str, default: int) -> int:
    try:
        value = os.pathconf(folder, key)
    except (AttributeError, OSError, ValueError):
        return default
    return value if value and value > 0 else default


def _check_existing(path: Path, name: str, inputs: Sequence[str | Path], overwrite: bool) -> None:
    """No input and no existing file replaced without ``overwrite``; never a device or FIFO."""
    if not overwrite:
        for source in inputs:
            if str(source) != "-" and _same_file(path, Path(source)):
                raise InputError(f"refusing to write {quoted(name)}: it is the input file; "
                                 "choose another output name or pass --overwrite")
        if os.path.lexists(path):
            raise _exists(name)
    elif os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise InputError(f"refusing to write {quoted(name)}: it is not a regular file (a "
                         "device, FIFO or socket); write to a file, or to stdout with -o -")


def _try_folder(folder: Path, name: str) -> None:
    """Create and remove a temporary file in ``folder``; InputError naming it when that fails."""
    temp = files._temp_path(folder)
    try:
        files._create_temp(temp).close()
    except OSError as err:
        raise _folder_error(folder, name, err) from err
    finally:
        files._discard(temp)


def _folder_error(folder: Path, name: str, err: OSError) -> InputError:
    where = f"cannot write {quoted(name)}: the folder '{folder}'"
    if err.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"{where} is not writable; choose another folder or fix its "
                          "permissions")
    if err.errno == errno.EROFS:
        return InputError(f"{where} is on a read-only file system; write somewhere else")
    if err.errno in _FULL_ERRNOS:
        return InputError(f"{where} is on a full disk; free some space or write elsewhere")
    return InputError(f"{where} cannot take new files ({err.strerror or _text(err)}); choose "
                      "another folder")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        try:
            return a.resolve() == b.resolve()
        except (OSError, RuntimeError, ValueError):
            return False
