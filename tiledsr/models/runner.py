"""Run an :class:`SRModel` on batches of tiles with PyTorch or ncnn.

A runner maps N x C x h x w float32 numpy in [0, 1] to N x C_out x h*s x w*s float32
numpy (not clipped). Tiles always arrive and leave as host (CPU) arrays; only the
torch runner moves each batch to its device for the forward pass.
"""
from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import torch

from tiledsr.errors import InputError, ModelNotAvailable, TiledsrError
from tiledsr.models.registry import SRModel

__all__ = ["BACKENDS", "PRECISIONS", "Runner", "make_runner"]

BACKENDS = ("auto", "torch", "ncnn")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Runner(Protocol):
    """Callable running one batch: N x C x h x w float32 -> N x C_out x h*s x w*s float32."""

    backend: str

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


def make_runner(model: SRModel, backend: str = "auto", device: str = "cpu",
                precision: str = "auto", threads: int | None = None) -> Runner:
    """A runner for ``model``; ``auto`` picks ncnn on the CPU when it can, else torch.

    ``threads`` sets ncnn's thread count, or torch's process-wide one when given.
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
        usable = torch_device.type == "cpu" and model.ncnn_files is not None and _ncnn_importable()
        backend = "ncnn" if usable else "torch"
    if backend == "ncnn":
        return NcnnRunner(model, torch_device, precision, threads)
    return TorchRunner(model, torch_device, precision, threads)


def _ncnn_importable() -> bool:
    try:
        import ncnn  # noqa: F401
    except ImportError:
        return False
    return True


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


class TorchRunner:
    """PyTorch runner: the module lives on ``device`` in the chosen dtype."""

    backend = "torch"

    def __init__(self, model: SRModel, device: torch.device, precision: str,
                 threads: int | None) -> None:
        if precision == "auto":
            precision = "fp16" if device.type == "cuda" else "fp32"
        if threads is not None:
            torch.set_num_threads(threads)
        self.model, self.device, self.precision = model, device, precision
        self.dtype = _DTYPES[precision]
        self.module = model.build().to(device=device, dtype=self.dtype)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32 (host memory)."""
        x = torch.from_numpy(_check_batch(self.model, batch))
        with torch.inference_mode():
            y = self.module(x.to(device=self.device, dtype=self.dtype))
            return y.float().cpu().numpy()


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
        self.net = _load_net(ncnn, model, precision, threads or os.cpu_count() or 1)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32."""
        return np.stack([self._one(image) for image in _check_batch(self.model, batch)])

    def _one(self, image: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(image)  # ncnn.Mat borrows this buffer: keep it alive
        mat = self._ncnn.Mat(chw)
        extractor = self.net.create_extractor()
        extractor.input(self.net.input_names()[0], mat)
        status, out = extractor.extract(self.net.output_names()[0])
        if status != 0:
            raise TiledsrError(f"ncnn failed on {self.model.name} (status {status}) for a "
                               f"{chw.shape[1]}x{chw.shape[2]} tile; try backend torch")
        return np.array(out, dtype=np.float32, copy=True)


def _load_net(ncnn: Any, model: SRModel, precision: str, threads: int) -> Any:
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
    if net.load_param(str(param)) != 0 or net.load_model(str(bin_)) != 0:
        raise ModelNotAvailable(f"ncnn could not load {param} / {bin_}; check the files")
    return net
