"""Run a per-tile function over an image and blend the results, handing on rows as they are final.

Tiles are laid out in *output* pixels and processed in row-major order, so only one row of
tiles is held (:class:`~tiledsr.tiling.bands.BandCanvas`); the input is read by window from a
store (:mod:`~tiledsr.tiling.store`). Each output tile is computed from an
input window that adds ``context`` input pixels on every side where the image
has them (a tile at the image's border gets no window beyond it, and no more on
its inner side: no compute is spent on context that is not needed). A tile's window
depends on the tile alone, never on the batch: a batch runs as sub-batches of
windows of one shape, so the result is the same whatever the order or batch. Every
output pixel sees exactly what the untiled run would see, up to the context.

An executor (:func:`use_executor`) may compute the tiles elsewhere (Ray workers,
:mod:`tiledsr.distributed`): groups are submitted ahead, a bounded number in flight, and
their results taken in order, so the canvas, the band hand-off and the out-of-memory
back-off are the same as when they are computed here.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np

from ..errors import OutOfMemory, as_out_of_memory
from .bands import BandCanvas
from .blend import tile_weights
from .grid import TileGrid, make_grid
from .store import ArrayStore, collect

__all__ = ["TileExecutor", "output_grid", "run_tiled", "tiled_bands", "use_executor", "window"]

TileFn = Callable[[np.ndarray], np.ndarray]


class TileExecutor(Protocol):
    """Computes groups of tiles somewhere else, for :func:`tiled_bands`.

    ``accepts(fn)``: whether it can run ``fn`` (else the tiles are computed here);
    ``depth``: how many groups to keep in flight; ``submit(fn, batch, starts)`` starts
    ``fn(batch)`` (or ``fn(batch, starts)`` when ``starts`` is not None) and returns a handle
    whose ``result()`` is its (N, h*s, w*s, C_out) float32 output, or raises what ``fn`` raised;
    ``cancel(handle)`` gives up on one (its result is never asked for)."""

    depth: int

    def accepts(self, fn: TileFn) -> bool: ...

    def submit(self, fn: TileFn, batch: np.ndarray, starts: list | None) -> Any: ...

    def cancel(self, handle: Any) -> None: ...


_EXECUTORS: list[TileExecutor] = []  # process-wide: the work often runs in another thread


@contextlib.contextmanager
def use_executor(executor: TileExecutor) -> Iterator[TileExecutor]:
    """Inside the block, :func:`tiled_bands` (in any thread) sends the tiles of every ``fn`` that
    ``executor.accepts`` to it."""
    _EXECUTORS.append(executor)
    try:
        yield executor
    finally:
        _EXECUTORS.remove(executor)


def _executor_for(fn: TileFn) -> TileExecutor | None:
    return next((ex for ex in list(_EXECUTORS) if ex.accepts(fn)), None) if _EXECUTORS else None


def window(start_out: int, size_out: int, scale: int, context: int, length_in: int,
           size_in: int | None = None) -> tuple[int, int, int]:
    """Input window for output span ``[start_out, start_out + size_out)``.

    Returns ``(start_in, size_in, offset_out)``: the window's start and size in
    input pixels, and where the wanted output span starts inside the window's
    output. ``start_out`` and ``size_out`` must be multiples of ``scale``. The window
    holds the span and ``context`` input pixels on each side where the image has
    them; ``size_in`` grows it (shifted inwards at the border) for callers that
    want windows of one size.
    """
    first, n = start_out // scale, size_out // scale
    need = n + min(context, first) + min(context, max(0, length_in - first - n))
    size = min(length_in, max(need, size_in or 0))
    start_in = min(max(first - context, 0), length_in - size)
    return start_in, size, start_out - start_in * scale


def windows(tiles, scale: int, context: int, h: int, w: int) -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The (row, column) :func:`window` of each of ``tiles``."""
    return [(window(t.y, t.h, scale, context, h), window(t.x, t.w, scale, context, w)) for t in tiles]


def _by_shape(wins) -> list[list[int]]:
    """Indices of ``wins`` grouped by window shape, in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, ((_, wh, _), (_, ww, _)) in enumerate(wins):
        groups.setdefault((wh, ww), []).append(k)
    return list(groups.values())


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


def run_tiled(image: np.ndarray, fn: TileFn, **kwargs) -> np.ndarray:
    """Apply ``fn`` tile by tile and blend: (H, W, C) float32 -> (H*scale, W*scale, C_out) float32.

    The whole-array form of :func:`tiled_bands` (same keywords).
    """
    kwargs.pop("scratch_dir", None)
    return collect(tiled_bands(ArrayStore(image), fn, **kwargs))


def tiled_bands(
    src,
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
    keyed: bool = False,
    start: int = 0,
    min_tile: int | None = None,
    on_backoff: Callable[[str], None] | None = None,
) -> Iterator[np.ndarray]:
    """Apply ``fn`` tile by tile to the store ``src`` (H, W, C) and yield the blended output
    (H*scale, W*scale, C_out) as consecutive float32 row bands, each as soon as it is final.

    ``fn`` maps a batch (N, h, w, C) to (N, h*scale, w*scale, C_out), on any
    device it likes; ``tile`` and ``overlap`` are in output pixels (rounded
    down to multiples of ``scale``); ``multiple`` is the size multiple the
    function needs on its input. ``order`` permutes the tile processing order
    (the result does not depend on it; row-major keeps the fewest rows in flight);
    ``on_tile(done, total)`` reports progress. ``keyed=True`` calls ``fn(batch, starts)``
    with each window's (y, x) input start, for functions whose randomness is keyed to canvas
    position. ``start``: output rows before it are not produced (an earlier run handed them on).

    Out of memory in ``fn`` (any backend's form): the batch is halved, then the tile (not
    below ``min_tile``, default ``8 * scale``), and only the rows not yet handed on are
    redone; ``on_backoff(message)`` says so. At the smallest tile it raises OutOfMemory.
    """
    h, w, _ = src.shape
    least = max(scale, min_tile or 8 * scale)
    executor = _executor_for(fn)
    while True:
        grid = output_grid(h, w, scale, tile, overlap)
        if len(grid) == 1 and start == 0:
            try:
                whole = _whole(src, fn, scale, multiple, keyed, on_tile)
            except (MemoryError, RuntimeError, OutOfMemory) as exc:
                new_tile, batch = _smaller(exc, grid, 1, least, on_backoff, "the whole image")
                overlap, tile = overlap * new_tile // max(grid.tile_h, grid.tile_w), new_tile
                continue
            yield whole
            return
        tiles = [grid.tiles[i] for i in order] if order is not None else list(grid.tiles)
        todo = [t for t in tiles if t.y + t.h > start]
        canvas: BandCanvas | None = None
        i, restart = 0, False
        ahead = _Ahead(executor, src, fn, todo, (scale, context, h, w, multiple, keyed)) if executor else None
        while i < len(todo):
            group = todo[i:i + max(1, batch)]
            wins = windows(group, scale, context, h, w)
            try:
                out = _call(src, fn, wins, multiple, keyed) if ahead is None else ahead.take(i, max(1, batch))
            except (MemoryError, RuntimeError, OutOfMemory) as exc:
                if ahead is not None:
                    ahead.drop()  # groups in flight were cut for the old batch or tile (else: all taken)
                new_tile, new_batch = _smaller(exc, grid, batch, least, on_backoff, f"{len(group)} tile(s)")
                if new_batch < batch:
                    batch = new_batch
                    continue
                overlap = overlap * new_tile // max(grid.tile_h, grid.tile_w)
                tile, order, restart = new_tile, None, True
                start = canvas.emitted if canvas is not None else start
                break
            if canvas is None:
                canvas = BandCanvas(grid, out[0].shape[-1], start)
            for t, ((_, _, oy), (_, _, ox)), o in zip(group, wins, out):
                yield from canvas.add(t, o[oy:oy + t.h, ox:ox + t.w], tile_weights(grid, t, blend))
            i += len(group)
            if on_tile is not None:
                on_tile(len(tiles) - len(todo) + i, len(tiles))  # tiles an earlier run finished count
        if not restart:
            return


def _whole(src, fn: TileFn, scale: int, multiple: int, keyed: bool, on_tile) -> np.ndarray:
    """One tile is the whole image: no window, no blending (exactly the untiled result)."""
    h, w, _ = src.shape
    batch1 = _pad_to_multiple(src.read(0, h)[None], multiple)
    out = (fn(batch1, [(0, 0)]) if keyed else fn(batch1))[0, :h * scale, :w * scale]
    if on_tile is not None:
        on_tile(1, 1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _call(src, fn: TileFn, wins, multiple: int, keyed: bool) -> list[np.ndarray]:
    """Each window's output (sub-batches of one window shape), in the order of ``wins``."""
    out: list = [None] * len(wins)
    for part in _by_shape(wins):
        padded, starts = _crops(src, [wins[k] for k in part], multiple, keyed)
        for k, o in zip(part, fn(padded, starts) if keyed else fn(padded)):
            out[k] = o
    return out


def _crops(src, wins, multiple: int, keyed: bool) -> tuple[np.ndarray, list | None]:
    """The windows' batch (padded to ``multiple``) and, when ``keyed``, their (y, x) input starts."""
    crops = np.stack([src.read(y0, y0 + yh, x0, x0 + xw) for (y0, yh, _), (x0, xw, _) in wins])
    starts = [(y0, x0) for (y0, _, _), (x0, _, _) in wins] if keyed else None
    return _pad_to_multiple(crops, multiple), starts


class _Ahead:
    """Groups of ``todo`` submitted to an executor ahead of their turn (``executor.depth`` in
    flight), their results taken in order by the index of their first tile."""

    def __init__(self, executor: TileExecutor, src, fn: TileFn, todo, geometry):
        self.executor, self.src, self.fn, self.todo, self.geometry = executor, src, fn, todo, geometry
        self.pending: dict[int, Any] = {}
        self.next = 0  # first tile not yet submitted

    def take(self, i: int, batch: int) -> list[np.ndarray]:
        """The outputs of the group of ``batch`` tiles from ``todo[i]``, one per tile."""
        if i not in self.pending:
            self.drop()
            self.next = i
        while len(self.pending) < max(1, self.executor.depth) and self.next < len(self.todo):
            self.pending[self.next] = self._submit(self.next, batch)
            self.next += batch
        parts = self.pending.pop(i)
        out: list = [None] * sum(len(part) for part, _ in parts)
        for part, handle in parts:
            for k, o in zip(part, handle.result()):
                out[k] = o
        return out

    def _submit(self, i: int, batch: int) -> list:
        """[(indices in the group, handle)]: one submission per window shape."""
        scale, context, h, w, multiple, keyed = self.geometry
        wins = windows(self.todo[i:i + batch], scale, context, h, w)
        handles = []
        for part in _by_shape(wins):
            batch_in, starts = _crops(self.src, [wins[k] for k in part], multiple, keyed)
            handles.append((part, self.executor.submit(self.fn, batch_in, starts)))
        return handles

    def drop(self) -> None:
        """Give up on every group in flight."""
        for parts in self.pending.values():
            for _, handle in parts:
                self.executor.cancel(handle)
        self.pending.clear()


def _smaller(exc: BaseException, grid: TileGrid, batch: int, least: int, on_backoff, what: str) -> tuple[int, int]:
    """After an allocation failure: (tile, batch) to go on with; OutOfMemory when nothing is smaller."""
    if as_out_of_memory(exc, what) is None:
        raise exc
    side = max(grid.tile_h, grid.tile_w)
    if batch > 1:
        if on_backoff is not None:
            on_backoff(f"out of memory with a batch of {batch} tiles; going on with {batch // 2}")
        return side, batch // 2
    if side <= least:
        first = str(exc).split(";")[0] if isinstance(exc, OutOfMemory) else f"out of memory in {what}"
        raise OutOfMemory(f"{first}, even at the smallest useful tile ({side} output px); free memory or use a "
                          "smaller model") from exc
    smaller = max(least, side // 2)
    if on_backoff is not None:
        on_backoff(f"out of memory with {side} px tiles; going on with {smaller} px tiles")
    return smaller, 1
