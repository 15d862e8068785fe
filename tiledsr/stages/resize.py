"""Stage ``resize``: Lanczos / bicubic / bilinear / area / nearest, to a scale or an exact size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from ..resample import band_rows, resize_bands
from .base import Stage, TileReport

__all__ = ["MAX_SIDE", "ResizeConfig", "ResizeStage"]

MAX_SIDE = 2**20  # pixels a side of any image tiledsr makes


@dataclass(frozen=True)
class ResizeConfig:
    """``scale`` multiplies both sides; ``width``/``height`` set them (one alone keeps the aspect ratio)."""

    scale: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    method: Literal["lanczos", "bicubic", "bilinear", "area", "nearest"] = "lanczos"

    def check(self) -> str | None:
        if self.scale is None and self.width is None and self.height is None:
            return "resize needs scale, width or height"
        if self.scale is not None and (self.width is not None or self.height is not None):
            return "give either scale or width/height, not both"
        if self.scale is not None and not 0 < self.scale <= 64:
            return f"scale must be in (0, 64], got {self.scale}"
        for key in ("width", "height"):
            v = getattr(self, key)
            if v is not None and not 0 < v <= MAX_SIDE:
                return f"{key} must be a number of pixels in 1..{MAX_SIDE}, got {v}"
        return None


def target_size(height: int, width: int, scale: float | None, tw: int | None, th: int | None) -> tuple[int, int]:
    """Output (H, W) for a scale, or an exact width/height (one alone keeps the aspect ratio)."""
    if scale is not None:
        return max(1, round(height * scale)), max(1, round(width * scale))
    if tw is not None and th is not None:
        return th, tw
    if tw is not None:
        return max(1, round(height * tw / width)), tw
    assert th is not None
    return th, max(1, round(width * th / height))


class ResizeStage(Stage):
    """Classical resampling, band by band (cheap; not tiled)."""

    type = "resize"
    Config = ResizeConfig

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        c = self.config
        return target_size(height, width, c.scale, c.width, c.height)

    def grid(self, height: int, width: int):
        return None

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        from ..memory import band_bytes

        oh, ow = self.output_size(height, width)
        band = band_bytes(ow, channels, oh)
        rows_in = band * height // max(oh, 1) * width // max(ow, 1) + 8 * width * channels * 4
        return {"tile": 0, "canvas": 2 * band + rows_in}  # measured: a band and its clipped copy

    def describe(self) -> str:
        c = self.config
        what = f"x{c.scale:g}" if c.scale is not None else f"to {c.width or 'auto'}x{c.height or 'auto'}"
        return f"resize {what} ({c.method})"

    def stream(self, src, report: TileReport, source=None, start: int = 0):
        """Band by band: each output band reads only the input rows its kernels reach."""
        h, w, c = src.shape
        oh, ow = self.output_size(h, w)
        rows = band_rows(ow, c)
        bands, done = -(-oh // rows), start // rows  # bands an earlier run handed on count as done
        for i, band in enumerate(resize_bands(src, (oh, ow), self.config.method, rows, start), done + 1):
            report(i, bands)
            yield np.clip(band, 0.0, 1.0, out=band)
