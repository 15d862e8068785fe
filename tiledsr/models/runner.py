"""Run an :class:`SRModel` on batches of tiles with PyTorch, ncnn or OpenVINO.

A runner maps N x C x h x w float32 numpy in [0, 1] to N x C_out x h*s x w*s float32
numpy (not clipped). Tiles always arrive and leave as host (CPU) arrays; only the
torch runner moves each batch to its device for the forward pass.

Threads: a runner may be built in one thread and called from another (a worker
thread that the caller abandons on cancellation). Each call holds the runner's lock,
so calls never overlap; the torch runner enters ``torch.inference_mode`` inside the
call (grad mode is per thread) and relies on no other thread-local state; ncnn builds
a fresh extractor per call and releases the GIL while it computes.

Errors: running out of memory in either backend (torch's allocator errors,
torch.OutOfMemoryError, MemoryError, ncnn status -100) is an OutOfMemory naming the
model, backend and tile. ncnn's own C++ messages never reach stderr: loading, and the
destruction of the allocators after a failed call, run with fd 2 redirected
(:mod:`tiledsr.quiet`); the captured text goes into the error's notes.
The long extract itself is not redirected (it prints nothing when allocation fails), so
other threads can still write to stderr while a tile computes.

Testing: each call on a batch is one model call for ``TILEDSR_FAIL_OOM`` (:mod:`tiledsr.faults`):
an injected failure is torch's own exception raised at the start of the forward pass, or
ncnn's status -100 in place of the first extract, and goes the same way as a real one.
"""
from __future__ import annotations

import os
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from tiledsr.errors import InputError, ModelNotAvailable, OutOfMemory, TiledsrError, as_out_of_memory
from tiledsr.faults import maybe_fail_oom, should_fail
from tiledsr.quiet import quiet_fds
from tiledsr.text import show
from tiledsr.models.registry import SRModel

__all__ = ["BACKENDS", "CPU_PREFERENCE", "PRECISIONS", "Runner", "cannot_run", "choose_backend", "make_runner"]

BACKENDS = ("auto", "torch", "ncnn", "openvino")
# What ``auto`` picks on the CPU, fastest first, as measured on the same Real-ESRGAN weights
# (BENCHMARKS.md, "SR backends on the CPU"): OpenVINO takes 0.5-0.9x ncnn's time at a third of
# its memory for x4plus; torch (channels_last) is the last resort. A measurement saved on this
# machine by ``tiledsr models --measure`` (tiledsr.models.measure) takes precedence. Only our own ports
# (rrdbnet, srvgg) are converted to OpenVINO; other architectures go to ncnn or torch.
CPU_PREFERENCE = ("openvino", "ncnn", "torch")
_OPENVINO_ARCHS = ("rrdbnet", "srvgg")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NCNN_OOM = -100  # ncnn's status for a failed allocation
T = TypeVar("T")


class Runner(Protocol):
    """Callable running one batch: N x C x h x w float32 -> N x C_out x h*s x w*s float32."""

    backend: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def make_runner(model: SRModel, backend: str = "auto", device: str = "cpu",
                precision: str = "auto", threads: int | None = None) -> Runner:
    """A runner for ``model``; ``auto``: :func:`choose_backend`.

    ``threads`` sets ncnn's and OpenVINO's thread count, or torch's process-wide one when given.
    """
    # 1. Check inputs
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be at least 1, got {threads}")
    torch_device = _check_device(device)
    # 2. Pick the backend
    if backend == "auto":
        backend = choose_backend(model, torch_device.type, precision, threads)[0]
    if backend == "ncnn":
        return NcnnRunner(model, torch_device, precision, threads)
    if backend == "openvino":
        from tiledsr.models.openvino_runner import OpenVinoRunner

        return OpenVinoRunner(model, torch_device, precision, threads)
    return TorchRunner(model, torch_device, precision, threads)


def choose_backend(model: SRModel, device: str, precision: str = "auto",
                   threads: int | None = None) -> tuple[str, str]:
    """(backend, why) that ``auto`` runs ``model`` with on ``device`` ("cpu", "cuda", "mps"), without
    loading or timing anything. On the CPU: the fastest in the measurement that ``tiledsr models
    --measure`` saved for this model, machine and ``threads`` (:func:`tiledsr.models.measure.measured_choice`),
    else the first of :data:`CPU_PREFERENCE` that is installed and can run the model at ``precision``;
    elsewhere torch."""
    if device != "cpu":
        return "torch", f"the only backend for {device}"
    from tiledsr.models.measure import measured_choice

    measured = measured_choice(model, precision, threads)
    if measured is not None:
        return measured
    skipped = []
    for name in CPU_PREFERENCE:
        reason = cannot_run(model, name, precision)
        if reason is None:
            why = ("the fastest on the CPU in tiledsr's benchmark; `tiledsr models --measure` times them "
                   "on this machine") if not skipped else "; ".join(skipped)
            return name, why
        skipped.append(reason)
    return "torch", "; ".join(skipped)


def cannot_run(model: SRModel, backend: str, precision: str = "auto") -> str | None:
    """Why ``backend`` cannot run ``model`` on the CPU at ``precision`` (not installed, another
    architecture, ...), or None when it can; nothing is imported."""
    if backend == "openvino":
        if model.arch not in _OPENVINO_ARCHS:
            return f"openvino does not take {model.arch}"
        if precision not in ("auto", "fp32"):
            return f"openvino runs fp32 only, not {precision}"
        if not _installed("openvino"):
            return "openvino is not installed"
    if backend == "ncnn":
        if model.ncnn_files is None:
            return "no ncnn files for this model"
        if not _installed("ncnn"):
            return "ncnn is not installed"
    return None


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a None in sys.modules: no)."""
    import importlib.util
    import sys

    if package in sys.modules:
        return sys.modules[package] is not None
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _check_device(device: str) -> torch.device:
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but torch.cuda.is_available() is False")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device} requested but torch.backends.mps.is_available() is False")
    return parsed


def _check_batch(model: SRModel, batch: np.ndarray) -> np.ndarray:
    if batch.ndim != 4 or batch.shape[1] != model.in_channels:
        raise InputError(f"{model.name} expects an N x {model.in_channels} x h x w batch, "
                         f"got shape {batch.shape}")
    h, w = batch.shape[2:]
    if h % model.size_multiple or w % model.size_multiple:
        raise InputError(f"{model.name} needs tile sides that are multiples of "
                         f"{model.size_multiple}, got {h}x{w}")
    return np.ascontiguousarray(batch, dtype=np.float32)


def _tile_words(batch: np.ndarray) -> str:
    n, h, w = (batch.shape[0], *batch.shape[-2:]) if batch.ndim == 4 else (1, 0, 0)
    return f"{'a' if n == 1 else n} {h}x{w}-pixel input tile{'' if n == 1 else 's'}"


def _guarded(what: Callable[[], str], fn: Callable[..., T], *args: Any,
             hint: str = "try a smaller --tile") -> T:
    """``fn(*args)``, with an allocation failure raised as OutOfMemory naming ``what()``.

    The failed call's frames are cleared, so its tensors are freed before a retry.
    """
    try:
        return fn(*args)
    except Exception as exc:  # MemoryError is an Exception; others are re-raised as they are
        oom = as_out_of_memory(exc, what(), hint)
        if oom is None or oom is exc:
            raise
        traceback.clear_frames(exc.__traceback__)
        raise oom from exc


class TorchRunner:
    """PyTorch runner: the module lives on ``device`` in the chosen dtype; on the CPU and CUDA in
    channels_last memory format (NHWC strides: 1.3x faster for x4plus on the CPU, same values)."""

    backend = "torch"

    def __init__(self, model: SRModel, device: torch.device, precision: str,
                 threads: int | None) -> None:
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        if threads is not None:
            torch.set_num_threads(threads)
        self.model, self.device, self.precision = model, device, precision
        self.dtype = _DTYPES[precision]
        self._lock = threading.Lock()
        self.module = _guarded(lambda: f"{model.name} (torch) while loading it onto {device}", self._build,
                               hint="free some memory")

    def _build(self) -> torch.nn.Module:
        module = self.model.build().to(device=self.device, dtype=self.dtype)
        return module.to(memory_format=self.memory_format)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.device.type in ("cpu", "cuda") else torch.contiguous_format

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32 (host memory)."""
        what = lambda: f"{self.model.name} (torch, {self.device}) on {_tile_words(batch)}"  # noqa: E731
        with self._lock:
            try:
                return _guarded(what, self._forward, batch)
            except OutOfMemory:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # hand the failed call's blocks back before a retry
                raise

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(_check_batch(self.model, batch))
        maybe_fail_oom("torch", str(self.device), self._out_bytes(x))
        with torch.inference_mode():
            y = self.module(x.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format))
            return y.float().cpu().contiguous().numpy()

    def _out_bytes(self, x: torch.Tensor) -> int:
        """The size of the output for input ``x`` in this runner's dtype."""
        m = self.model
        return x.numel() * m.out_channels // m.in_channels * m.scale ** 2 * self.dtype.itemsize


class NcnnRunner:
    """ncnn CPU runner over the model's ``.param``/``.bin`` (Vulkan off)."""

    backend = "ncnn"

    def __init__(self, model: SRModel, device: torch.device, precision: str,
                 threads: int | None) -> None:
        if device.type != "cpu":
            raise InputError(f"the ncnn backend runs on the cpu only, got device {device}; "
                             "use backend torch")
        if model.ncnn_files is None:
            raise InputError(f"model {model.name} has no ncnn files; use backend torch")
        try:
            import ncnn
        except ImportError as exc:
            raise ModelNotAvailable("the ncnn backend needs the ncnn package; "
                                    "pip install tiledsr[ncnn]") from exc
        self.model, self.precision, self._ncnn = model, precision, ncnn
        self._lock = threading.Lock()
        self._blob, self._work = _pools(ncnn)
        self.net = _load_net(ncnn, model, precision, threads or os.cpu_count() or 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32."""
        what = lambda: f"{self.model.name} (ncnn) on {_tile_words(batch[:1])}"  # noqa: E731
        with self._lock:
            return _guarded(what, self._run, batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        images = _check_batch(self.model, batch)
        fail = should_fail()  # TILEDSR_FAIL_OOM: the first image fails as a failed allocation does
        return np.stack([self._one(image, fail and i == 0) for i, image in enumerate(images)])

    def _one(self, chw: np.ndarray, fail: bool = False) -> np.ndarray:
        """C x h x w float32 (C-contiguous, kept alive: ncnn.Mat borrows it) -> C_out x h*s x w*s.

        With ``fail`` (the test hook) the extract does not run: its status is ncnn's for a failed
        allocation.
        """
        extractor = self.net.create_extractor()
        extractor.set_blob_allocator(self._blob)
        extractor.set_workspace_allocator(self._work)
        status, out, mat = -1, None, None
        try:
            mat = self._ncnn.Mat(chw)
            extractor.input(self.net.input_names()[0], mat)
            status, out = (_NCNN_OOM, None) if fail else extractor.extract(self.net.output_names()[0])
            if status == 0:
                return np.array(out, dtype=np.float32, copy=True)
        finally:
            if status != 0:  # the pools may hold the failed blocks: replace them, quietly
                with quiet_fds((2,)) as said:
                    out = mat = extractor = None
                    self._blob, self._work = _pools(self._ncnn)
        size = f"{chw.shape[1]}x{chw.shape[2]}"
        if status == _NCNN_OOM:
            error: TiledsrError = as_out_of_memory(MemoryError(f"ncnn status {status}"),
                                                   f"{self.model.name} (ncnn) on a {size}-pixel input tile")
        else:
            error = TiledsrError(f"ncnn failed on {self.model.name} (status {status}) for a "
                                 f"{size} tile; try backend torch")
        _add_note(error, said)
        raise error


def _pools(ncnn: Any) -> tuple[Any, Any]:
    """Blob and workspace allocators owned by the runner, set up as ncnn's own per-net pools
    (any free block that is large enough is reused)."""
    pools = ncnn.PoolAllocator(), ncnn.PoolAllocator()
    for pool in pools:
        pool.set_size_compare_ratio(0.0)
    return pools


def _add_note(error: BaseException, said: list[str]) -> None:
    """Attach what ncnn printed to ``error``'s notes (shown with --debug only, never on stderr)."""
    if said and said[0]:
        error.add_note("ncnn printed: " + " | ".join(said[0].splitlines()))


def _load_net(ncnn: Any, model: SRModel, precision: str, threads: int) -> Any:
    """An ncnn.Net with the model loaded, CPU only; InputError (or OutOfMemory) if it fails."""
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    if precision == "fp32":
        for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                     "use_bf16_packed", "use_bf16_storage"):
            setattr(net.opt, flag, False)
    elif precision == "bf16":
        net.opt.use_bf16_storage = True
    param, bin_ = model.ncnn_files
    with quiet_fds((2,)) as said:
        status = net.load_param(str(param))
        status = status or net.load_model(str(bin_))
        if status != 0:
            net.clear()
    if status == 0:
        return net
    if status == _NCNN_OOM:
        error: TiledsrError = as_out_of_memory(MemoryError(), f"{model.name} (ncnn) while loading it",
                                               "free some memory")
    else:
        error = InputError(f"ncnn could not load {show(param)} / {show(bin_)} (status {status}); "
                           "check that they are a matching ncnn model pair")
    _add_note(error, said)
    raise error
