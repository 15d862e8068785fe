"""Injected out-of-memory failures, for testing the out-of-memory back-off without a small GPU.

``TILEDSR_FAIL_OOM=N`` makes the first N model calls of the process fail with the error the
backend raises for a real failed allocation; ``all`` (or ``-1``) fails every call; unset,
empty or ``0`` fails none, and any other value is ignored. The variable is read at each call.

Every model call starts with :func:`maybe_fail_oom` (torch) or :func:`should_fail` (ncnn,
which reports a failed allocation by status, not by raising: its runner then takes its own
status -100 path). A call counts only while the variable asks for failures; the count is
process-wide and thread-safe, and :func:`reset` sets it back to zero (for tests).
"""
from __future__ import annotations

import os
import threading

__all__ = ["ENV", "failures_asked", "maybe_fail_oom", "oom_error", "reset", "should_fail"]

ENV = "TILEDSR_FAIL_OOM"
_EVERY = -1  # the parsed value of "all" and "-1"
_UNKNOWN_BYTES = 2 << 30  # what an injected failure says it tried to allocate when not told
_lock = threading.Lock()
_calls = 0

# torch 2.13's CPU allocator (c10/core/impl/alloc_cpu.cpp) when posix_memalign fails
_CPU_TEXT = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
             "memory: you tried to allocate {nbytes} bytes. Error code 12 (Cannot allocate memory)")
# CUDACachingAllocator (torch >= 2.2) once freeing its cache did not help
_CUDA_TEXT = ("CUDA out of memory. Tried to allocate {size}. GPU {index} has a total capacity of "
              "{total} of which {free} is free. Including non-PyTorch memory, this process has "
              "{used} memory in use. Of the allocated memory {allocated} is allocated by PyTorch, "
              "and {unallocated} is reserved by PyTorch but unallocated. If reserved but unallocated "
              "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid "
              "fragmentation.  See documentation for Memory Management  "
              "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
# MPSAllocator with its high watermark on (the default)
_MPS_TEXT = ("MPS backend out of memory (MPS allocated: {allocated}, other allocations: 0 bytes, "
             "max allowed: {allowed}). Tried to allocate {size} on private pool. Use "
             "PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations "
             "(may cause system failure).")


def failures_asked() -> int:
    """How many calls ``TILEDSR_FAIL_OOM`` asks to fail: N, -1 for every call, 0 for none."""
    text = os.environ.get(ENV, "").strip().lower()
    if text in ("all", "-1"):
        return _EVERY
    return int(text) if text.isascii() and text.isdigit() else 0


def should_fail() -> bool:
    """Count one model call; True when ``TILEDSR_FAIL_OOM`` says it must fail."""
    global _calls
    asked = failures_asked()
    if asked == 0:
        return False
    with _lock:
        _calls += 1
        return asked == _EVERY or _calls <= asked


def reset() -> None:
    """Forget the calls counted so far (for tests)."""
    global _calls
    with _lock:
        _calls = 0


def maybe_fail_oom(backend: str, device: str = "cpu", nbytes: int = 0) -> None:
    """Count one model call and raise :func:`oom_error` when ``TILEDSR_FAIL_OOM`` says it must fail."""
    if should_fail():
        raise oom_error(backend, device, nbytes)


def oom_error(backend: str, device: str = "cpu", nbytes: int = 0) -> BaseException:
    """The exception ``backend`` raises on ``device`` when allocating ``nbytes`` fails.

    torch: torch.OutOfMemoryError (CUDA and other accelerators) or RuntimeError (CPU, MPS)
    with the allocator's text; other backends: MemoryError. ``nbytes`` 0 means 2 GiB.
    """
    nbytes = nbytes or _UNKNOWN_BYTES
    if backend != "torch":
        return MemoryError(f"{backend}: failed to allocate {nbytes} bytes")
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return RuntimeError(_CPU_TEXT.format(nbytes=nbytes))
    if kind == "mps":
        allocated, allowed = _mps_memory()
        return RuntimeError(_MPS_TEXT.format(allocated=_size(allocated), allowed=_size(allowed),
                                             size=_size(nbytes)))
    import torch

    if kind != "cuda":
        return torch.OutOfMemoryError(f"{kind.upper()} out of memory. Tried to allocate {_size(nbytes)}.")
    total, free, allocated, reserved = _cuda_memory(int(index or 0))
    return torch.OutOfMemoryError(_CUDA_TEXT.format(
        size=_size(nbytes), index=int(index or 0), total=_size(total), free=_size(free),
        used=_size(total - free), allocated=_size(allocated), unallocated=_size(reserved - allocated)))


def _cuda_memory(index: int) -> tuple[int, int, int, int]:
    """(total, free, allocated, reserved) bytes of CUDA device ``index``; zeros without one."""
    import torch

    try:
        free, total = torch.cuda.mem_get_info(index)
        return total, free, torch.cuda.memory_allocated(index), torch.cuda.memory_reserved(index)
    except Exception:  # no CUDA here: a made-up failure needs no real numbers
        return 0, 0, 0, 0


def _mps_memory() -> tuple[int, int]:
    """(allocated, allowed) bytes of the MPS allocator (allowed: its default high watermark)."""
    import torch

    try:
        return torch.mps.current_allocated_memory(), int(1.7 * torch.mps.recommended_max_memory())
    except Exception:  # no MPS here
        return 0, 0


def _size(nbytes: int) -> str:
    """A size as torch's allocators print it (c10's format_size): "512 bytes", "2.00 GiB"."""
    if nbytes <= 1 << 10:
        return f"{nbytes} bytes"
    for shift, unit in ((20, "KiB"), (30, "MiB")):
        if nbytes <= 1 << shift:
            return f"{nbytes / (1 << (shift - 10)):.2f} {unit}"
    return f"{nbytes / (1 << 30):.2f} GiB"
