"""Stage ``latent-x2``: the Stable Diffusion x2 latent upscaler, tiled in latent space."""
from __future__ import annotations

from dataclasses import dataclass

from .diffusion import DiffusionConfig, DiffusionStage

__all__ = ["LatentX2Config", "LatentX2Stage"]


@dataclass(frozen=True)
class LatentX2Config(DiffusionConfig):
    """Defaults follow the model card: 20 steps, guidance 0, noise level 0."""

    model: str = "stabilityai/sd-x2-latent-upscaler"
    steps: int = 20
    guidance: float = 0.0
    noise_level: float = 0.0

    def check(self) -> str | None:
        if self.noise_level < 0:
            return f"noise_level must be >= 0, got {self.noise_level}"
        return super().check()


class LatentX2Stage(DiffusionStage):
    """Latents (1, 4, h, w) -> latents (1, 4, 2h, 2w), denoised tile by tile at every step; any size."""

    type = "latent-x2"
    Config = LatentX2Config
    consumes = "latents"
    produces = "latents"
    prompt_kind = "upscaler"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return 2 * height, 2 * width

    def describe(self) -> str:
        c = self.config
        return (f"latent-x2 {c.model} ({c.steps} steps, guidance {c.guidance:g}, noise level {c.noise_level:g}"
                f"{self.fusion_note()})")

    def run(self, latents, report, source=None):
        """Latents smaller than the UNet's multiple (the 2x canvas needs 2 x it) are reflect-padded on the
        bottom and right, and the result cropped: small inputs run instead of being refused."""
        from ..diffusion.latent_upscale import pad_latents, upscale_latents

        c, comp = self.config, self.components
        low, (h, w) = pad_latents(latents.tensor.to(comp.device), self.unet_multiple)
        with self.phase("denoise"):
            out = upscale_latents(comp.unet, self.scheduler(), low, self.embeds,
                                  steps=c.steps, guidance=c.guidance, noise_level=c.noise_level, seed=self.seed,
                                  progress=self.step_report(report), **self.latent_tiling())
        return latents.scaled(out[..., :2 * h, :2 * w].contiguous(), 2)
