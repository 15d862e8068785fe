"""Feathered blend weights for overlapping tiles.

Weights are small positive integers (1..WEIGHT_SCALE) so that the canvas can
accumulate them exactly; the final image is ``sum(w * tile) / sum(w)``, so the
weights only need to be positive and smooth, not to sum to one.
"""
from __future__ import annotations

import numpy as np

from .grid import Tile, TileGrid

__all__ = ["BLENDS", "WEIGHT_SCALE", "ramp", "tile_weights"]

BLENDS = ("linear", "cosine", "gaussian")
WEIGHT_SCALE = 1024


def ramp(length: int, kind: str) -> np.ndarray:
    """Rising edge of ``length`` samples in (0, 1], float64."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if kind == "cosine":
        return 0.5 - 0.5 * np.cos(np.pi * t)
    return t


def _profile(starts: tuple[int, ...], sizes: tuple[int, ...], i: int, kind: str) -> np.ndarray:
    """1-D weight of tile ``i`` along an axis with tile starts ``starts`` and sizes ``sizes``."""
    size = sizes[i]
    w = np.ones(size, dtype=np.float64)
    if kind == "gaussian":
        if len(starts) > 1:
            c = (np.arange(size) + 0.5 - size / 2) / (0.3 * size)
            w = np.exp(-0.5 * c * c)
        return w
    if i > 0:
        before = starts[i - 1] + sizes[i - 1] - starts[i]
        if before > 0:
            w[:before] = np.minimum(w[:before], ramp(before, kind))
    if i < len(starts) - 1:
        after = starts[i] + size - starts[i + 1]
        if after > 0:
            w[size - after:] = np.minimum(w[size - after:], ramp(after, kind)[::-1])
    return w


def tile_weights(grid: TileGrid, tile: Tile, kind: str = "cosine") -> np.ndarray:
    """Integer blend weights for ``tile``: int64 array (tile.h, tile.w), values in 1..WEIGHT_SCALE.

    Ramps span the actual overlap with each neighbour; sides on the canvas edge
    stay at full weight. ``gaussian`` is a centred bell on every tile
    (Mixture-of-Diffusers-like).
    """
    if kind not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {kind!r}")
    row = grid.ys.index(tile.y)
    col = grid.xs.index(tile.x)
    wy = _profile(grid.ys, grid.row_heights, row, kind)
    wx = _profile(grid.xs, grid.col_widths, col, kind)
    w = np.outer(wy, wx) * WEIGHT_SCALE
    return np.maximum(1, np.rint(w)).astype(np.int64)
