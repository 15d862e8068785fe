"""An accumulator canvas: weighted tiles in, a normalised image out.

Values are accumulated in int64 fixed point (2**-24 steps) times integer
weights, so the sum is exact and the result does not depend on the order in
which tiles arrive. Backed by RAM, or by memory-mapped files in ``scratch_dir``
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
            self._acc = np.zeros(self.shape, dtype=np.int64)
            self._wsum = np.zeros((height, width), dtype=np.int64)
        else:
            d = tempfile.mkdtemp(prefix="tiledsr-canvas-", dir=scratch_dir)
            self._acc = np.lib.format.open_memmap(Path(d, "acc.npy"), "w+", np.int64, self.shape)
            self._wsum = np.lib.format.open_memmap(Path(d, "wsum.npy"), "w+", np.int64, (height, width))

    def add(self, y: int, x: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``values`` (h, w, C) float at (y, x) with integer ``weights`` (h, w) >= 1."""
        h, w = weights.shape
        q = np.rint(values.astype(np.float64) * _FIX).astype(np.int64)
        self._acc[y:y + h, x:x + w] += q * weights[:, :, None]
        self._wsum[y:y + h, x:x + w] += weights

    def coverage(self) -> np.ndarray:
        """Boolean (H, W): pixels that received at least one tile."""
        return self._wsum > 0

    def result(self, rows: slice = slice(None)) -> np.ndarray:
        """Normalised float32 image (H, W, C), or a band of ``rows``; uncovered pixels are 0."""
        acc = self._acc[rows]
        wsum = np.maximum(self._wsum[rows], 1)[:, :, None]
        return (acc / wsum / _FIX).astype(np.float32)
