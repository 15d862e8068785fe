"""Named errors and the exit codes the CLI maps them to.

Every error the library raises on purpose is a :class:`TiledsrError`; its
message is one line naming the file, field or value at fault and what to do.
"""
from __future__ import annotations

import errno

__all__ = [
    "Cancelled",
    "InputError",
    "ModelNotAvailable",
    "OutOfMemory",
    "PresetError",
    "TiledsrError",
    "as_out_of_memory",
    "is_out_of_memory",
]


class TiledsrError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(TiledsrError):
    """Bad input file, bad argument or bad value (exit code 2)."""

    exit_code = 2


class PresetError(InputError):
    """A preset that is missing, unreadable or invalid (exit code 2)."""


class ModelNotAvailable(TiledsrError):
    """A model is not installed, not cached or cannot be loaded (exit code 3)."""

    exit_code = 3


class OutOfMemory(TiledsrError):
    """Out of memory even at the smallest tile (exit code 4)."""

    exit_code = 4


class Cancelled(TiledsrError):
    """The run was interrupted or cancelled by a progress callback (exit code 130)."""

    exit_code = 130


# Lower-case fragments of the RuntimeError texts of failed allocations: torch's CPU allocator
# ("DefaultCPUAllocator: can't allocate memory" on POSIX, "... not enough memory" on Windows),
# CUDA, HIP, XPU and MPS ("CUDA out of memory", "MPS backend out of memory"; also the runtime's
# own "CUDA error: out of memory"), cuBLAS/cuSPARSE failing to allocate their workspace
# ("CUBLAS_STATUS_ALLOC_FAILED"), errno 12 and C++ std::bad_alloc.
_OOM_TEXTS = ("out of memory", "can't allocate memory", "not enough memory",
              "cannot allocate memory", "bad_alloc", "status_alloc_failed")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (see :func:`as_out_of_memory`)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return (isinstance(exc, (OutOfMemory, MemoryError)) or "OutOfMemoryError" in names
            or (isinstance(exc, OSError) and exc.errno == errno.ENOMEM)
            or (isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXTS)))


def as_out_of_memory(exc: BaseException, what: str,
                     hint: str = "try a smaller --tile") -> OutOfMemory | None:
    """The OutOfMemory to raise for ``exc`` when it is an allocation failure, else None.

    Recognises MemoryError (numpy's too), torch.OutOfMemoryError (torch.cuda's is the same
    class; matched by class name, so torch is not imported), RuntimeErrors with an allocator's
    text, OSError ENOMEM, and an OutOfMemory (returned as it is). ``what`` names what ran out:
    the message is "out of memory in {what}; {hint}". The caller raises it ``from exc``.
    """
    if isinstance(exc, OutOfMemory):
        return exc
    return OutOfMemory(f"out of memory in {what}; {hint}") if is_out_of_memory(exc) else None
