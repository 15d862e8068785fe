"""Tiled Stable Diffusion (1.x/2.x and SDXL) img2img and txt2img in latent space.

Same math as diffusers' ``StableDiffusionImg2ImgPipeline`` (given 4-channel
latents as ``image``), ``StableDiffusionXLImg2ImgPipeline`` (given ``time_ids``),
``StableDiffusionControlNetImg2ImgPipeline`` (given ``control``) and
``StableDiffusionPipeline``, all with
``output_type="latent"``: the UNet predicts noise, classifier-free guidance
combines the two halves, and one scheduler steps the whole canvas. The
blended quantity is the guided noise prediction, i.e. what ``scheduler.step``
consumes, so with one tile the loop is the pipeline's loop.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from ..tiling import Tile
from .conditioning import TileControl, TimeIds, check_controlnet, check_time_ids
from .loop import FUSIONS, Order, Progress, denoise, fused_grid, guide, step_kwargs, unet_multiple
from .noise import draw_noise, seeded_generator
from .text import PromptEmbeds

__all__ = ["img2img_latents", "txt2img_latents"]


def _check(unet, embeds: PromptEmbeds, steps: int, guidance: float, time_ids: TimeIds | None = None,
           control: TileControl | None = None, fusion: str = "overlap") -> None:
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        raise InputError("UNets with a guidance embedding (time_cond_proj_dim, LCM) are not supported")
    check_time_ids(unet, time_ids, embeds.pooled)
    if control is not None:
        check_controlnet(control.net, unet)
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    if guidance > 1 and not embeds.guided:
        raise InputError("guidance > 1 needs embeds with an unconditional part: "
                         "encode_sd_prompt(..., guidance=<the same guidance>)")


def _predictor(unet, scheduler, embeds: PromptEmbeds, guidance: float, canvas: tuple[int, int], steps: int,
               time_ids: TimeIds | None = None, control: TileControl | None = None):
    """Tile predictor: noisy crops (N, C, h, w) -> guided noise predictions (N, C, h, w); SDXL's
    added conditioning and the ControlNet's residuals are made for each tile where it sits on the
    latent ``canvas`` (h, w); ``steps``: the run's step count (for the ControlNet's schedule)."""
    guided = guidance > 1

    def predict(x: torch.Tensor, tiles: Sequence[Tile], t: torch.Tensor, i: int = 0) -> torch.Tensor:
        x_in = scheduler.scale_model_input(torch.cat([x, x]) if guided else x, t)
        hidden = embeds.hidden_batch(len(tiles), guided)
        added = None
        if time_ids is not None:
            added = {"text_embeds": embeds.pooled_batch(len(tiles), guided),
                     "time_ids": time_ids.batch(tiles, canvas, guided, hidden.dtype, x.device)}
        extra = {} if added is None else {"added_cond_kwargs": added}
        if control is not None:
            extra |= control.residuals(x_in, t, tiles, step=i, steps=steps, hidden=hidden, added=added)
        eps = unet(x_in, t, encoder_hidden_states=hidden, return_dict=False, **extra)[0]
        return guide(eps, guidance) if guided else eps

    return predict


def _run(unet, scheduler, x: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds, generator, *,
         guidance: float, tile: int, overlap: int, blend: str, batch: int, order, progress, seed: int,
         fusion: str = "overlap", checkpoint=None, on_backoff=None, time_ids: TimeIds | None = None,
         control: TileControl | None = None) -> torch.Tensor:
    grid, shift, regrid = fused_grid(x.shape[2], x.shape[3], tile=tile, overlap=overlap, multiple=unet_multiple(unet),
                                     fusion=fusion, seed=seed)

    if control is not None:
        want = (x.shape[2] * control.factor, x.shape[3] * control.factor)
        if tuple(control.image.shape[2:]) != want:
            raise InputError(f"the control image must be {want[1]}x{want[0]} (the latent canvas x "
                             f"{control.factor}), got {control.image.shape[3]}x{control.image.shape[2]}")
    predict = _predictor(unet, scheduler, embeds, guidance, tuple(x.shape[2:]), len(timesteps), time_ids, control)
    return denoise(x, scheduler, timesteps, predict, grid, blend=blend, batch=batch, order=order,
                   step_kwargs=step_kwargs(scheduler, generator), progress=progress, regrid=regrid,
                   checkpoint=checkpoint, generator=generator, on_backoff=on_backoff, shift=shift)


@torch.no_grad()
def img2img_latents(unet, scheduler, init_latents: torch.Tensor, embeds: PromptEmbeds, *, steps: int,
                    strength: float, guidance: float, seed: int, tile: int, overlap: int, blend: str = "cosine",
                    batch: int = 1, order: Order | None = None, fusion: str = "overlap",
                    progress: Progress | None = None, checkpoint=None, on_backoff=None,
                    time_ids: TimeIds | None = None, control: TileControl | None = None) -> torch.Tensor:
    """Refine latents (1, 4, h, w) -> (1, 4, h, w) on the UNet's device and dtype, tile by tile.

    ``init_latents`` are already multiplied by the VAE scaling factor. As in
    diffusers, only the last ``int(steps * strength)`` of ``steps`` timesteps
    run (progress reports that many steps). ``tile``/``overlap`` in latent
    pixels (see :func:`~tiledsr.diffusion.loop.latent_grid`). ``fusion``: "overlap" (overlapping
    tiles, fixed) or "shifted" (non-overlapping tiles moved every step by an offset drawn from
    ``seed`` and the step; ``overlap`` unused; see :func:`~tiledsr.diffusion.loop.fused_grid`).
    ``embeds`` from :func:`encode_sd_prompt`
    with the same ``guidance`` (SDXL: :func:`encode_sdxl_prompt` and ``time_ids``). ``control``: a
    tile ControlNet, its image covering the canvas times the VAE factor. The scheduler passed in
    is not modified. ``checkpoint`` and ``on_backoff``: see :func:`~tiledsr.diffusion.loop.denoise`.
    """
    # 1. Check inputs
    _check(unet, embeds, steps, guidance, time_ids, control, fusion)
    if not 0 < strength <= 1:
        raise InputError(f"strength must be in (0, 1], got {strength}")
    if init_latents.ndim != 4 or init_latents.shape[:2] != (1, unet.config.in_channels):
        raise InputError(f"init_latents must be (1, {unet.config.in_channels}, h, w), got {tuple(init_latents.shape)}")
    device, dtype = unet.device, unet.dtype

    # 2. Timesteps: skip the first (1 - strength) of the schedule, on a private copy of the scheduler
    scheduler = scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(steps, device=device)
    t_start = max(steps - min(int(steps * strength), steps), 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if len(timesteps) == 0:
        raise InputError(f"strength {strength} with {steps} steps leaves no step to run")
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)

    # 3. Noise the whole canvas to the first timestep
    generator = seeded_generator(seed)
    init = init_latents.to(device, dtype)
    noise = draw_noise(init.shape, generator, dtype, device)
    x = scheduler.add_noise(init, noise, timesteps[:1].repeat(1))

    # 4. Denoising loop
    return _run(unet, scheduler, x, timesteps, embeds.to(device, dtype), generator, guidance=guidance, tile=tile,
                overlap=overlap, blend=blend, batch=batch, order=order, progress=progress, seed=seed, fusion=fusion,
                checkpoint=checkpoint, on_backoff=on_backoff, time_ids=time_ids, control=control)


@torch.no_grad()
def txt2img_latents(unet, scheduler, height: int, width: int, embeds: PromptEmbeds, *, steps: int,
                    guidance: float, seed: int, tile: int, overlap: int, blend: str = "cosine", batch: int = 1,
                    order: Order | None = None, fusion: str = "overlap", progress: Progress | None = None,
                    time_ids: TimeIds | None = None) -> torch.Tensor:
    """Generate latents (1, C, height, width) from noise, tile by tile; ``height``/``width`` in LATENT pixels.

    Equals ``StableDiffusionPipeline(height=8*height, width=8*width, output_type="latent")``
    for one tile (C = the UNet's in_channels; latents scaled like the pipeline's); SDXL with ``time_ids``.
    ``fusion``: see :func:`img2img_latents`.
    """
    # 1. Check inputs
    _check(unet, embeds, steps, guidance, time_ids, fusion=fusion)
    device, dtype = unet.device, unet.dtype

    # 2. Timesteps, on a private copy of the scheduler
    scheduler = scheduler.__class__.from_config(scheduler.config)
    scheduler.set_timesteps(steps, device=device)

    # 3. Initial noise for the whole canvas
    generator = seeded_generator(seed)
    shape = (1, unet.config.in_channels, height, width)
    x = draw_noise(shape, generator, dtype, device) * scheduler.init_noise_sigma

    # 4. Denoising loop
    return _run(unet, scheduler, x, scheduler.timesteps, embeds.to(device, dtype), generator, guidance=guidance,
                tile=tile, overlap=overlap, blend=blend, batch=batch, order=order, progress=progress, seed=seed,
                fusion=fusion, time_ids=time_ids)
