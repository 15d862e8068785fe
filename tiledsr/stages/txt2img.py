"""Stage ``txt2img``: a source stage generating the first latents from a prompt."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .diffusion import DiffusionConfig, DiffusionStage, Scheduler

__all__ = ["Txt2ImgConfig", "Txt2ImgStage"]


@dataclass(frozen=True)
class Txt2ImgConfig(DiffusionConfig):
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    width: int = 512
    height: int = 512
    steps: int = 30
    scheduler: Scheduler = "default"

    def check(self) -> str | None:
        for key in ("width", "height"):
            v = getattr(self, key)
            if v <= 0 or v % 8:
                return f"{key} must be a positive multiple of 8 pixels, got {v}"
        return super().check()


class Txt2ImgStage(DiffusionStage):
    """Nothing -> latents (1, 4, height/8, width/8), generated tile by tile at every step."""

    type = "txt2img"
    Config = Txt2ImgConfig
    consumes = "nothing"
    produces = "latents"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return self.config.height, self.config.width

    def least_side(self) -> int:
        """Smallest width/height in pixels: the UNet needs latents of at least 2 x its multiple per side."""
        from .sd_x4 import planned_multiple

        m = self.unet_multiple if hasattr(self, "components") else planned_multiple(self.config.model)
        return 2 * m * self.factor

    def check_tiling(self) -> str | None:
        """A canvas too small for the UNet, or None (checked at plan time, from the UNet's config only)."""
        c, least = self.config, self.least_side()
        if min(c.width, c.height) < least:
            return f"width and height must be at least {least} px for this model's UNet, got {c.width}x{c.height}"
        return None

    def describe(self) -> str:
        c = self.config
        return (f"txt2img {c.model} ({c.width}x{c.height}, {c.steps} steps, guidance {c.guidance:g}"
                f"{self.fusion_note()})")

    def run(self, data, report, source=None):
        from ..diffusion.codec import Latents
        from ..diffusion.img2img import txt2img_latents

        c, comp = self.config, self.components
        problem = self.check_tiling()
        if problem:
            raise InputError(f"txt2img: {problem}")
        f = self.factor
        with self.phase("denoise"):
            lat = txt2img_latents(comp.unet, self.scheduler(), c.height // f, c.width // f, self.embeds,
                                  steps=c.steps, guidance=c.guidance, seed=self.seed,
                                  progress=self.step_report(report), time_ids=self.time_ids(),
                                  **self.latent_tiling())
        return Latents(lat, self.codec, (c.height, c.width))
