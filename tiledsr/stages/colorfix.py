"""Stage ``colorfix``: re-anchor the low frequencies (colours, tones) to the pipeline's input."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .base import Stage

__all__ = ["ColorfixConfig", "ColorfixStage"]


@dataclass(frozen=True)
class ColorfixConfig:
    """``wavelet`` keeps the image's detail over the input's low frequencies; ``adain`` matches mean/std."""

    method: Literal["wavelet", "adain"] = "wavelet"


class ColorfixStage(Stage):
    """Pixels -> pixels of the same size; a no-op when the pipeline has no input image (txt2img)."""

    type = "colorfix"
    Config = ColorfixConfig

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def grid(self, height: int, width: int):
        return None

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        from ..memory import band_bytes

        return {"tile": 0, "canvas": 10 * band_bytes(width, channels, height)}

    def describe(self) -> str:
        return f"colorfix ({self.config.method})"

    def stream(self, src, report, source=None, start: int = 0):
        """Band by band against the pipeline's input (a store); unchanged without one."""
        from ..colorfix import colorfix_bands
        from ..resample import band_rows

        h, w, c = src.shape
        rows = band_rows(w, c)
        done = -(-start // rows)  # bands an earlier run handed on count as done
        total = done + -(-(h - start) // rows)
        if source is None:
            bands = (src.read(y, min(h, y + rows)) for y in range(start, h, rows))
        else:
            bands = colorfix_bands(src, source, self.config.method, start=start, rows=rows)
        for i, band in enumerate(bands, done + 1):
            report(i, total)
            yield band
