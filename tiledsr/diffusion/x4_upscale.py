"""Tiled x4 upscaling with the Stable Diffusion x4 upscaler (stable-diffusion-x4-upscaler).

Same math as diffusers' ``StableDiffusionUpscalePipeline`` with
``output_type="latent"``: the low-res image (in [-1, 1]) is noised to
``noise_level`` by the low-res DDPM scheduler (noise drawn first from the
seeded generator), the latents have the image's own height and width (the
VAE upsamples 4x when decoding), the UNet gets the scaled noisy latents
concatenated with the noised image and the noise level as class label, and
predicts noise (v-prediction for the published model); classifier-free
guidance combines the halves and one scheduler steps the whole canvas. The
blended quantity is the guided prediction, what ``scheduler.step`` consumes.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from ..tiling import Tile
from .loop import FUSIONS, Order, Progress, denoise, fused_grid, guide, step_kwargs, unet_multiple
from .noise import draw_noise, seeded_generator
from .text import PromptEmbeds

__all__ = ["upscale_x4_latents"]


def _check(unet, image: torch.Tensor, latent_channels: int, embeds: PromptEmbeds, steps: int, guidance: float,
           noise_level: int, low_res_scheduler, fusion: str = "overlap") -> None:
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if image.ndim != 4 or image.shape[0] != 1:
        raise InputError(f"image must be (1, C, h, w), got {tuple(image.shape)}")
    if image.shape[1] + latent_channels != unet.config.in_channels:
        raise InputError(f"the UNet takes {unet.config.in_channels} channels = {latent_channels} latent + image "
                         f"channels, got an image with {image.shape[1]}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    levels = low_res_scheduler.config.num_train_timesteps
    if not 0 <= noise_level < levels:
        raise InputError(f"noise_level must be in 0..{levels - 1}, got {noise_level}")
    if guidance > 1 and not embeds.guided:
        raise InputError("guidance > 1 needs embeds with an unconditional part: "
                         "encode_sd_prompt(..., guidance=<the same guidance>)")


def _predictor(unet, scheduler, cond: torch.Tensor, level: torch.Tensor, embeds: PromptEmbeds, guidance: float):
    """Tile predictor: noisy crops (N, C, h, w) -> guided predictions (N, C, h, w)."""
    guided = guidance > 1

    def predict(x: torch.Tensor, tiles: Sequence[Tile], t: torch.Tensor, i: int = 0) -> torch.Tensor:
        n = len(tiles)
        x_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        c = torch.cat([cond[(..., *tile.slices)] for tile in tiles])
        c = torch.cat([c, c]) if guided else c
        out = unet(torch.cat([x_in, c], dim=1), t, encoder_hidden_states=embeds.hidden_batch(n, guided),
                   class_labels=level.expand(x_in.shape[0]), return_dict=False)[0]
        return guide(out, guidance) if guided else out

    return predict


@torch.no_grad()
def upscale_x4_latents(unet, scheduler, low_res_scheduler, image: torch.Tensor, embeds: PromptEmbeds, *,
                       latent_channels: int = 4, steps: int, guidance: float = 9.0, noise_level: int = 20,
                       seed: int, tile: int, overlap: int, blend: str = "cosine", batch: int = 1,
                       order: Order | None = None, fusion: str = "overlap",
                       progress: Progress | None = None) -> torch.Tensor:
    """Upscale an image 4x into latents: (1, 3, h, w) in [-1, 1] -> (1, 4, h, w) on the UNet's device and dtype.

    The latents are multiplied by the VAE scaling factor, as the pipeline
    returns them with ``output_type="latent"``: divide by
    ``vae.config.scaling_factor`` and decode with the x4 upscaler's VAE to get
    (1, 3, 4h, 4w). ``tile``/``overlap`` in latent pixels = input pixels (see
    :func:`~tiledsr.diffusion.loop.latent_grid`); ``fusion``: "overlap" or "shifted" (non-overlapping
    tiles moved every step, ``overlap`` unused; see :func:`~tiledsr.diffusion.loop.fused_grid`).
    ``embeds`` from :func:`encode_sd_prompt` with the same ``guidance``. One tile reproduces the diffusers pipeline.
    """
    # 1. Check inputs
    _check(unet, image, latent_channels, embeds, steps, guidance, noise_level, low_res_scheduler, fusion)
    device, dtype = unet.device, unet.dtype
    embeds = embeds.to(device, dtype)
    _, _, h, w = image.shape
    grid, shift, _ = fused_grid(h, w, tile=tile, overlap=overlap, multiple=unet_multiple(unet), fusion=fusion,
                                seed=seed)

    # 2. Timesteps, on a private copy of the scheduler
    scheduler = scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(steps, device=device)

    # 3. Noise the low-res image to noise_level, then draw the initial latents (the pipeline's order)
    generator = seeded_generator(seed)
    level = torch.tensor([noise_level], dtype=torch.long, device=device)
    low = image.to(device, dtype)
    cond = low_res_scheduler.add_noise(low, draw_noise(low.shape, generator, dtype, device), level)
    x = draw_noise((1, latent_channels, h, w), generator, dtype, device) * scheduler.init_noise_sigma

    # 4. Denoising loop
    predict = _predictor(unet, scheduler, cond, level, embeds, guidance)
    return denoise(x, scheduler, scheduler.timesteps, predict, grid, blend=blend, batch=batch, order=order,
                   step_kwargs=step_kwargs(scheduler, generator), progress=progress, shift=shift)
