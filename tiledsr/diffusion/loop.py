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
"""
from __future__ import annotations

import inspect
from typing import Callable, Iterable, Sequence

import torch

from ..errors import InputError
from ..tiling import BLENDS, Tile, TileGrid, tile_weights
from ..tiling.grid import axis_starts

__all__ = ["Blender", "Progress", "TilePredict", "denoise", "guide", "latent_grid", "step_kwargs",
           "unet_multiple"]

TilePredict = Callable[[torch.Tensor, Sequence[Tile], torch.Tensor, int], torch.Tensor]
"""``predict(x, tiles, t, i) -> out``: noisy latent crops x (N, C, h, w) of ``tiles`` at timestep ``t``
(step ``i`` of the run, from 0) to the quantity the scheduler steps on, (N, C, h, w), same device."""

Progress = Callable[[int, int, int, int], None]
"""``progress(step, steps, tile, tiles)``: ``step`` in 1..steps, ``tile`` finished tiles of that step."""


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
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _processing_order(tiles: Sequence[Tile], order: Sequence[int] | None) -> list[Tile]:
    if order is None:
        return list(tiles)
    if sorted(order) != list(range(len(tiles))):
        raise InputError(f"order must be a permutation of range({len(tiles)}), got {list(order)}")
    return [tiles[i] for i in order]


def predict_canvas(latents: torch.Tensor, t: torch.Tensor, predict: TilePredict, grid: TileGrid,
                   blender: Blender | None, *, batch: int, order: Sequence[int] | None,
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
            blend: str, batch: int, order: Sequence[int] | None = None, step_kwargs: dict | None = None,
            progress: Progress | None = None, regrid: Callable[[int], TileGrid] | None = None,
            checkpoint=None, generator: torch.Generator | None = None,
            on_backoff: Callable[[str], None] | None = None) -> torch.Tensor:
    """Run ``timesteps`` of ``scheduler`` on the canvas ``latents`` (1, C, H, W) -> denoised latents, same shape.

    ``scheduler`` must already hold its timesteps (``set_timesteps``, and
    ``set_begin_index`` for img2img); it is stepped once per timestep on the
    whole canvas. ``order`` permutes the tile processing order (the result
    does not depend on it); ``progress`` is called after every tile batch and
    may raise to cancel.

    Out of memory in ``predict``: the step is redone with half the batch, then (given
    ``regrid(tile) -> grid``) with half the tile; ``on_backoff(message)`` says so.
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
    blender = None if len(grid) == 1 else Blender(grid, blend, latents.device)
    i = first
    while i < steps:
        t = timesteps[i]

        def report(done: int, i: int = i) -> None:
            if progress is not None:
                progress(i + 1, steps, done, len(grid))

        try:
            out = predict_canvas(latents, t, predict, grid, blender, batch=batch, order=order, on_batch=report,
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
                blender = None if len(grid) == 1 else Blender(grid, blend, latents.device)
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


def _multiple_of(grid: TileGrid) -> int:
    """The largest power of two (up to 64) dividing every tile side and start of ``grid``."""
    m = 64
    while m > 1 and any(v % m for v in (grid.tile_h, grid.tile_w, *grid.ys, *grid.xs)):
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
