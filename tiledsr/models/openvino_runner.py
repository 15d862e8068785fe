"""Run an :class:`SRModel` with OpenVINO on the CPU.

The PyTorch port of the network is converted once (``openvino.convert_model`` on the torch
module) with a dynamic batch, height and width, so one compiled model serves every tile size.
The converted model is kept on disk under the user cache (``$TILEDSR_CACHE_DIR`` or
``$XDG_CACHE_HOME/tiledsr``, else ``~/.cache/tiledsr``), in ``openvino/<key>/``, where the key
is a hash of the weights, the architecture and the OpenVINO version; OpenVINO's own compiled-blob
cache sits beside it (``openvino/compiled``). A second run reads both and starts in a fraction of
a second instead of the ~2 s the conversion takes. A cache that cannot be written is skipped (the
run converts in memory); a damaged one is converted again.

Inference is f32 (``INFERENCE_PRECISION_HINT f32``): OpenVINO's CPU plugin would otherwise pick
bf16 on CPUs with AMX or AVX512-BF16, whose error is well above 1/255. ``precision`` fp16 and bf16
are refused with a one-line message. Calls hold the runner's lock and release the GIL while the
network runs, so a signal still takes effect at once (:mod:`tiledsr.signals`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiledsr.errors import InputError, ModelNotAvailable, TiledsrError
from tiledsr.faults import maybe_fail_oom
from tiledsr.models.registry import SRModel

__all__ = ["OpenVinoRunner", "cache_root"]

log = logging.getLogger("tiledsr")


def cache_root() -> Path:
    """tiledsr's user cache folder: ``$TILEDSR_CACHE_DIR``, else ``$XDG_CACHE_HOME/tiledsr``, else
    ``~/.cache/tiledsr`` (not created here)."""
    if os.environ.get("TILEDSR_CACHE_DIR"):
        return Path(os.environ["TILEDSR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tiledsr"


class OpenVinoRunner:
    """OpenVINO CPU runner: N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32 (host)."""

    backend = "openvino"

    def __init__(self, model: SRModel, device: torch.device, precision: str,
                 threads: int | None) -> None:
        if device.type != "cpu":
            raise InputError(f"the openvino backend runs on the cpu only, got device {device}; use backend torch")
        if precision not in ("auto", "fp32"):
            raise InputError(f"the openvino backend runs in fp32, got precision {precision}; use --precision fp32 "
                             "or backend torch")
        try:
            import openvino as ov
        except ImportError as exc:
            raise ModelNotAvailable("the openvino backend needs the openvino package; "
                                    "pip install tiledsr[openvino]") from exc
        from tiledsr.models.runner import _guarded

        self.model, self.precision = model, "fp32"
        self._lock = threading.Lock()
        self.cached = False  # whether the converted model came from the disk cache
        self._compiled = _guarded(lambda: f"{model.name} (openvino) while loading it", self._compile, ov, threads,
                                  hint="free some memory")
        self._request = self._compiled.create_infer_request()

    def _compile(self, ov: Any, threads: int | None) -> Any:
        core = ov.Core()
        module = self.model.build()
        folder = cache_root() / "openvino"
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        ov_model = self._read_cached(core, folder, module, ov)
        if _writable(folder / "compiled"):
            config["CACHE_DIR"] = str(folder / "compiled")
        return core.compile_model(ov_model, "CPU", config)

    def _read_cached(self, core: Any, folder: Path, module: torch.nn.Module, ov: Any) -> Any:
        """The converted model: read from the cache when it holds it, else converted (and stored)."""
        key = _key(self.model, module, ov.__version__)
        xml = folder / key / "model.xml"
        if xml.is_file():
            try:
                model = core.read_model(str(xml))
                self.cached = True
                return model
            except RuntimeError:  # damaged: convert again below
                pass
        import warnings

        where = f"cached in {folder}" if _writable(folder) else "not cached: the cache folder cannot be written"
        log.info("converting %s for openvino; a large network takes about 20 s, once per machine (%s)",
                 self.model.name, where)
        c = self.model.in_channels
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's deprecation and shape notes are not the user's
            model = ov.convert_model(module, example_input=torch.zeros(1, c, 64, 64),
                                     input=[ov.PartialShape([-1, c, -1, -1])])
        _store(ov, model, folder, key)
        return model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N x C x h x w float32 [0, 1] -> N x C_out x h*s x w*s float32."""
        from tiledsr.models.runner import _check_batch, _guarded, _tile_words

        what = lambda: f"{self.model.name} (openvino) on {_tile_words(batch)}"  # noqa: E731
        with self._lock:
            return _guarded(what, self._run, _check_batch(self.model, batch))

    def _run(self, batch: np.ndarray) -> np.ndarray:
        maybe_fail_oom("openvino")
        try:
            out = self._request.infer({0: batch})
        except RuntimeError as exc:
            from tiledsr.errors import is_out_of_memory

            if is_out_of_memory(exc):
                raise
            raise TiledsrError(f"openvino failed on {self.model.name} for a {batch.shape[2]}x{batch.shape[3]} "
                               f"tile ({str(exc).splitlines()[0][:200]}); try backend torch") from exc
        return np.array(out[self._compiled.output(0)], dtype=np.float32, copy=True)


def _key(model: SRModel, module: torch.nn.Module, version: str) -> str:
    """A hash of the weights (names, shapes, bytes), the architecture and the OpenVINO version."""
    h = hashlib.sha256(f"{model.arch}|{model.in_channels}|{model.out_channels}|{model.scale}|{version}".encode())
    for name, tensor in module.state_dict().items():
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"{model.arch}-{h.hexdigest()[:24]}"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


def _store(ov: Any, model: Any, folder: Path, key: str) -> None:
    """Save ``model`` as ``folder/key/model.xml`` (+ .bin) atomically; skipped when it cannot be written."""
    if not _writable(folder):
        return
    _drop_stale(folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder))
    except OSError:
        return
    try:
        ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
        os.replace(tmp, folder / key)  # a folder another run stored first stays: ours is dropped below
    except (OSError, RuntimeError):  # a full disk, a race with another run: the next run converts again
        pass
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


STALE_SECONDS = 3600  # a temporary folder this old belongs to a run that was killed while saving


def _drop_stale(folder: Path) -> None:
    """Remove the temporary folders (``.<key>-*``) that runs killed while saving left in ``folder``."""
    import shutil
    import time

    now = time.time()
    for entry in folder.glob(".*-*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue
