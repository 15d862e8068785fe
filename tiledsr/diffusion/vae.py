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
decoder normalises each tile with statistics of the whole image, estimated by
one full pass over the input downscaled (area) to the size of one tile window,
and exact when the input fits in one window. With ``shared_norm=False`` each
tile uses its own statistics and tiles may differ in tone.

Attention: the mid-block self-attention attends over all positions in an
untiled run; per tile it only sees its window. Every tiled VAE shares this
approximation; it is why tiled and untiled outputs are close, not equal.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..tiling import BLENDS, Canvas, Tile, TileGrid, make_grid, tile_weights, window
from .groupnorm import frozen_group_norms, record_group_norm_stats

__all__ = ["DECODE_CONTEXT", "ENCODE_CONTEXT", "scale_factor", "tiled_decode", "tiled_encode"]

Progress = Callable[[int, int], None]
TileFn = Callable[[torch.Tensor], torch.Tensor]

# Context around each tile, in latent pixels. Measured (tests/benchmarks/bench_vae.py): beyond these
# margins the tiled/untiled difference is dominated by the attention's locality, not by convolutions.
DECODE_CONTEXT = 8  # = 64 output pixels for f = 8
ENCODE_CONTEXT = 4  # = 32 input pixels for f = 8


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


def _shrink(x: torch.Tensor, area: int, f_in: int) -> torch.Tensor:
    """``x`` (1, C, h*f_in, w*f_in) area-downscaled to at most ``area`` latent pixels (multiples of f_in)."""
    h, w = -(-x.shape[-2] // f_in), -(-x.shape[-1] // f_in)
    if h * w <= area:
        return _crop(x, 0, h * f_in, 0, w * f_in)
    s = math.sqrt(area / (h * w))
    size = (max(1, int(h * s)) * f_in, max(1, int(w * s)) * f_in)
    return F.interpolate(x, size=size, mode="area")


def _run_tiles(src: torch.Tensor, fn: TileFn, grid: TileGrid, f_in: int, f_out: int, context: int,
               blend: str, progress: Progress | None) -> torch.Tensor:
    """Blend ``fn`` over the windows of a latent ``grid`` -> (1, C_out, H*f_out, W*f_out) float32 CPU.

    ``src`` is indexed in latent units times ``f_in``; ``fn`` maps a window
    (1, C, wh*f_in, ww*f_in) to (1, C_out, wh*f_out, ww*f_out).
    """
    h, w = grid.height, grid.width
    out_grid = _scaled(grid, f_out)
    canvas: Canvas | None = None
    for done, t in enumerate(grid.tiles, 1):
        y0, yh, oy = window(t.y, t.h, 1, context, h)
        x0, xw, ox = window(t.x, t.w, 1, context, w)
        out = fn(_crop(src, y0 * f_in, (y0 + yh) * f_in, x0 * f_in, (x0 + xw) * f_in))
        core = out[0, :, oy * f_out:(oy + t.h) * f_out, ox * f_out:(ox + t.w) * f_out]
        if canvas is None:
            canvas = Canvas(h * f_out, w * f_out, out.shape[1])
        big = Tile(t.index, t.y * f_out, t.x * f_out, t.h * f_out, t.w * f_out)
        values = core.permute(1, 2, 0).float().cpu().numpy()
        canvas.add(big.y, big.x, values, tile_weights(out_grid, big, blend))
        if progress is not None:
            progress(done, len(grid))
    assert canvas is not None
    result = torch.from_numpy(canvas.result())
    del canvas
    return result.permute(2, 0, 1).unsqueeze(0).contiguous()


def _tiled(module: torch.nn.Module, fn: TileFn, src: torch.Tensor, grid: TileGrid, f_in: int, f_out: int,
           context: int, blend: str, shared_norm: bool, progress: Progress | None) -> torch.Tensor:
    """Run ``fn`` over ``grid`` with ``module``'s GroupNorms shared across tiles (or not)."""
    # 1. One tile: the plain, untiled run (exact)
    if len(grid) == 1:
        out = fn(_crop(src, 0, grid.height * f_in, 0, grid.width * f_in))
        if progress is not None:
            progress(1, 1)
        return out[:, :, :grid.height * f_out, :grid.width * f_out].float()
    if not shared_norm:
        return _run_tiles(src, fn, grid, f_in, f_out, context, blend, progress)
    # 2. Statistics from one pass over the input shrunk to the area of one tile window
    wh = window(0, grid.tile_h, 1, context, grid.height)[1]
    ww = window(0, grid.tile_w, 1, context, grid.width)[1]
    with record_group_norm_stats(module) as stats:
        fn(_shrink(src, wh * ww, f_in))
    # 3. The tiles, every GroupNorm using those statistics
    with frozen_group_norms(module, stats):
        return _run_tiles(src, fn, grid, f_in, f_out, context, blend, progress)


@torch.no_grad()
def tiled_decode(vae, latents: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 shared_norm: bool = True, context: int = DECODE_CONTEXT,
                 progress: Progress | None = None) -> torch.Tensor:
    """Decode latents tile by tile, like ``vae.decode(latents).sample``.

    ``latents``: (1, C, h, w), already divided by ``vae.config.scaling_factor``,
    on any device (windows are moved to the VAE's). ``tile``/``overlap``: output
    pixels, rounded down to multiples of f. ``context``: latent pixels around
    each tile. ``progress(done, total)`` is called after every tile.
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
    rounded down to multiples of f; ``context``: latent pixels (x f input pixels).
    Deterministic (the mode, not a sample); ``vae.config.shift_factor`` is not applied.
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
