"""The tiled denoising core: MultiDiffusion-style fusion of tile predictions, one scheduler per canvas.

At every step the model runs on overlapping latent tiles (in batches); each
tile's prediction (whatever quantity ``scheduler.step`` consumes: the guided
noise prediction for SD, the guided denoised sample for the x2 upscaler) is
blended into one full-canvas tensor with feathered weights, and ONE
``scheduler.step`` advances the whole canvas (Bar-Tal et al. 2023,
"MultiDiffusion": the fused update is the per-pixel weighted average of the
per-tile updates; Jiménez 2023, "Mixture of Diffusers", for gaussian
weights). Since ``scheduler.step`` is affine in the model output for the
deterministic samplers, blending the output equals blending per-tile
updates, and multistep schedulers keep a single, consistent history.

Predictions are kept per tile and summed in tile-index order, so the fusion
does not depend on the processing order or the batch size. (The model itself
may not be batch-invariant: CPU and GPU kernels can round differently for
different batch shapes, by about 1e-6.) With one tile there is no
blending at all, so the math is exactly the diffusers pipeline's.

Shifted fusion (``fusion="shifted"``, after Frolov et al. 2024, "SpotDiffusion"): the
tiles do not overlap, but at every step the grid's lines move by an offset (dy, dx) drawn
from the run's seed and the step index alone (:class:`Shift`), so a tile border never
stays in one place and its seam is averaged away over the steps. Nothing wraps around the
canvas: the grid is clipped to it, and the tiles at its ends are pushed inwards (they overlap
their neighbour there and are blended with the feathered weights), so every tile keeps the
requested size and can be batched; the price is up to one more row and column of tiles than
abutting tiles would need (:func:`shifted_redundancy`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, Union

import torch

from ..errors import InputError
from ..tiling import BLENDS, Tile, TileGrid, tile_weights
from ..tiling.grid import axis_starts

__all__ = ["FUSIONS", "Blender", "Order", "Progress", "Shift", "TilePredict", "denoise", "fused_grid", "guide",
           "latent_grid", "shifted_grid", "shifted_redundancy", "step_kwargs", "unet_multiple"]

FUSIONS = ("overlap", "shifted")

TilePredict = Callable[[torch.Tensor, Sequence[Tile], torch.Tensor, int], torch.Tensor]
"""``predict(x, tiles, t, i) -> out``: noisy latent crops x (N, C, h, w) of ``tiles`` at timestep ``t``
(step ``i`` of the run, from 0) to the quantity the scheduler steps on, (N, C, h, w), same device."""

Progress = Callable[[int, int, int, int], None]
"""``progress(step, steps, tile, tiles)``: ``step`` in 1..steps, ``tile`` finished tiles of that step."""

Order = Union[Sequence[int], Callable[[int], Sequence[int]]]
"""Tile processing order: a permutation of the grid's tile indices, or ``order(n) -> permutation of
range(n)`` for grids whose tile count changes from step to step (shifted fusion)."""


def unet_multiple(unet) -> int:
    """Size multiple a UNet needs on its input: 2 ** (number of down blocks - 1)."""
    return 2 ** (len(unet.config.down_block_types) - 1)


def latent_grid(height: int, width: int, tile: int, overlap: int, multiple: int) -> TileGrid:
    """Grid of equal tiles over a ``height`` x ``width`` latent canvas, every tile side a multiple of ``multiple``.

    ``tile`` is rounded down to a multiple, at least ``2 * multiple`` (the
    UNet's deepest level needs 2x2: K-UNet padding and GroupNorm fail at 1x1),
    and ``overlap`` is clamped to ``tile - multiple``. An axis no longer than
    the tile is one tile if its length is a multiple; otherwise it gets the
    largest multiple that fits, twice or more, overlapping (no padding: every
    tile is real canvas; see :func:`~tiledsr.tiling.grid.axis_starts`). A side
    shorter than ``2 * multiple`` is an :class:`InputError`.
    """
    m = max(1, multiple)
    if height < 2 * m or width < 2 * m:
        raise InputError(f"latent canvas must be at least {2 * m}x{2 * m} for this UNet, got {height}x{width}")
    if tile < 1 or overlap < 0:
        raise InputError(f"tile must be positive and overlap >= 0, got tile {tile}, overlap {overlap}")
    tile = max(2 * m, tile - tile % m)
    overlap = min(overlap, tile - m)
    th, ys = axis_starts(height, tile, overlap, m)
    tw, xs = axis_starts(width, tile, overlap, m)
    return TileGrid(height, width, th, tw, overlap, ys, xs)


def _shifted_side(length: int, tile: int, m: int) -> int:
    """Tile side along an axis of ``length`` for shifted fusion: ``tile`` (a multiple of ``m``, >= 2m)
    when the axis is longer, else what :func:`~tiledsr.tiling.grid.axis_starts` gives (the whole
    axis when it is a multiple, else the largest multiple that fits)."""
    return tile if length > tile else axis_starts(length, tile, 0, m)[0]


def _shifted_starts(length: int, side: int, offset: int) -> tuple[int, ...]:
    """Starts of ``side``-long tiles that abut, their lines at ``offset + k * side``, clipped to [0, length)
    (the tile cut by either end of the axis is pushed inside it; used where no offset can move the grid)."""
    if side >= length:
        return (0,)
    d = offset % side
    raw = range(d - side if d else 0, length, side)
    return tuple(sorted({min(max(0, s), length - side) for s in raw}))


def _cuts(length: int, side: int, offset: int, m: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(starts, sizes) of the tiles along one axis of shifted fusion: the axis cut at ``offset + k * side``.

    The pieces at either end shorter than half a tile (or than ``2 * m``) join their neighbour, so
    every tile is at least that and less than :func:`largest_side` (1.5 ``side``), there are as many
    tiles as on the grid that does not move, and the pieces partition the axis: the tiles compute
    each pixel once. Sizes are multiples of ``m``; on an axis whose length is not, the
    last tile is rounded up to one and starts a little earlier, overlapping its neighbour by less than
    ``m``. An axis no longer than ``side`` plus ``m`` (no room to move) keeps :func:`_shifted_starts`.
    """
    if length - side < m:
        starts = _shifted_starts(length, side, 0)
        return starts, (min(side, length),) * len(starts)
    d = offset % side
    cuts = sorted({0, length, *(c for c in range(d, length, side) if c > 0)})
    pieces = [list(p) for p in zip(cuts, cuts[1:])]
    least = max(side / 2, 2 * m)
    if len(pieces) > 1 and pieces[0][1] - pieces[0][0] < least:
        first = pieces.pop(0)
        pieces[0][0] = first[0]
    if len(pieces) > 1 and pieces[-1][1] - pieces[-1][0] < least:
        last = pieces.pop()
        pieces[-1][1] = last[1]
    out = [(a, b) for a, b in pieces]
    a, b = out[-1]
    up = -(-(b - a) // m) * m
    if up > b:  # one piece, the whole axis, not a multiple: tiles of the largest multiple, overlapping
        side, starts = axis_starts(length, side, 0, m)
        return starts, (side,) * len(starts)
    out[-1] = (b - up, b)
    return tuple(a for a, _ in out), tuple(b - a for a, b in out)


def largest_side(side: int, m: int) -> int:
    """A bound on the tile sides shifted fusion runs for a nominal ``side`` (multiples of ``m``): an end
    piece shorter than half a tile joins a whole one, and a last piece is rounded up to a multiple."""
    return side + int(-(-max(side / 2, 2 * m) // m)) * m


def shifted_grid(height: int, width: int, tile: int, multiple: int, offset: tuple[int, int] = (0, 0)) -> TileGrid:
    """Grid of shifted fusion over a ``height`` x ``width`` canvas: non-overlapping tiles of (at most)
    ``tile``, the canvas cut at ``offset + k * tile`` (dy, dx) (multiples of ``multiple``).

    ``tile`` is rounded down to a multiple, at least ``2 * multiple``, as in :func:`latent_grid`. The
    tiles partition the canvas (see :func:`_cuts`: short end pieces join their neighbour, nothing
    wraps around), so a step computes each pixel once whatever the offset; their sizes vary (up to
    :func:`largest_side`), in
    ``grid.hs``/``grid.ws``, and ``grid.tile_h``/``tile_w`` are the nominal sides. An axis no longer
    than the tile is one tile if its length is a multiple, else tiles of the largest multiple that
    fits, overlapping. ``grid.overlap`` is 0.
    """
    m = max(1, multiple)
    if height < 2 * m or width < 2 * m:
        raise InputError(f"latent canvas must be at least {2 * m}x{2 * m} for this UNet, got {height}x{width}")
    if tile < 1:
        raise InputError(f"tile must be positive, got {tile}")
    tile = max(2 * m, tile - tile % m)
    th, tw = _shifted_side(height, tile, m), _shifted_side(width, tile, m)
    (ys, hs), (xs, ws) = _cuts(height, th, offset[0], m), _cuts(width, tw, offset[1], m)
    return TileGrid(height, width, th, tw, 0, ys, xs, hs, ws)


def shifted_redundancy(height: int, width: int, tile: int, multiple: int) -> float:
    """Mean over the offsets :class:`Shift` draws of pixels computed over canvas pixels (>= 1.0)."""
    base = shifted_grid(height, width, tile, multiple)
    m = max(1, multiple)

    def mean_cover(length: int, side: int) -> float:
        offsets = range(0, side, m) if length - side >= m else [0]
        return sum(sum(_cuts(length, side, d, m)[1]) for d in offsets) / (len(offsets) * length)

    return mean_cover(height, base.tile_h) * mean_cover(width, base.tile_w)


_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit hash of integers (SplitMix64's finaliser chained over them): same value everywhere."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (int(v) & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 31
        x = (x + 0x9E3779B97F4A7C15) & _MASK
    return x


@dataclass(frozen=True)
class Shift:
    """The schedule of shifted fusion: at step ``i`` the grid's lines move by :meth:`offset`.

    ``seed``: the run's seed; ``multiple``: the UNet's size multiple (offsets are multiples of
    it). The offset of step ``i`` is a pure function of (``seed``, ``i``, the tile sides), never of
    state the run consumes (no generator), so a run resumed at any step moves its grid as the
    uninterrupted run did, whatever the tile order or batch.
    """

    seed: int
    multiple: int

    def offset(self, grid: TileGrid, step: int) -> tuple[int, int]:
        """(dy, dx) latent pixels for ``step`` over ``grid`` (from :func:`shifted_grid`): each a multiple of
        ``multiple`` in [0, tile side), uniform; 0 on an axis covered by one tile (or by two
        overlapping ones less than a multiple apart, which no offset would move)."""
        m = max(1, self.multiple)

        def axis(k: int, side: int, length: int) -> int:  # no room to move by a multiple: no shift
            return 0 if length - side < m else m * (_mix(self.seed, step, k) % max(1, side // m))

        return axis(0, grid.tile_h, grid.height), axis(1, grid.tile_w, grid.width)

    def grid(self, grid: TileGrid, step: int) -> TileGrid:
        """The tiles step ``step`` runs on: ``grid``'s tile sides with the lines moved by :meth:`offset`."""
        m = max(1, self.multiple)
        dy, dx = self.offset(grid, step)
        (ys, hs), (xs, ws) = _cuts(grid.height, grid.tile_h, dy, m), _cuts(grid.width, grid.tile_w, dx, m)
        return TileGrid(grid.height, grid.width, grid.tile_h, grid.tile_w, 0, ys, xs, hs, ws)


def fused_grid(height: int, width: int, *, tile: int, overlap: int, multiple: int, fusion: str = "overlap",
               seed: int = 0) -> tuple[TileGrid, Shift | None, Callable[[int], TileGrid]]:
    """(grid, shift, regrid) for :func:`denoise` over a latent canvas ``height`` x ``width``.

    ``fusion="overlap"``: :func:`latent_grid` with ``overlap``, no shift. ``"shifted"``:
    :func:`shifted_grid` (``overlap`` unused) moved every step by ``Shift(seed, multiple)``.
    ``regrid(side)``: the same kind of grid with ``side``-long tiles (out-of-memory back-off; the
    overlap scaled with the tile).
    """
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if fusion == "shifted":
        return (shifted_grid(height, width, tile, multiple), Shift(int(seed), multiple),
                lambda side: shifted_grid(height, width, side, multiple))
    return (latent_grid(height, width, tile, overlap, multiple), None,
            lambda side: latent_grid(height, width, side, overlap * side // max(tile, 1), multiple))


def guide(out: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: (2N, ...) as [uncond]*N + [cond]*N -> uncond + guidance * (cond - uncond), (N, ...)."""
    uncond, cond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def step_kwargs(scheduler, generator: torch.Generator | None, eta: float = 0.0) -> dict:
    """Extra ``scheduler.step`` arguments it accepts: ``eta`` (DDIM) and ``generator`` (ancestral samplers)."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {"eta": eta} if "eta" in params else {}
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


class Blender:
    """Feathered fusion of per-tile predictions into a canvas (fixed tile-index order, float32 sums)."""

    def __init__(self, grid: TileGrid, blend: str, device: torch.device):
        if blend not in BLENDS:
            raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
        self.grid = grid
        self.tiles = grid.tiles
        self.weights = [torch.from_numpy(tile_weights(grid, t, blend)).to(device, torch.float32)
                        for t in self.tiles]
        wsum = torch.zeros(grid.height, grid.width, device=device)
        for t, w in zip(self.tiles, self.weights):
            wsum[t.slices] += w
        self.wsum = wsum

    def __call__(self, preds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-tile predictions (1, C, h, w), indexed by tile index -> canvas (1, C, H, W) in their dtype."""
        c = preds[0].shape[1]
        acc = torch.zeros(1, c, self.grid.height, self.grid.width, device=self.wsum.device)
        for t, w, p in zip(self.tiles, self.weights, preds):
            acc[(..., *t.slices)] += p.float() * w
        return (acc / self.wsum).to(preds[0].dtype)


def _batches(items: Sequence[Tile], size: int) -> Iterable[Sequence[Tile]]:
    """Consecutive runs of ``items`` of at most ``size`` tiles, each of one tile shape (they are stacked)."""
    run: list[Tile] = []
    for t in items:
        if run and (len(run) == size or (run[0].h, run[0].w) != (t.h, t.w)):
            yield run
            run = []
        run.append(t)
    if run:
        yield run


def _processing_order(tiles: Sequence[Tile], order: Order | None) -> list[Tile]:
    if order is None:
        return list(tiles)
    if callable(order):
        order = list(order(len(tiles)))
    if sorted(order) != list(range(len(tiles))):
        raise InputError(f"order must be a permutation of range({len(tiles)}), got {list(order)}")
    return [tiles[i] for i in order]


def predict_canvas(latents: torch.Tensor, t: torch.Tensor, predict: TilePredict, grid: TileGrid,
                   blender: Blender | None, *, batch: int, order: Order | None,
                   on_batch: Callable[[int], None], step: int = 0) -> torch.Tensor:
    """Model prediction over the whole canvas (1, C, H, W) at step ``step``: tiles in batches, then blended."""
    tiles = grid.tiles
    preds: list[torch.Tensor | None] = [None] * len(tiles)
    done = 0
    from ..faults import maybe_fail_oom

    for group in _batches(_processing_order(tiles, order), max(1, batch)):
        x = torch.cat([latents[(..., *tile.slices)] for tile in group])
        maybe_fail_oom("torch", str(x.device))
        out = predict(x, group, t, step)
        for tile, o in zip(group, out):
            preds[tile.index] = o[None]
        done += len(group)
        on_batch(done)
    return preds[0] if blender is None else blender(preds)


def denoise(latents: torch.Tensor, scheduler, timesteps: torch.Tensor, predict: TilePredict, grid: TileGrid, *,
            blend: str, batch: int, order: Order | None = None, step_kwargs: dict | None = None,
            progress: Progress | None = None, regrid: Callable[[int], TileGrid] | None = None,
            checkpoint=None, generator: torch.Generator | None = None,
            on_backoff: Callable[[str], None] | None = None, shift: Shift | None = None) -> torch.Tensor:
    """Run ``timesteps`` of ``scheduler`` on the canvas ``latents`` (1, C, H, W) -> denoised latents, same shape.

    ``scheduler`` must already hold its timesteps (``set_timesteps``, and
    ``set_begin_index`` for img2img); it is stepped once per timestep on the
    whole canvas. ``order`` permutes the tile processing order (the result
    does not depend on it); ``progress`` is called after every tile batch and
    may raise to cancel.

    ``shift`` (shifted fusion): step ``i`` runs on ``shift.grid(grid, i)``, ``grid`` being a
    :func:`shifted_grid`; without it every step runs on ``grid`` (overlapped fusion).

    Out of memory in ``predict``: the step is redone with half the batch, then (given
    ``regrid(tile) -> grid``, a grid of the same kind) with half the tile; ``on_backoff(message)`` says so.
    ``checkpoint`` (a :class:`~tiledsr.checkpoint.StepState`) keeps the state after every step
    (canvas, scheduler, ``generator``) and continues from it when it holds one.
    """
    from ..errors import as_out_of_memory

    if blend not in BLENDS:
        raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")
    steps = len(timesteps)
    first = 0
    if checkpoint is not None:
        first, latents = _resumed(checkpoint, steps, latents, scheduler, generator)
    fusion = _Fusion(blend, latents.device)
    i = first
    while i < steps:
        t = timesteps[i]
        tiles = grid if shift is None else shift.grid(grid, i)
        blender = fusion.blender(tiles)

        def report(done: int, i: int = i, n: int = len(tiles)) -> None:
            if progress is not None:
                progress(i + 1, steps, done, n)

        try:
            out = predict_canvas(latents, t, predict, tiles, blender, batch=batch, order=order, on_batch=report,
                                 step=i)
        except (MemoryError, RuntimeError) as exc:
            oom = as_out_of_memory(exc, f"denoising {max(grid.tile_h, grid.tile_w)} px latent tiles",
                                   "even the smallest tile does not fit; free memory")
            if oom is None:
                raise
            side = max(grid.tile_h, grid.tile_w)
            if batch > 1:
                batch //= 2
                message = f"out of memory with a batch of {2 * batch} tiles; going on with {batch}"
            elif regrid is not None and side // 2 >= 2 * _multiple_of(grid) and len(grid) >= 1:
                new = regrid(side // 2)
                if max(new.tile_h, new.tile_w) >= side:
                    raise oom from exc
                grid, order = new, None
                message = f"out of memory with {side} px latent tiles; going on with {max(grid.tile_h, grid.tile_w)}"
            else:
                raise oom from exc
            if on_backoff is not None:
                on_backoff(message)
            continue
        latents = scheduler.step(out, t, latents, **(step_kwargs or {}), return_dict=False)[0]
        i += 1
        if checkpoint is not None:
            checkpoint.save(i, latents, scheduler, generator)
    return latents


class _Fusion:
    """The :class:`Blender` of the grid a step runs on, rebuilt only when the grid changes (None: one tile)."""

    def __init__(self, blend: str, device: torch.device):
        self.blend, self.device = blend, device
        self.grid: TileGrid | None = None
        self.last: Blender | None = None

    def blender(self, grid: TileGrid) -> Blender | None:
        if grid != self.grid:
            self.grid = grid
            self.last = None if len(grid) == 1 else Blender(grid, self.blend, self.device)
        return self.last


def _multiple_of(grid: TileGrid) -> int:
    """The largest power of two (up to 64) dividing every tile side and start of ``grid``."""
    m = 64
    while m > 1 and any(v % m for v in (grid.tile_h, grid.tile_w, *grid.ys, *grid.xs, *grid.row_heights,
                                        *grid.col_widths)):
        m //= 2
    return m


def _resumed(checkpoint, steps: int, latents: torch.Tensor, scheduler, generator):
    """(first step to run, canvas) from ``checkpoint``'s saved state, restoring scheduler and generator."""
    from ..checkpoint import restore_scheduler

    saved = checkpoint.load()
    if saved is None:
        return 0, latents
    done = int(saved["step"])
    if not 0 < done <= steps or tuple(saved["latents"].shape) != tuple(latents.shape):
        return 0, latents
    restore_scheduler(scheduler, saved["scheduler"])
    if generator is not None and "generator" in saved:
        generator.set_state(saved["generator"])
    return done, saved["latents"].to(latents.device, latents.dtype)
