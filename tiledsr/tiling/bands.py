"""A row-band accumulator: weighted tiles of a grid in, final rows out, as soon as they are final.

Tiles of a :class:`~tiledsr.tiling.TileGrid` arrive in any order. A row is final once every
tile that touches it has arrived; final rows are normalised and handed on top to bottom.
With tiles in row-major order only one row of tiles (the tile height, plus the overlap
carried into the next row) is held, whatever the image's height. Sums are exact integers
(values in 2**-24 steps times integer weights, as in :class:`~tiledsr.tiling.Canvas`), so the
output does not depend on tile order or batch, and equals the whole-canvas result.

``start`` (resume, out-of-memory back-off) skips rows above it: rows before ``start`` were
final and handed on by an earlier run; tiles are cropped to the rows from ``start`` on.
"""
from __future__ import annotations

import numpy as np

from .grid import Tile, TileGrid

__all__ = ["BandCanvas"]

_FIX = float(2**24)


class BandCanvas:
    """Accumulates ``channels``-channel float tiles of ``grid``; :meth:`add` returns final rows."""

    def __init__(self, grid: TileGrid, channels: int, start: int = 0):
        self.grid, self.channels = grid, channels
        self.start = start
        self.base = self.emitted = start  # first row held / first row not yet handed on
        self._acc = np.zeros((0, grid.width, channels), np.float64)
        self._wsum = np.zeros((0, grid.width), np.int32)
        n = len(grid.xs)
        self._left = [n if y + grid.tile_h > start else 0 for y in grid.ys]  # tiles still to come per tile row

    def needed(self, tile: Tile) -> bool:
        """Whether ``tile`` contributes to rows from ``start`` on."""
        return tile.y + tile.h > self.start

    def add(self, tile: Tile, values: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
        """Add ``values`` (h, w, C) float with integer ``weights`` (h, w) >= 1 at the tile's place;
        returns the bands (rows, W, C) float32 that became final, top to bottom."""
        top = max(tile.y, self.emitted)
        skip = top - tile.y
        if top < tile.y + tile.h:
            self._grow(tile.y + tile.h)
            q = np.multiply(values[skip:], np.float32(_FIX), dtype=np.float32)
            np.rint(q, out=q)
            wf = weights[skip:]
            rows = slice(top - self.base, tile.y + tile.h - self.base)
            self._acc[rows, tile.x:tile.x + tile.w] += q * wf[:, :, None].astype(np.float64)
            self._wsum[rows, tile.x:tile.x + tile.w] += wf.astype(np.int32)
        row = self.grid.ys.index(tile.y)
        self._left[row] = max(0, self._left[row] - 1)
        return self._final()

    def _grow(self, stop: int) -> None:
        have = self.base + len(self._acc)
        if stop <= have:
            return
        more = stop - have
        self._acc = np.concatenate([self._acc, np.zeros((more, *self._acc.shape[1:]), np.float64)])
        self._wsum = np.concatenate([self._wsum, np.zeros((more, self._wsum.shape[1]), np.int32)])

    def _final(self) -> list[np.ndarray]:
        """Hand on the rows no remaining tile touches."""
        pending = [y for y, left in zip(self.grid.ys, self._left) if left]
        final = min(pending) if pending else self.grid.height
        if final <= self.emitted:
            return []
        n = final - self.base
        out = self._acc[:n] / np.maximum(self._wsum[:n], 1)[:, :, None]
        out *= 1.0 / _FIX  # a power of two: exact
        band = out.astype(np.float32)
        self._acc, self._wsum = self._acc[n:], self._wsum[n:]
        self.base = self.emitted = final
        return [band]
