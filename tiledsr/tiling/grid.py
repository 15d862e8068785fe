"""Tile grids: pure geometry, no pixels.

A grid covers an H x W canvas with equal-sized tiles that overlap by at least
``overlap`` pixels. Tiles are spread evenly; edge tiles are shifted inwards, never
shrunk, so every tile has the same shape and tiles can be batched. With a size
``multiple``, every tile side is a multiple of it (unless the canvas side is shorter),
whatever the canvas size: a side that is not a multiple gets overlapping tiles.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

__all__ = ["Tile", "TileGrid", "axis_starts", "make_grid"]


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` in row-major order, top-left corner (y, x), size (h, w)."""

    index: int
    y: int
    x: int
    h: int
    w: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


@dataclass(frozen=True)
class TileGrid:
    """Tiles covering a ``height`` x ``width`` canvas; ``ys``/``xs`` are the start rows/columns.

    Every tile is ``tile_h`` x ``tile_w``, unless ``hs``/``ws`` give each row's height and each
    column's width (shifted fusion's cut grids); ``tile_h``/``tile_w`` are then the nominal side.
    """

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    hs: tuple[int, ...] | None = None
    ws: tuple[int, ...] | None = None

    @property
    def row_heights(self) -> tuple[int, ...]:
        return self.hs if self.hs is not None else (self.tile_h,) * len(self.ys)

    @property
    def col_widths(self) -> tuple[int, ...]:
        return self.ws if self.ws is not None else (self.tile_w,) * len(self.xs)

    @property
    def tiles(self) -> tuple[Tile, ...]:
        n = len(self.xs)
        return tuple(
            Tile(i * n + j, y, x, h, w)
            for i, (y, h) in enumerate(zip(self.ys, self.row_heights))
            for j, (x, w) in enumerate(zip(self.xs, self.col_widths))
        )

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def redundancy(self) -> float:
        """Pixels computed over pixels in the canvas (1.0 = no overlap)."""
        return sum(self.row_heights) * sum(self.col_widths) / (self.height * self.width)


def _spread(length: int, tile: int, overlap: int, m: int) -> tuple[int, ...]:
    """Evenly spread starts of ``tile``-long tiles (``tile < length``) overlapping >= ``overlap``.

    Every start is a multiple of ``m`` but the last, ``length - tile``, which is one only when
    ``length`` is: the span is counted in units of ``m`` rounded up, so the tiles reach the end.
    """
    full = length - tile
    span = -(-full // m)  # in units of `m`, at least 1
    step = max(1, (tile - overlap) // m)
    n = -(-span // step) + 1
    return tuple(round(i * span / (n - 1)) * m for i in range(n - 1)) + (full,)


def axis_starts(length: int, tile: int, overlap: int, multiple: int = 1) -> tuple[int, tuple[int, ...]]:
    """Tile size and start offsets along one axis.

    ``tile`` is the largest tile allowed (rounded down to a multiple of
    ``multiple``): the fewest tiles that cover ``length`` with at least
    ``overlap`` pixels between neighbours are found, then shrunk to the
    smallest common size (a multiple of ``multiple``) that still covers, so
    no more is computed than needed. Returns ``(tile_len, starts)``: starts
    are spread evenly, the first 0 and the last ``length - tile_len``, all
    multiples of ``multiple`` but the last (a multiple too when ``length``
    is). An axis no longer than the tile gets one tile of its length if that
    is a multiple, else two or more of the largest multiple that fits; an
    axis shorter than ``multiple`` gets one tile of its length. Neighbours
    overlap by ``overlap`` or more when it is at most the tile less one multiple.
    """
    if length <= 0 or tile <= 0:
        raise InputError(f"tile grid needs positive sizes, got length {length}, tile {tile}")
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must be in [0, tile), got overlap {overlap} with tile {tile}")
    m = max(1, multiple)
    if tile >= length and length % m == 0:
        return length, (0,)
    tile = max(m, min(tile, length - 1) // m * m)
    if tile >= length:  # shorter than one multiple
        return length, (0,)
    starts = _spread(length, tile, overlap, m)
    n = len(starts)
    snug = -(-(length + (n - 1) * overlap) // n)
    snug = min(tile, -(-snug // m) * m)
    if snug > overlap and snug < tile:
        fewer = _spread(length, snug, overlap, m)
        if len(fewer) == n:
            return snug, fewer
    return tile, starts


def make_grid(height: int, width: int, tile: int, overlap: int, multiple: int = 1) -> TileGrid:
    """Grid of square ``tile`` x ``tile`` tiles (clamped to the canvas) over ``height`` x ``width``."""
    th, ys = axis_starts(height, tile, overlap, multiple)
    tw, xs = axis_starts(width, tile, overlap, multiple)
    return TileGrid(height, width, th, tw, overlap, ys, xs)
