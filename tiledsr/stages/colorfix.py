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

    def describe(self) -> str:
        return f"colorfix ({self.config.method})"

    def run(self, image: np.ndarray, report, source: np.ndarray | None = None) -> np.ndarray:
        from ..colorfix import colorfix

        out = image if source is None else colorfix(image, source, self.config.method)
        report(1, 1)
        return out
