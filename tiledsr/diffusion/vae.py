"""Tiled VAE decode and encode for diffusers' ``AutoencoderKL``.

Tiles are laid out on the latent grid (``f`` = the VAE's scale factor, 8 for
SD): ``tile`` and ``overlap`` are given in image pixels and rounded down to
multiples of ``f``. Each tile is computed from a window with ``context``
latent pixels of extra context on every side where the image has it (cropped
away afterwards; windows are shifted inwards at the border, never padded), and
the tiles are blended with feathered integer weights into a
:class:`~tiledsr.tiling.Canvas`, so the result does not depend on tile order.

Memory is bounded by the tile window: activations only ever exist for one
window; the output canvas (float64 accumulator on the CPU, 8 bytes per value
plus a weight map) is the only full-size buffer.

GroupNorm statistics (``shared_norm=True``): every GroupNorm of the encoder or
decoder normalises each tile with the exact statistics of the whole image,
found by one sweep over the tiles per GroupNorm (:mod:`.groupnorm`; about 11x
the decoder's work, 14x the encoder's, for the SD VAE). With
``shared_norm=False`` each tile uses its own statistics (one pass) and tiles
shift in tone.

Attention: the mid-block self-attention attends over all positions in an
untiled run; per tile it only sees its window. Every tiled VAE shares this
approximation; it is why tiled and untiled outputs are close, not equal.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..tiling import BLENDS, Canvas, Tile, TileGrid, make_grid, tile_weights, window
from .groupnorm import Region, count_group_norms, frozen_group_norms, sweep_stats

__all__ = ["DECODE_CONTEXT", "ENCODE_CONTEXT", "scale_factor", "tiled_decode", "tiled_encode"]

Progress = Callable[[int, int], None]
TileFn = Callable[[torch.Tensor], torch.Tensor]

# Context around each tile, in latent pixels (x f image pixels). Measured on random-weight VAEs (tiny and
# SD-size, GroupNorm frozen, attention off) as the gradient of one latent pixel's output with respect to
# the input: beyond 8 latent pixels lies 0.2% of it for the decoder, 0.2-0.7% for the encoder.
DECODE_CONTEXT = 8  # = 64 output pixels for f = 8
ENCODE_CONTEXT = 8  # = 64 input pixels for f = 8


def scale_factor(vae) -> int:
    """Spatial scale factor of an AutoencoderKL: 2 ** (number of blocks - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _check(x, channels: int, name: str, tile: int, overlap: int, blend: str, f: int) -> None:
    """Raise InputError for a tensor or tiling argument the tiled VAE cannot take."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] != 1 or x.shape[1] != channels:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{name} must be a tensor (1, {channels}, H, W), got {got}")
    if tile < f or overlap < 0:
        raise InputError(f"tile must be >= {f} pixels and overlap >= 0, got tile {tile}, overlap {overlap}")
    if blend not in BLENDS:
        raise InputError(f"blend must be one of {BLENDS}, got {blend!r}")


def _latent_grid(h: int, w: int, tile: int, overlap: int, f: int) -> TileGrid:
    """Grid over the (h, w) latent for tile/overlap in image pixels (rounded down to multiples of f)."""
    t = max(1, tile // f)
    return make_grid(h, w, t, min(overlap // f, t - 1))


def _scaled(grid: TileGrid, s: int) -> TileGrid:
    """The same grid in units ``s`` times finer."""
    return TileGrid(grid.height * s, grid.width * s, grid.tile_h * s, grid.tile_w * s, grid.overlap * s,
                    tuple(y * s for y in grid.ys), tuple(x * s for x in grid.xs))


def _crop(src: torch.Tensor, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """src[..., y0:y1, x0:x1], padded on the bottom/right (reflect, else replicate) where it runs past."""
    h, w = src.shape[-2:]
    out = src[:, :, y0:min(y1, h), x0:min(x1, w)]
    ph, pw = y1 - min(y1, h), x1 - min(x1, w)
    if ph or pw:
        mode = "reflect" if ph < out.shape[-2] and pw < out.shape[-1] else "replicate"
        out = F.pad(out, (0, pw, 0, ph), mode=mode)
    return out


def _owned(starts: tuple[int, ...], size: int, length: int) -> list[tuple[int, int]]:
    """Per tile along one axis, the span it owns: overlaps are split in the middle, so spans partition the axis."""
    cuts = [0] + [(a + size + b) // 2 for a, b in zip(starts, starts[1:])] + [length]
    return list(zip(cuts, cuts[1:]))


def _windows(grid: TileGrid, context: int) -> Iterator[tuple[Tile, tuple[int, int, int], tuple[int, int, int], Region]]:
    """Per tile: its row and column windows ``(start, size, offset)`` and its core :data:`Region`."""
    rows = dict(zip(grid.ys, _owned(grid.ys, grid.tile_h, grid.height)))
    cols = dict(zip(grid.xs, _owned(grid.xs, grid.tile_w, grid.width)))
    for t in grid.tiles:
        wy, wx = window(t.y, t.h, 1, context, grid.height), window(t.x, t.w, 1, context, grid.width)
        (a0, a1), (b0, b1) = rows[t.y], cols[t.x]
        yield t, wy, wx, ((wy[1], wx[1]), (a0 - wy[0], a1 - wy[0], b0 - wx[0], b1 - wx[0]))


def _blend(src: torch.Tensor, fn: TileFn, grid: TileGrid, f_in: int, f_out: int, context: int, blend: str,
           tick: Callable[[], None]) -> torch.Tensor:
    """Blend ``fn`` over the windows of a latent ``grid`` -> (1, C_out, H*f_out, W*f_out) float32 CPU.

    ``src`` is indexed in latent units times ``f_in``; ``fn`` maps a window
    (1, C, wh*f_in, ww*f_in) to (1, C_out, wh*f_out, ww*f_out).
    """
    out_grid = _scaled(grid, f_out)
    canvas: Canvas | None = None
    for t, (y0, yh, oy), (x0, xw, ox), _ in _windows(grid, context):
        out = fn(_crop(src, y0 * f_in, (y0 + yh) * f_in, x0 * f_in, (x0 + xw) * f_in))
        core = out[0, :, oy * f_out:(oy + t.h) * f_out, ox * f_out:(ox + t.w) * f_out]
        if canvas is None:
            canvas = Canvas(grid.height * f_out, grid.width * f_out, out.shape[1])
        big = Tile(t.index, t.y * f_out, t.x * f_out, t.h * f_out, t.w * f_out)
        canvas.add(big.y, big.x, core.permute(1, 2, 0).float().cpu().numpy(), tile_weights(out_grid, big, blend))
        tick()
    assert canvas is not None
    result = torch.from_numpy(canvas.result())
    del canvas
    return result.permute(2, 0, 1).unsqueeze(0).contiguous()


def _tiled(module: torch.nn.Module, fn: TileFn, src: torch.Tensor, grid: TileGrid, f_in: int, f_out: int,
           context: int, blend: str, shared_norm: bool, progress: Progress | None) -> torch.Tensor:
    """Run ``fn`` over ``grid``, ``module``'s GroupNorms sharing whole-image statistics (or not)."""
    # 1. One tile: the plain, untiled run (exact)
    if len(grid) == 1:
        out = fn(_crop(src, 0, grid.height * f_in, 0, grid.width * f_in))
        if progress is not None:
            progress(1, 1)
        return out[:, :, :grid.height * f_out, :grid.width * f_out].float()
    runs = len(grid) * (count_group_norms(module) + 1 if shared_norm else 1)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, runs), runs)

    if not shared_norm:
        return _blend(src, fn, grid, f_in, f_out, context, blend, tick)

    # 2. Exact whole-image statistics, one sweep over the tiles per GroupNorm
    def tiles():
        for _, (y0, yh, _), (x0, xw, _), region in _windows(grid, context):
            crop = _crop(src, y0 * f_in, (y0 + yh) * f_in, x0 * f_in, (x0 + xw) * f_in)
            yield (lambda c=crop: fn(c)), region

    stats = sweep_stats(module, tiles, tick)
    # 3. The tiles, every GroupNorm frozen to those statistics
    with frozen_group_norms(module, stats):
        out = _blend(src, fn, grid, f_in, f_out, context, blend, tick)
    if progress is not None and done < runs:
        progress(runs, runs)
    return out


@torch.no_grad()
def tiled_decode(vae, latents: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 shared_norm: bool = True, context: int = DECODE_CONTEXT,
                 progress: Progress | None = None) -> torch.Tensor:
    """Decode latents tile by tile, like ``vae.decode(latents).sample``.

    ``latents``: (1, C, h, w), already divided by ``vae.config.scaling_factor``,
    on any device (windows are moved to the VAE's). ``tile``/``overlap``: output
    pixels, rounded down to multiples of f. ``context``: latent pixels around
    each tile. ``progress(done, total)`` is called after every tile run; with
    ``shared_norm`` the statistics sweeps count, total = tiles x (GroupNorms + 1).
    Returns (1, 3, h*f, w*f) float32 on the CPU, about [-1, 1], not clamped.
    """
    # 1. Check inputs
    f = scale_factor(vae)
    _check(latents, vae.config.latent_channels, "latents", tile, overlap, blend, f)
    grid = _latent_grid(latents.shape[2], latents.shape[3], tile, overlap, f)

    # 2. Per-window decode
    def fn(z: torch.Tensor) -> torch.Tensor:
        z = z.to(vae.device, vae.dtype)
        if vae.post_quant_conv is not None:
            z = vae.post_quant_conv(z)
        return vae.decoder(z).float().cpu()

    # 3. Tiles, blended on a CPU canvas
    return _tiled(vae.decoder, fn, latents, grid, 1, f, context, blend, shared_norm, progress)


@torch.no_grad()
def tiled_encode(vae, pixels: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 shared_norm: bool = True, context: int = ENCODE_CONTEXT,
                 progress: Progress | None = None) -> torch.Tensor:
    """Encode pixels tile by tile, like ``vae.encode(pixels).latent_dist.mode() * scaling_factor``.

    ``pixels``: (1, 3, H, W) in [-1, 1], CPU or device (windows are moved to the
    VAE's). H and W that are not multiples of f are padded on the bottom/right
    (reflect) to the next multiple: the latents then cover the padded image, so
    crop the decoded image back to H x W. ``tile``/``overlap``: input pixels,
    rounded down to multiples of f; ``context``: latent pixels (x f input pixels);
    ``progress`` as for :func:`tiled_decode`. Deterministic (the mode, not a
    sample); ``vae.config.shift_factor`` is not applied.
    Returns (1, C, ceil(H/f), ceil(W/f)) float32 on the VAE's device.
    """
    # 1. Check inputs
    f = scale_factor(vae)
    _check(pixels, vae.config.in_channels, "pixels", tile, overlap, blend, f)
    grid = _latent_grid(-(-pixels.shape[2] // f), -(-pixels.shape[3] // f), tile, overlap, f)
    sf = vae.config.scaling_factor
    c = vae.config.latent_channels

    # 2. Per-window encode: the mode of the latent distribution is its mean, the first C moments
    def fn(x: torch.Tensor) -> torch.Tensor:
        moments = vae.encoder(x.to(vae.device, vae.dtype))
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return (moments[:, :c].float() * sf).cpu()

    # 3. Tiles, blended on a CPU canvas
    return _tiled(vae.encoder, fn, pixels, grid, f, 1, context, blend, shared_norm, progress).to(vae.device)
