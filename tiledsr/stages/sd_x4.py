"""Stage ``sd-x4``: the Stable Diffusion x4 upscaler, tiled in latent space (latents at the input's size)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .diffusion import DiffusionConfig, DiffusionStage, Scheduler

__all__ = ["SDX4Config", "SDX4Stage", "planned_multiple"]


@dataclass(frozen=True)
class SDX4Config(DiffusionConfig):
    """Defaults follow diffusers' pipeline (guidance 9, noise level 20), with 25 steps instead of 75."""

    model: str = "stabilityai/stable-diffusion-x4-upscaler"
    steps: int = 25
    guidance: float = 9.0
    noise_level: int = 20
    scheduler: Scheduler = "default"

    def check(self) -> str | None:
        if not 0 <= self.noise_level <= 350:
            return f"noise_level must be in 0..350 (the pipeline's max_noise_level), got {self.noise_level}"
        return super().check()


class SDX4Stage(DiffusionStage):
    """Pixels (H, W, C) -> latents (1, 4, H, W) of this model's VAE, which decode to 4H x 4W."""

    type = "sd-x4"
    Config = SDX4Config
    consumes = "pixels"
    produces = "latents"
    factor = 4  # the x4 upscaler's VAE: 3 blocks, 4 output pixels per latent pixel

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return 4 * height, 4 * width

    def min_input_size(self) -> tuple[int, int]:
        """Its latents have the input's size, and the UNet needs at least 2 x its multiple per side."""
        n = 2 * (self.unet_multiple if hasattr(self, "components") else planned_multiple(self.config.model))
        return n, n

    def describe(self) -> str:
        c = self.config
        return (f"sd-x4 {c.model} ({c.steps} steps, guidance {c.guidance:g}, noise level {c.noise_level}"
                f"{self.fusion_note()})")

    def run(self, image: np.ndarray, report, source=None):
        import torch

        from ..diffusion.codec import Latents, split_planes
        from ..diffusion.x4_upscale import upscale_x4_latents

        c, comp = self.config, self.components
        if comp.low_res_scheduler is None:
            raise InputError(f"{c.model} is not an x4 upscaler: it has no low_res_scheduler/ folder")
        h, w, _ = image.shape
        n = self.min_input_size()[0]
        if min(h, w) < n:
            raise InputError(f"sd-x4 needs an input of at least {n} px per side, got {w}x{h}")
        rgb, alpha, grey = split_planes(image)
        pixels = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None] * 2 - 1
        with self.phase("denoise"):
            lat = upscale_x4_latents(comp.unet, self.scheduler(), comp.low_res_scheduler, pixels, self.embeds,
                                     latent_channels=comp.vae.config.latent_channels, steps=c.steps,
                                     guidance=c.guidance, noise_level=c.noise_level, seed=self.seed,
                                     progress=self.step_report(report), **self.latent_tiling())
        return Latents(lat.float(), self.codec, (4 * h, 4 * w), alpha, grey)


def planned_multiple(model: str, default: int = 8) -> int:
    """The size multiple of ``model``'s UNet read from its unet/config.json (a local folder or the Hugging
    Face cache; no weights, no download), or ``default`` (the published models') when it is not here."""
    path = Path(model).expanduser() / "unet" / "config.json"
    if not path.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(model, "unet/config.json")
        except Exception:  # no huggingface_hub, or not a hub id
            return default
        if not isinstance(hit, str):
            return default
        path = Path(hit)
    try:
        blocks = json.loads(path.read_text(encoding="utf-8"))["down_block_types"]
        return 2 ** max(0, len(blocks) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return default
