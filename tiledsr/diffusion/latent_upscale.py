"""Tiled x2 latent upscaling with the Stable Diffusion x2 latent upscaler (sd-x2-latent-upscaler).

Same math as diffusers' ``StableDiffusionLatentUpscalePipeline`` given latents:
the low-res latents, nearest-upsampled 2x and scaled by (noise_level**2 + 1)**-0.5,
are concatenated to the scaled noisy latents; the UNet gets timestep
log(sigma) / 4 and a timestep condition [ones(64), zeros(64), pooled text];
its output is preconditioned Karras-style (denoised = x / (sigma**2 + 1) +
sigma / sqrt(sigma**2 + 1) * F) and guided, and an Euler ("sample"
prediction) scheduler steps the whole canvas. The blended quantity is that
denoised sample.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..tiling import Tile
from .loop import FUSIONS, Order, Progress, denoise, fused_grid, guide, step_kwargs, unet_multiple
from .noise import draw_noise, seeded_generator
from .text import PromptEmbeds

__all__ = ["pad_latents", "upscale_latents"]


def _check(unet, scheduler, latents: torch.Tensor, embeds: PromptEmbeds, steps: int, guidance: float,
           noise_level: float, fusion: str = "overlap") -> None:
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if latents.ndim != 4 or latents.shape[0] != 1:
        raise InputError(f"latents must be (1, C, h, w), got {tuple(latents.shape)}")
    if 2 * latents.shape[1] != unet.config.in_channels:
        raise InputError(f"the UNet takes {unet.config.in_channels} channels = 2 x latent channels, "
                         f"got latents with {latents.shape[1]}")
    if not hasattr(scheduler, "sigmas"):
        raise InputError(f"the latent upscaler needs a sigma (Karras/Euler) scheduler, got {type(scheduler).__name__}")
    if steps < 1 or noise_level < 0:
        raise InputError(f"steps must be >= 1 and noise_level >= 0, got {steps} and {noise_level}")
    if embeds.pooled is None or (guidance > 1 and not embeds.guided):
        raise InputError("embeds must come from encode_upscaler_prompt with the same guidance")


def pad_latents(x: torch.Tensor, least: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(N, C, h, w) reflect-padded on the bottom and right to at least ``least`` per side (mirrored again
    as often as needed; a side of 1 repeats) -> (padded, (h, w)) to crop the result back with."""
    h, w = x.shape[-2:]
    if h >= least and w >= least:
        return x, (h, w)
    rows, cols = (torch.from_numpy(np.pad(np.arange(n), (0, max(0, least - n)), mode="reflect")).to(x.device)
                  for n in (h, w))
    return x.index_select(-2, rows).index_select(-1, cols), (h, w)


def _condition(low: torch.Tensor, noise_level: float, noise: torch.Tensor | None) -> torch.Tensor:
    """Low-res latents (1, C, h, w), optionally noised -> condition (1, C, 2h, 2w), nearest 2x, scaled."""
    dtype = low.dtype
    level = torch.tensor([noise_level], dtype=torch.float32, device=low.device)
    if noise is not None:
        low = low + level * noise
    inv = (level**2 + 1) ** (-0.5)
    return (F.interpolate(low, scale_factor=2, mode="nearest") * inv[:, None, None, None]).to(dtype)


def _predictor(unet, scheduler, cond: torch.Tensor, embeds: PromptEmbeds, guidance: float):
    """Tile predictor: noisy crops (N, C, h, w) -> guided preconditioned denoised samples (N, C, h, w)."""
    guided = guidance > 1
    pooled0 = embeds.pooled
    level_embed = torch.cat([torch.ones(1, 64, dtype=pooled0.dtype, device=pooled0.device),
                             torch.zeros(1, 64, dtype=pooled0.dtype, device=pooled0.device)], dim=1)

    def predict(x: torch.Tensor, tiles: Sequence[Tile], t: torch.Tensor, i: int = 0) -> torch.Tensor:
        n = len(tiles)
        x_in = torch.cat([x, x]) if guided else x
        scaled = scheduler.scale_model_input(x_in, t)
        sigma = scheduler.sigmas[scheduler.step_index]
        c = torch.cat([cond[(..., *tile.slices)] for tile in tiles])
        c = torch.cat([c, c]) if guided else c
        pooled = embeds.pooled_batch(n, guided)
        t_cond = torch.cat([level_embed.expand(pooled.shape[0], -1), pooled], dim=1)
        out = unet(torch.cat([scaled, c], dim=1), torch.log(sigma) * 0.25,
                   encoder_hidden_states=embeds.hidden_batch(n, guided), timestep_cond=t_cond).sample[:, :-1]
        denoised = 1 / (sigma**2 + 1) * x_in + scheduler.scale_model_input(sigma, t) * out
        return guide(denoised, guidance) if guided else denoised

    return predict


@torch.no_grad()
def upscale_latents(unet, scheduler, latents: torch.Tensor, embeds: PromptEmbeds, *, steps: int,
                    guidance: float = 0.0, noise_level: float = 0.0, seed: int, tile: int, overlap: int,
                    blend: str = "cosine", batch: int = 1, order: Order | None = None, fusion: str = "overlap",
                    progress: Progress | None = None) -> torch.Tensor:
    """Upscale SD latents 2x, tile by tile: (1, 4, h, w) -> (1, 4, 2h, 2w) on the UNet's device and dtype.

    ``latents`` are Stable Diffusion latents as a pipeline returns them with
    ``output_type="latent"`` (already multiplied by the VAE scaling factor);
    the result is in the same space (divide by the factor before decoding).
    ``tile``/``overlap`` are in output-latent pixels (see :func:`latent_grid`;
    the upscaler's UNet needs multiples of 8); ``fusion``: "overlap" or "shifted" (non-overlapping
    tiles moved every step, ``overlap`` unused; see :func:`~tiledsr.diffusion.loop.fused_grid`). ``embeds`` from
    :func:`encode_upscaler_prompt` with the same ``guidance``. ``noise_level``
    > 0 adds ``noise_level`` x Gaussian noise (drawn after the initial noise
    from the same seeded generator) to the low-res latents before the
    condition is scaled; the noise-level embedding stays at the pipeline's
    fixed value (diffusers hard-codes it; its Fourier weights are not part of
    the checkpoint). One tile reproduces the diffusers pipeline. Latents
    smaller than the UNet's size multiple are an :class:`InputError` (the 2x
    canvas must be at least twice the multiple); :func:`pad_latents` them first.
    """
    # 1. Check inputs
    _check(unet, scheduler, latents, embeds, steps, guidance, noise_level, fusion)
    device, dtype = unet.device, unet.dtype
    embeds = embeds.to(device, dtype)
    low = latents.to(device, dtype)
    _, c, h, w = low.shape
    grid, shift, _ = fused_grid(2 * h, 2 * w, tile=tile, overlap=overlap, multiple=unet_multiple(unet), fusion=fusion,
                                seed=seed)

    # 2. Timesteps, on a private copy of the scheduler
    scheduler = scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(steps, device=device)

    # 3. Initial noise for the whole 2x canvas, then the optional condition noise
    generator = seeded_generator(seed)
    x = draw_noise((1, c, 2 * h, 2 * w), generator, dtype, device) * scheduler.init_noise_sigma
    aug = draw_noise(low.shape, generator, dtype, device) if noise_level > 0 else None

    # 4. Spatial condition for the whole canvas (cropped per tile)
    cond = _condition(low, noise_level, aug)

    # 5. Denoising loop
    predict = _predictor(unet, scheduler, cond, embeds, guidance)
    return denoise(x, scheduler, scheduler.timesteps, predict, grid, blend=blend, batch=batch, order=order,
                   step_kwargs=step_kwargs(scheduler, generator), progress=progress, shift=shift)
