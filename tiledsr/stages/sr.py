"""Stage ``sr``: a super-resolution network (Real-ESRGAN family, or spandrel), run tile by tile.

Each output tile is computed from an input window with the model's context on
every side, so tiled output equals untiled output up to that context. Alpha is
resized separately by default; greyscale runs through the network as RGB and
comes back as one channel.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal, Optional

import numpy as np

from ..errors import ModelNotAvailable
from ..resample import band_rows, first_input_row, resize_bands
from ..tiling import TileGrid, output_grid
from ..tiling.run import tiled_bands
from ..tiling.store import MappedStore, StreamStore, aligned
from .base import Stage, StageReport, StageTiling, TileReport, note_of

__all__ = ["SRConfig", "SRStage"]

# Working memory per output pixel of a tile window, in bytes, by (architecture, backend); measured
# as peak RSS above the loaded process on the CPU, the largest of 256 -> 1024 and 512 -> 2048
# (tests/benchmarks/bench_backends.py, BENCHMARKS.md "SR backends on the CPU"): ncnn's winograd
# convolutions take 4-6x the memory of torch (channels_last) or OpenVINO.
_BYTES_PER_OUTPUT_PIXEL = {
    ("rrdbnet", "ncnn"): 3460, ("rrdbnet", "torch"): 610, ("rrdbnet", "openvino"): 790,
    ("srvgg", "ncnn"): 195, ("srvgg", "torch"): 65, ("srvgg", "openvino"): 110,
}

_WEIGHT_BYTES = {"rrdbnet": 140 << 20, "srvgg": 8 << 20}  # weights as loaded (fp32 and the backend's copies)
MIN_TILE_INPUT = 16  # input pixels a tile must span at least: smaller tiles are mostly context


@dataclass(frozen=True)
class SRConfig(StageTiling):
    """``model``: bundled name or .pth/.safetensors path; ``scale``: final scale (default: the model's)."""

    model: str = "x4plus"
    scale: Optional[float] = None
    backend: Literal["auto", "torch", "ncnn", "openvino"] = "auto"
    alpha: Literal["resize", "sr"] = "resize"
    context: Optional[int] = None

    def check(self) -> str | None:
        if self.scale is not None and not 0 < self.scale <= 16:
            return f"scale must be in (0, 16], got {self.scale}"
        if self.context is not None and self.context < 0:
            return f"context must be >= 0 input pixels, got {self.context}"
        return None


class SRStage(Stage):
    """Tiled super-resolution with a Real-ESRGAN-family network."""

    type = "sr"
    Config = SRConfig

    @cached_property
    def model(self):
        """The model descriptor (cheap: no weights are loaded)."""
        from ..models import load_sr_model

        return load_sr_model(self.config.model)

    @property
    def context(self) -> int:
        return self.model.context if self.config.context is None else self.config.context

    def _net_size(self, height: int, width: int) -> tuple[int, int]:
        s = self.model.scale
        return height * s, width * s

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.config.scale is None:
            return self._net_size(height, width)
        return max(1, round(height * self.config.scale)), max(1, round(width * self.config.scale))

    def grid(self, height: int, width: int) -> TileGrid:
        return output_grid(height, width, self.model.scale, self.tiling.tile, self.tiling.overlap)

    def _window(self, height: int, width: int) -> tuple[int, int]:
        """The largest input window (h, w) a tile is computed from: the tile and the context on each side
        where the image has it (an edge tile's is smaller)."""
        from ..tiling.run import windows

        wins = windows(self.grid(height, width).tiles, self.model.scale, self.context, height, width)
        return max(wy[1] for wy, _ in wins), max(wx[1] for _, wx in wins)

    def redundancy(self, height: int, width: int) -> float:
        """Input pixels the network computes (the tiles' windows) over the image's."""
        from ..tiling.run import windows

        g = self.grid(height, width)
        if len(g) == 1:
            return 1.0
        area = sum(wy[1] * wx[1] for wy, wx in windows(g.tiles, self.model.scale, self.context, height, width))
        return area / (height * width)

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        """The model's weights and activations for a batch of windows, and the rows of tiles in flight."""
        from ..memory import band_bytes

        s, t = self.model.scale, self.tiling
        win_h, win_w = self._window(height, width)
        arch = self.model.arch if self.model.arch in _WEIGHT_BYTES else "rrdbnet"
        out_px = win_h * win_w * s * s
        model = _WEIGHT_BYTES[arch] + t.batch * out_px * (_BYTES_PER_OUTPUT_PIXEL[arch, self._likely_backend()]
                                                           + 3 * 3 * 4)
        g = self.grid(height, width)
        oh, ow = self.output_size(height, width)
        net_w = width * s
        canvas = g.tile_h * net_w * (3 * 8 + 4) + 3 * band_bytes(ow, channels, oh)
        if channels in (2, 4) and self.config.alpha == "sr":
            canvas += g.tile_h * net_w * (3 * 8 + 4)
        return {"tile": model, "canvas": canvas}

    def least_tile(self) -> int:
        return MIN_TILE_INPUT * self.model.scale

    def _likely_backend(self) -> str:
        """The backend ``load()`` will pick, guessed without loading (for memory estimates)."""
        return self.backend_choice()[0]

    def backend_choice(self) -> tuple[str, str]:
        """(backend, why): the one loaded, or the one ``load()`` will pick (nothing is loaded)."""
        if hasattr(self, "_runner"):
            return self._runner.backend, "loaded"
        if self.config.backend != "auto":
            return self.config.backend, "asked for"
        import torch

        from ..models.runner import choose_backend
        from ..pipeline import resolve_device

        device = resolve_device("auto") if self.runtime.device == "auto" else self.runtime.device
        return choose_backend(self.model, torch.device(device).type, self.runtime.precision, self.runtime.threads)

    def check_tiling(self) -> str | None:
        least = MIN_TILE_INPUT * self.model.scale
        if self.tiling.tile < least:
            return (f"tile {self.tiling.tile} is below the smallest useful tile for {self.model.name}, {least} "
                    f"output pixels ({MIN_TILE_INPUT} input pixels of a x{self.model.scale} network); "
                    f"use --tile {least} or more")
        return None

    def missing_models(self) -> list[str]:
        try:
            self.model
        except ModelNotAvailable as exc:
            return [str(exc)]
        return []

    def describe(self) -> str:
        m = self.model
        extra = f" -> x{self.config.scale:g}" if self.config.scale is not None else ""
        backend, why = self.backend_choice()
        how = f"{backend}, {why}" if self.config.backend == "auto" and not hasattr(self, "_runner") else backend
        return f"sr {m.name} ({m.arch}, x{m.scale}{extra}, context {self.context}px, backend {how})"

    def load(self) -> None:
        from ..models import make_runner

        rt = self.runtime
        self._runner = make_runner(self.model, self.config.backend, rt.device, rt.precision, rt.threads)

    @property
    def backend(self) -> str:
        """The backend chosen at load time ("torch", "ncnn" or "openvino")."""
        return self._runner.backend

    def _network(self, batch: np.ndarray) -> np.ndarray:
        """(N, h, w, 3) float32 -> (N, h*s, w*s, 3) float32 through the loaded runner."""
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        return self._runner(nchw).transpose(0, 2, 3, 1)

    def _tiled(self, planes, report, start: int):
        """Net output bands of 1 or 3 planes (a store (H, W, c)) from row ``start``; grey goes through as RGB."""
        t = self.tiling
        grey = planes.shape[2] == 1
        rgb = MappedStore(planes, lambda a: np.repeat(a, 3, axis=2), 3) if grey else planes
        bands = tiled_bands(
            rgb, self._network, scale=self.model.scale, tile=t.tile, overlap=t.overlap, context=self.context,
            multiple=self.model.size_multiple, blend=t.blend, batch=t.batch, on_tile=report, start=start,
            min_tile=MIN_TILE_INPUT * self.model.scale, on_backoff=note_of(report),
        )
        return (b.mean(axis=2, keepdims=True) for b in bands) if grey else bands

    def stream(self, src, report: TileReport, source=None, start: int = 0):
        if not hasattr(self, "_runner"):
            self.load()
        h, w, c = src.shape
        net_h, net_w = self._net_size(h, w)
        out_h, out_w = self.output_size(h, w)
        rows = band_rows(out_w, c)
        first = first_input_row(start, net_h, out_h, "lanczos", rows) if (out_h, out_w) != (net_h, net_w) else start
        has_alpha = c in (2, 4)
        colour = MappedStore(src, lambda a: a[:, :, :c - 1], c - 1) if has_alpha else src
        n = len(self.grid(h, w))
        counts = [0, 0]

        def counter(k: int, passes: int):
            def tick(done, _total):
                counts[k] = done
                report(sum(counts), n * passes)
            return StageReport(tick, note_of(report))

        passes = 2 if has_alpha and self.config.alpha == "sr" else 1
        streams = [self._tiled(colour, counter(0, passes), first)]
        if has_alpha:
            alpha = MappedStore(src, lambda a: a[:, :, -1:], 1)
            streams.append(self._tiled(alpha, counter(1, 2), first) if passes == 2
                           else resize_bands(alpha, (net_h, net_w), "lanczos", start=first))
        net = aligned(*streams) if len(streams) > 1 else streams[0]
        if (out_h, out_w) != (net_h, net_w):
            net = resize_bands(StreamStore(net, (net_h, net_w, c), first), (out_h, out_w), "lanczos", rows, start)
        for band in net:
            yield np.clip(band, 0.0, 1.0, out=band)
