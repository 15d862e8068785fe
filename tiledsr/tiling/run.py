"""Run a per-tile function over an image and blend the results into a canvas.

Tiles are laid out in *output* pixels. Each output tile is computed from an
input window that adds ``context`` input pixels on every side where the image
has them; windows are shifted inwards at the image border rather than padded,
so every window has the same size (batchable) and sees exactly what the
untiled run would see, up to the context.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

from .blend import tile_weights
from .canvas import Canvas
from .grid import TileGrid, make_grid

__all__ = ["output_grid", "run_tiled", "window"]

TileFn = Callable[[np.ndarray], np.ndarray]


def window(start_out: int, size_out: int, scale: int, context: int, length_in: int) -> tuple[int, int, int]:
    """Input window for output span ``[start_out, start_out + size_out)``.

    Returns ``(start_in, size_in, offset_out)``: the window's start and size in
    input pixels, and where the wanted output span starts inside the window's
    output. ``start_out`` and ``size_out`` must be multiples of ``scale``.
    """
    first, n = start_out // scale, size_out // scale
    size_in = min(length_in, n + 2 * context)
    start_in = min(max(first - context, 0), length_in - size_in)
    return start_in, size_in, start_out - start_in * scale


def output_grid(height: int, width: int, scale: int, tile: int, overlap: int) -> TileGrid:
    """Grid over the (height*scale, width*scale) output, tile/overlap snapped to multiples of ``scale``."""
    tile = max(scale, tile - tile % scale)
    overlap = min(overlap - overlap % scale, tile - scale)
    return make_grid(height * scale, width * scale, tile, overlap, multiple=scale)


def _pad_to_multiple(batch: np.ndarray, multiple: int) -> np.ndarray:
    """Pad N x h x w x C on the bottom/right (reflect, else edge) so h and w are multiples."""
    _, h, w, _ = batch.shape
    ph, pw = -h % multiple, -w % multiple
    if not (ph or pw):
        return batch
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(batch, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def _batches(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def run_tiled(
    image: np.ndarray,
    fn: TileFn,
    *,
    scale: int,
    tile: int,
    overlap: int,
    context: int = 0,
    multiple: int = 1,
    blend: str = "cosine",
    batch: int = 1,
    order: Sequence[int] | None = None,
    on_tile: Callable[[int, int], None] | None = None,
    scratch_dir: str | None = None,
    keyed: bool = False,
) -> np.ndarray:
    """Apply ``fn`` tile by tile and blend: (H, W, C) float32 -> (H*scale, W*scale, C_out) float32.

    ``fn`` maps a batch (N, h, w, C) to (N, h*scale, w*scale, C_out), on any
    device it likes; ``tile`` and ``overlap`` are in output pixels (rounded
    down to multiples of ``scale``); ``multiple`` is the size multiple the
    function needs on its input. ``order`` permutes the tile processing order
    (the result does not depend on it); ``on_tile(done, total)`` reports progress.
    ``keyed=True`` calls ``fn(batch, starts)`` with each window's (y, x) input start, for
    functions whose randomness is keyed to canvas position.
    """
    h, w, _ = image.shape
    grid = output_grid(h, w, scale, tile, overlap)
    tiles = grid.tiles
    if len(tiles) == 1:  # one tile is the whole image: no window, no blending
        batch1 = _pad_to_multiple(image[None], multiple)
        out = (fn(batch1, [(0, 0)]) if keyed else fn(batch1))[0, :h * scale, :w * scale]
        if on_tile is not None:
            on_tile(1, 1)
        return np.ascontiguousarray(out, dtype=np.float32)
    todo = [tiles[i] for i in order] if order is not None else list(tiles)
    canvas: Canvas | None = None
    done = 0
    for group in _batches(todo, max(1, batch)):
        wins = [(window(t.y, t.h, scale, context, h), window(t.x, t.w, scale, context, w)) for t in group]
        crops = np.stack([image[y0:y0 + yh, x0:x0 + xw] for (y0, yh, _), (x0, xw, _) in wins])
        padded = _pad_to_multiple(crops, multiple)
        out = fn(padded, [(y0, x0) for (y0, _, _), (x0, _, _) in wins]) if keyed else fn(padded)
        if canvas is None:
            canvas = Canvas(h * scale, w * scale, out.shape[-1], scratch_dir)
        for t, ((_, _, oy), (_, _, ox)), o in zip(group, wins, out):
            canvas.add(t.y, t.x, o[oy:oy + t.h, ox:ox + t.w], tile_weights(grid, t, blend))
        done += len(group)
        if on_tile is not None:
            on_tile(done, len(tiles))
    assert canvas is not None
    return canvas.result()
