"""An accumulator canvas: weighted tiles in, a normalised image out.

Values are rounded to fixed point (2**-24 steps) and multiplied by integer
weights; these products are integers below 2**36, which float64 adds exactly,
so the sum does not depend on the order in which tiles arrive. Backed by RAM, or by memory-mapped files in ``scratch_dir``
for canvases larger than RAM.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

__all__ = ["Canvas"]

_FIX = float(2**24)


class Canvas:
    """Accumulates ``height`` x ``width`` x ``channels`` float tiles with integer weights."""

    def __init__(self, height: int, width: int, channels: int, scratch_dir: str | Path | None = None):
        self.shape = (height, width, channels)
        if scratch_dir is None:
            self._acc = np.zeros(self.shape, dtype=np.float64)
            self._wsum = np.zeros((height, width), dtype=np.float64)
        else:
            d = tempfile.mkdtemp(prefix="tiledsr-canvas-", dir=scratch_dir)
            self._acc = np.lib.format.open_memmap(Path(d, "acc.npy"), "w+", np.float64, self.shape)
            self._wsum = np.lib.format.open_memmap(Path(d, "wsum.npy"), "w+", np.float64, (height, width))

    def add(self, y: int, x: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``values`` (h, w, C) float at (y, x) with integer ``weights`` (h, w) >= 1."""
        h, w = weights.shape
        # v * 2**24 is exact in float32 (a power of two) and so is its rint; q * w is an
        # integer float64 holds exactly for |v| < 2**12.
        q = np.multiply(values, np.float32(_FIX), dtype=np.float32)
        np.rint(q, out=q)
        wf = weights.astype(np.float64)
        self._acc[y:y + h, x:x + w] += q * wf[:, :, None]
        self._wsum[y:y + h, x:x + w] += wf

    def coverage(self) -> np.ndarray:
        """Boolean (H, W): pixels that received at least one tile."""
        return self._wsum > 0

    def result(self, rows: slice = slice(None)) -> np.ndarray:
        """Normalised float32 image (H, W, C), or a band of ``rows``; uncovered pixels are 0."""
        out = self._acc[rows] / np.maximum(self._wsum[rows], 1)[:, :, None]
        out *= 1.0 / _FIX  # a power of two: exact
        return out.astype(np.float32)
