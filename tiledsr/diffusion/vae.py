"""Tiled VAE decode and encode for diffusers' ``AutoencoderKL``.

Tiles are laid out on the latent grid (``f`` = the VAE's scale factor, 8 for
SD): ``tile`` and ``overlap`` are given in image pixels and rounded down to
multiples of ``f``. Each tile is computed from a window with ``context``
latent pixels of extra context on every side where the image has it (cropped
away afterwards; none beyond the image's edge, never padded), and
the tiles are blended with feathered integer weights into a
:class:`~tiledsr.tiling.Canvas`, so the result does not depend on tile order.

Device memory is bounded by the tile window: activations only ever exist on
the device for one window; the output canvas (float64 accumulator on the CPU, 8 bytes per value
plus a weight map) is the only full-size buffer.

GroupNorm statistics (``shared_norm=True``): every GroupNorm of the encoder or
decoder normalises each tile with the exact statistics of the whole image.
They are found either in one lockstep pass in which every tile pauses at each
GroupNorm (:mod:`.onepass`: the work of one pass, but the paused tiles'
activations for the whole image wait in host memory), or, when that memory
is not available, by one sweep over the tiles per GroupNorm
(:mod:`.groupnorm`: memory bounded by one tile, about 11x the decoder's work
and 14x the encoder's for the SD VAE). With ``shared_norm=False`` each tile
uses its own statistics (one pass) and tiles shift in tone.

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
from .onepass import Unsupported, one_pass as run_one_pass

__all__ = ["DECODE_CONTEXT", "ENCODE_CONTEXT", "OVERLAP", "auto_context", "context_for", "one_pass_bytes",
           "one_pass_fits", "scale_factor", "tiled_decode", "tiled_encode", "vae_overlap"]

Progress = Callable[[int, int], None]
TileFn = Callable[[torch.Tensor], torch.Tensor]

# Context around each tile, in latent pixels (x f image pixels). Measured on random-weight VAEs (tiny and
# SD-size, GroupNorm frozen, attention off) as the gradient of one latent pixel's output with respect to
# the input: beyond 8 latent pixels lies 0.2% of it for the decoder, 0.2-0.7% for the encoder.
DECODE_CONTEXT = 8  # = 64 output pixels for f = 8
ENCODE_CONTEXT = 8  # = 64 input pixels for f = 8
# With exact GroupNorm statistics and that much context, neighbouring tiles agree (SD-size VAE, attention off:
# 70 dB decode, 0.001 relative RMSE encode; bench_vae.py --contexts), so the tiles need only a short feather:
# the pipeline's VAE overlaps by at most OVERLAP image pixels, whatever the diffusion stage's own overlap.
OVERLAP = 16


def vae_overlap(overlap: int) -> int:
    """The overlap (image pixels) the pipeline's tiled VAE uses for a stage ``overlap``: at most :data:`OVERLAP`."""
    return min(overlap, OVERLAP)


def auto_context(tile: int, most: int = DECODE_CONTEXT) -> int:
    """Latent pixels of context around tiles of (at most) ``tile`` latent pixels: ``most`` (8 for the SD VAE) for tiles
    of 128 latent pixels (1024 px) and more, a sixteenth of smaller ones (at least 2), so the windows hold at most
    about 1.35x the image's area: 4 (47 dB, attention off) at 512 px tiles, 6 at 768 px."""
    return max(2, min(most, tile // 16))


def context_for(context: int | None, tile: int, f: int, most: int = DECODE_CONTEXT) -> int:
    """``context``, or when None the :func:`auto_context` of ``tile`` image pixels (f per latent pixel)."""
    return auto_context(max(1, tile // f), most) if context is None else context


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
        # the tile and ``context`` on each side where the image has it (none beyond its edge)
        wy = window(t.y, t.h, 1, context, grid.height)
        wx = window(t.x, t.w, 1, context, grid.width)
        (a0, a1), (b0, b1) = rows[t.y], cols[t.x]
        yield t, wy, wx, ((wy[1], wx[1]), (a0 - wy[0], a1 - wy[0], b0 - wx[0], b1 - wx[0]))


class _Assembler:
    """Feathered blend of tile outputs (their cores) on a CPU :class:`Canvas`, in any order."""

    def __init__(self, grid: TileGrid, f_out: int, blend: str):
        self.grid, self.f, self.blend = grid, f_out, blend
        self.out_grid = _scaled(grid, f_out)
        self.canvas: Canvas | None = None

    def add(self, win: tuple, out: torch.Tensor) -> None:
        """``out``: the output (1, C, *, *) of a window from :func:`_windows`."""
        t, (_, _, oy), (_, _, ox), _ = win
        f = self.f
        core = out[0, :, oy * f:(oy + t.h) * f, ox * f:(ox + t.w) * f]
        if self.canvas is None:
            self.canvas = Canvas(self.grid.height * f, self.grid.width * f, out.shape[1])
        big = Tile(t.index, t.y * f, t.x * f, t.h * f, t.w * f)
        self.canvas.add(big.y, big.x, core.permute(1, 2, 0).float().cpu().numpy(),
                        tile_weights(self.out_grid, big, self.blend))

    def result(self) -> torch.Tensor:
        """(1, C, H*f_out, W*f_out) float32 on the CPU."""
        assert self.canvas is not None
        result = torch.from_numpy(self.canvas.result())
        self.canvas = None
        return result.permute(2, 0, 1).unsqueeze(0).contiguous()


class _Job:
    """One tiled run: ``post(module(pre(window)))`` over every window of a latent grid.

    ``src`` is indexed in latent units times ``f_in``; a window's output is
    ``f_out`` times its latent size. ``pre`` moves a window to the model's
    device and dtype; ``post`` brings the module's output to float32 on the CPU.
    """

    def __init__(self, module: torch.nn.Module, pre: TileFn, post: TileFn, src: torch.Tensor, grid: TileGrid,
                 f_in: int, f_out: int, context: int):
        self.module, self.pre, self.post, self.src, self.grid = module, pre, post, src, grid
        self.f_in, self.f_out = f_in, f_out
        self.windows = list(_windows(grid, context))

    def crop(self, i: int) -> torch.Tensor:
        _, (y0, yh, _), (x0, xw, _), _ = self.windows[i]
        f = self.f_in
        return _crop(self.src, y0 * f, (y0 + yh) * f, x0 * f, (x0 + xw) * f)

    def run(self, i: int) -> torch.Tensor:
        return self.post(self.module(self.pre(self.crop(i))))

    def state_bytes(self, channels: int) -> int:
        """Host memory of the one-pass mode: see :func:`one_pass_bytes`."""
        areas = sum(yh * xw for _, (_, yh, _), (_, xw, _), _ in self.windows)
        return _state_bytes(areas * max(self.f_in, self.f_out) ** 2, channels,
                            next(self.module.parameters()).element_size())

    def blend(self, blend: str, tick: Callable[[], None], outputs: Iterator[tuple[int, torch.Tensor]]) -> torch.Tensor:
        """Blend ``outputs`` (tile index, post-processed window output) into the canvas."""
        asm = _Assembler(self.grid, self.f_out, blend)
        for i, out in outputs:
            asm.add(self.windows[i], out)
            tick()
        return asm.result()


def _state_bytes(window_pixels: int, channels: int, itemsize: int) -> int:
    """Paused full-resolution tensors of the one-pass mode, up to about 3x ``channels`` per window pixel,
    plus working memory: 4x (measured 2.0 GB for the SD VAE's 512 px decode in 9 windows of 320 px;
    this gives 1.9 GB)."""
    return 4 * window_pixels * channels * itemsize


def one_pass_bytes(height: int, width: int, *, tile: int, overlap: int, f: int = 8, channels: int = 128,
                   context: int | None = None, itemsize: int = 4) -> int:
    """Host bytes a one-pass tiled decode (or encode) of a ``height`` x ``width`` pixel image holds.

    ``channels``: the VAE's first block width (128 for SD's); the other arguments
    as for :func:`tiled_decode`. Needs no model (for planning).
    """
    grid = _latent_grid(-(-height // f), -(-width // f), tile, overlap, f)
    if len(grid) == 1:
        return 0
    context = context_for(context, tile, f)
    areas = sum(yh * xw for _, (_, yh, _), (_, xw, _), _ in _windows(grid, context))
    return _state_bytes(areas * f * f, channels, itemsize)


def one_pass_fits(state_bytes: int) -> bool:
    """True if the one-pass mode's host memory fits in half the memory available now."""
    return state_bytes <= _host_budget()


def _host_budget() -> int:
    """Half the memory the OS reports available (MemAvailable), or 4 GiB if it cannot be read."""
    try:
        with open("/proc/meminfo") as fh:
            kib = next(int(line.split()[1]) for line in fh if line.startswith("MemAvailable:"))
        return kib * 1024 // 2
    except (OSError, StopIteration, ValueError):
        return 4 << 30


def _device_free(module: torch.nn.Module) -> int:
    """Free memory of the CUDA device ``module`` runs on (0 on other devices)."""
    device = next(module.parameters()).device
    if device.type != "cuda":
        return 0
    return torch.cuda.mem_get_info(device)[0]


def _one_pass(job: _Job, blend: str, tick: Callable[[], None], state_bytes: int) -> torch.Tensor:
    """Shared statistics in one lockstep pass over the tiles (see :mod:`.onepass`)."""
    asm = _Assembler(job.grid, job.f_out, blend)

    def finish(i: int, out: torch.Tensor) -> None:
        asm.add(job.windows[i], job.post(out))

    tiles = [((lambda i=i: job.pre(job.crop(i))), w[3]) for i, w in enumerate(job.windows)]
    # paused tensors stay on an accelerator if they fit in half its free memory, else wait on the host
    run_one_pass(job.module, tiles, finish, tick, offload=state_bytes > _device_free(job.module) // 2)
    return asm.result()


def _tiled(job: _Job, blend: str, shared_norm: bool, one_pass_mode: bool | None, channels: int,
           progress: Progress | None) -> torch.Tensor:
    """Run ``job`` over its grid, the module's GroupNorms sharing whole-image statistics (or not)."""
    grid, module = job.grid, job.module
    # 1. One tile: the plain, untiled run (exact)
    if len(grid) == 1:
        out = job.run(0)  # its window is the whole image
        if progress is not None:
            progress(1, 1)
        return out[:, :, :grid.height * job.f_out, :grid.width * job.f_out].float()
    runs = len(grid) * (count_group_norms(module) + 1 if shared_norm else 1)
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(min(done, runs), runs)

    def each_tile():
        return ((i, job.run(i)) for i in range(len(grid)))

    if not shared_norm:
        return job.blend(blend, tick, each_tile())

    # 2. Exact whole-image statistics in one lockstep pass, if its host memory fits
    state = job.state_bytes(channels)
    if one_pass_mode or (one_pass_mode is None and (one_pass_fits(state) or state <= _device_free(module) // 2)):
        try:
            return _one_pass(job, blend, tick, state)
        except Unsupported:
            if one_pass_mode:
                raise
            done = 0

    # 3. Or one sweep over the tiles per GroupNorm (memory bounded by one tile), then the frozen tiles
    stats = sweep_stats(module, lambda: ((lambda i=i: job.module(job.pre(job.crop(i))), w[3])
                                         for i, w in enumerate(job.windows)), tick)
    with frozen_group_norms(module, stats):
        out = job.blend(blend, tick, each_tile())
    if progress is not None and done < runs:
        progress(runs, runs)
    return out


@torch.no_grad()
def tiled_decode(vae, latents: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 shared_norm: bool = True, one_pass: bool | None = None, context: int | None = None,
                 progress: Progress | None = None) -> torch.Tensor:
    """Decode latents tile by tile, like ``vae.decode(latents).sample``.

    ``latents``: (1, C, h, w), already divided by ``vae.config.scaling_factor``,
    on any device (windows are moved to the VAE's). ``tile``/``overlap``: output
    pixels, rounded down to multiples of f. ``context``: latent pixels around
    each tile (None: :func:`auto_context` of the tile). ``progress(done, total)`` is called after every tile run; with
    ``shared_norm`` the statistics sweeps count, total = tiles x (GroupNorms + 1).
    ``one_pass``: find the shared statistics in one lockstep pass (True), by
    sweeps (False), or in one pass when its host memory (about four
    full-resolution activations of every window) fits in half the available memory (None).
    Both give the same result. Returns (1, 3, h*f, w*f) float32 on the CPU,
    about [-1, 1], not clamped.
    """
    # 1. Check inputs
    f = scale_factor(vae)
    _check(latents, vae.config.latent_channels, "latents", tile, overlap, blend, f)
    grid = _latent_grid(latents.shape[2], latents.shape[3], tile, overlap, f)

    # 2. Per-window decode
    def pre(z: torch.Tensor) -> torch.Tensor:
        z = z.to(vae.device, vae.dtype)
        return z if vae.post_quant_conv is None else vae.post_quant_conv(z)

    # 3. Tiles, blended on a CPU canvas
    context = context_for(context, tile, f, DECODE_CONTEXT)
    job = _Job(vae.decoder, pre, lambda out: out.float().cpu(), latents, grid, 1, f, context)
    return _tiled(job, blend, shared_norm, one_pass, vae.config.block_out_channels[0], progress)


@torch.no_grad()
def tiled_encode(vae, pixels: torch.Tensor, *, tile: int, overlap: int, blend: str = "cosine",
                 shared_norm: bool = True, one_pass: bool | None = None, context: int | None = None,
                 progress: Progress | None = None) -> torch.Tensor:
    """Encode pixels tile by tile, like ``vae.encode(pixels).latent_dist.mode() * scaling_factor``.

    ``pixels``: (1, 3, H, W) in [-1, 1], CPU or device (windows are moved to the
    VAE's). H and W that are not multiples of f are padded on the bottom/right
    (reflect) to the next multiple: the latents then cover the padded image, so
    crop the decoded image back to H x W. ``tile``/``overlap``: input pixels,
    rounded down to multiples of f; ``context``: latent pixels (x f input pixels; None: :func:`auto_context`);
    ``one_pass`` and ``progress`` as for :func:`tiled_decode`. Deterministic (the mode, not a
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
    def post(moments: torch.Tensor) -> torch.Tensor:
        if vae.quant_conv is not None:
            moments = vae.quant_conv(moments)
        return (moments[:, :c].float() * sf).cpu()

    # 3. Tiles, blended on a CPU canvas
    context = context_for(context, tile, f, ENCODE_CONTEXT)
    job = _Job(vae.encoder, lambda x: x.to(vae.device, vae.dtype), post, pixels, grid, f, 1, context)
    return _tiled(job, blend, shared_norm, one_pass, vae.config.block_out_channels[0], progress).to(vae.device)
