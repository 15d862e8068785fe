"""Stage ``img2img``: SD 1.x/2.x refinement at low strength, tiled.

``mode: fused`` (default) denoises the whole latent canvas tile by tile at every step
(one scheduler, seamless); ``independent`` runs each pixel tile as its own img2img and
blends the decoded pixels with feathered weights (faster, like Ultimate SD Upscale).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..tiling import run_tiled
from .base import note_of
from .diffusion import DiffusionConfig, DiffusionStage, Scheduler

__all__ = ["Img2ImgConfig", "Img2ImgStage"]


@dataclass(frozen=True)
class Img2ImgConfig(DiffusionConfig):
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    strength: float = 0.3
    scheduler: Scheduler = "default"
    mode: Literal["fused", "independent"] = "fused"

    def check(self) -> str | None:
        if not 0 < self.strength <= 1:
            return f"strength must be in (0, 1], got {self.strength}"
        if int(self.steps * self.strength) < 1:
            return (f"strength {self.strength:g} x steps {self.steps} runs no denoising step; "
                    f"use at least {int(1 / self.strength) + 1} steps")
        return super().check()


class Img2ImgStage(DiffusionStage):
    """Same-size refinement: latents -> latents (fused) or pixels -> pixels (independent)."""

    type = "img2img"
    Config = Img2ImgConfig

    @property
    def consumes(self) -> str:  # type: ignore[override]
        return "latents" if self.config.mode == "fused" else "pixels"

    @property
    def produces(self) -> str:  # type: ignore[override]
        return self.consumes

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def describe(self) -> str:
        c = self.config
        return f"img2img {c.model} ({c.mode}, strength {c.strength:g}, {c.steps} steps, guidance {c.guidance:g})"

    def _denoise(self, init, seed: int, progress=None, whole: bool = False, checkpoint=None, on_backoff=None):
        from ..diffusion.img2img import img2img_latents

        c, comp = self.config, self.components
        tiling = self.latent_tiling()
        if whole:  # one tile covering this (already tiled) canvas
            tiling["tile"] = max(init.shape[-2:])
        return img2img_latents(comp.unet, self.scheduler(), init.to(comp.device), self.embeds, steps=c.steps,
                               strength=c.strength, guidance=c.guidance, seed=seed, progress=progress,
                               checkpoint=checkpoint, on_backoff=on_backoff, **tiling)

    def run(self, data, report, source=None, checkpoint=None):
        """Fused: Latents -> Latents (``checkpoint``: a StepState kept after every step); independent:
        pixels -> pixels."""
        if self.config.mode == "fused":  # latents under 2 x the UNet's multiple: reflect-padded, then cropped
            from ..diffusion.latent_upscale import pad_latents

            x, (h, w) = pad_latents(data.tensor, 2 * self.unet_multiple)
            out = self._denoise(x, self.seed, self.step_report(report), checkpoint=checkpoint,
                                on_backoff=note_of(report))
            return data.scaled(out[..., :h, :w].contiguous(), 1)
        return self._independent(data, report)

    def _independent(self, image: np.ndarray, report) -> np.ndarray:
        """Each pixel tile on its own: see :meth:`independent_tiles`."""
        return _run_independent(image, self.independent_tiles, self, report)

    def independent_tiles(self, batch: np.ndarray, starts) -> np.ndarray:
        """(N, h, w, 3) float32 in [0, 1] tiles at input positions ``starts`` [(y, x), ...] ->
        the same, refined: each encoded, denoised on its own (noise keyed to the seed and the
        tile's position, not the order) and decoded. Depends only on the loaded models, so the
        tiles can be computed anywhere (Ray workers)."""
        import torch

        from ..diffusion.vae import tiled_decode, tiled_encode

        vae = self.components.vae
        sf = vae.config.scaling_factor
        outs = []
        for tile_img, (y, x) in zip(batch, starts):
            px = torch.from_numpy(np.ascontiguousarray(tile_img[:, :, :3].transpose(2, 0, 1)))[None] * 2 - 1
            big = max(px.shape[-2:])
            lat = tiled_encode(vae, px, tile=big, overlap=0)
            seed = self.seed * 1_000_003 + y * 65_537 + x  # keyed to canvas position, not order
            lat = self._denoise(lat, seed, whole=True)
            pix = tiled_decode(vae, lat / sf, tile=big * 1, overlap=0)
            outs.append(((pix[0].float().cpu().numpy().transpose(1, 2, 0) + 1) / 2).clip(0, 1))
        return np.stack(outs)


def _run_independent(image: np.ndarray, fn, stage: Img2ImgStage, report) -> np.ndarray:
    """run_tiled over the RGB planes (padded to the UNet's multiple); alpha and grey handled around it."""
    from ..diffusion.codec import split_planes

    h, w, _ = image.shape
    rgb, alpha, grey = split_planes(image)
    m = stage.factor * stage.unet_multiple
    t = stage.tiling
    tile = max(m, t.tile - t.tile % m)
    padded = np.pad(rgb, ((0, -h % m), (0, -w % m), (0, 0)), mode="reflect" if min(h, w) > m else "edge")
    out = run_tiled(padded, fn, scale=1, tile=tile, overlap=min(t.overlap, tile - m), multiple=m,
                    blend=t.blend, batch=1, on_tile=report, keyed=True)[:h, :w]
    if grey:
        out = out.mean(axis=2, keepdims=True)
    if alpha is not None:
        out = np.concatenate([out, alpha], axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)
