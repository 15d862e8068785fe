"""Stage ``img2img``: SD 1.x/2.x or SDXL refinement at low strength, tiled, optionally guided by a
tile ControlNet.

``mode: fused`` (default) denoises the whole latent canvas tile by tile at every step
(one scheduler, seamless); ``independent`` runs each pixel tile as its own img2img and
blends the decoded pixels with feathered weights (faster, like Ultimate SD Upscale).
``fusion`` (fused mode only): ``overlap`` (default) blends overlapping tiles; ``shifted`` runs
non-overlapping tiles on a grid moved every step (see :class:`~tiledsr.stages.diffusion.DiffusionConfig`).

An SDXL checkpoint is recognised from its folder; every tile is told where it sits on the picture
(``add_time_ids``: original size = the picture, crop = the tile's position, target = the tile).
``controlnet`` (a hub id or a local ControlNetModel folder) conditions each tile on the stage's
input cropped at the tile's window (a tile ControlNet conditions on the image being refined).
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
    seamfix: float = 0.0  # re-render the seams of this stage scoring above this (0: off)
    controlnet: str = ""  # a tile ControlNet: hub id or local diffusers ControlNetModel folder ("": none)
    controlnet_scale: float = 1.0
    control_start: float = 0.0  # fractions of the steps the ControlNet acts in
    control_end: float = 1.0

    def check(self) -> str | None:
        if self.fusion == "shifted" and self.mode != "fused":
            return f"fusion: shifted needs mode: fused (mode {self.mode} refines every tile on its own)"
        if self.seamfix < 0:
            return f"seamfix must be a seam score >= 0 (0: off), got {self.seamfix}"
        if not 0 <= self.controlnet_scale <= 10:
            return f"controlnet_scale must be in [0, 10], got {self.controlnet_scale}"
        if not 0 <= self.control_start < self.control_end <= 1:
            return (f"control_start and control_end must satisfy 0 <= start < end <= 1, got "
                    f"{self.control_start} and {self.control_end}")
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
        control = f", ControlNet {c.controlnet} x{c.controlnet_scale:g}" if c.controlnet else ""
        return (f"img2img {c.model} ({c.mode}, strength {c.strength:g}, {c.steps} steps, guidance {c.guidance:g}"
                f"{control}{self.fusion_note()})")

    def missing_models(self) -> list[str]:
        missing = super().missing_models()
        name = self.config.controlnet
        if name and not missing:
            from ..diffusion.components import controlnet_available, controlnet_missing

            if not controlnet_available(name):
                missing.append(controlnet_missing(name))
        return missing

    def load_models(self) -> None:
        """The model's components, and the ControlNet (checked against the model)."""
        super().load_models()
        self.controlnet = None
        self.tile_state: dict = {}  # run-time facts the tile function needs: the picture's size
        if self.config.controlnet:
            from ..diffusion.components import load_controlnet
            from ..diffusion.conditioning import check_controlnet

            self.controlnet = load_controlnet(self.config.controlnet, self.storage_device(), self.load_precision())
            check_controlnet(self.controlnet, self.components.unet)
            self.extra_modules["controlnet"] = self.controlnet

    def _control(self, pixels: np.ndarray | None, canvas: tuple[int, int]):
        """The TileControl over a latent ``canvas`` (h, w) from the stage's input ``pixels`` (H, W, C) in
        [0, 1], reflect-padded on the bottom and right to the canvas times the VAE factor; None without
        a ControlNet."""
        if self.controlnet is None:
            return None
        import torch

        from ..diffusion.codec import split_planes
        from ..diffusion.conditioning import TileControl

        c, f = self.config, self.factor
        rgb = split_planes(pixels)[0]
        ph, pw = canvas[0] * f - rgb.shape[0], canvas[1] * f - rgb.shape[1]
        if ph or pw:
            rgb = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(rgb.shape[:2]) > 1 else "edge")
        image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))[None]
        return TileControl(self.controlnet, image, factor=f, scale=c.controlnet_scale, start=c.control_start,
                           end=c.control_end)

    def _denoise(self, init, seed: int, progress=None, whole: bool = False, checkpoint=None, on_backoff=None,
                 control=None, time_ids=None):
        from ..diffusion.img2img import img2img_latents

        c, comp = self.config, self.components
        tiling = self.latent_tiling()
        if whole:  # one tile covering this (already tiled) canvas
            tiling["tile"], tiling["fusion"] = max(init.shape[-2:]), "overlap"
        with self.phase("denoise"):
            return img2img_latents(comp.unet, self.scheduler(), init.to(comp.device), self.embeds, steps=c.steps,
                                   strength=c.strength, guidance=c.guidance, seed=seed, progress=progress,
                                   checkpoint=checkpoint, on_backoff=on_backoff, control=control,
                                   time_ids=self.time_ids() if time_ids is None else time_ids, **tiling)

    def run(self, data, report, source=None, checkpoint=None):
        """Fused: Latents -> Latents (``checkpoint``: a StepState kept after every step); independent:
        pixels -> pixels."""
        if self.config.mode == "fused":  # latents under 2 x the UNet's multiple: reflect-padded, then cropped
            from ..diffusion.latent_upscale import pad_latents

            x, (h, w) = pad_latents(data.tensor, 2 * self.unet_multiple)
            control = None
            if self.controlnet is not None:  # conditioned on the stage's input: the pixels it was encoded from
                pixels = data.pixels if data.pixels is not None else self.codec.decode(data, lambda *a: None)
                control = self._control(pixels, tuple(x.shape[-2:]))
            out = self._denoise(x, self.seed, self.step_report(report), checkpoint=checkpoint,
                                on_backoff=note_of(report), control=control)
            return data.scaled(out[..., :h, :w].contiguous(), 1)
        return self._independent(data, report)

    def _independent(self, image: np.ndarray, report) -> np.ndarray:
        """Each pixel tile on its own: see :meth:`independent_tiles`."""
        return _run_independent(image, self.independent_tiles, self, report)

    def independent_tiles(self, batch: np.ndarray, starts) -> np.ndarray:
        """(N, h, w, 3) float32 in [0, 1] tiles at input positions ``starts`` [(y, x), ...] ->
        the same, refined: each encoded, denoised on its own (noise keyed to the seed and the
        tile's position, not the order) and decoded; a ControlNet sees the tile itself, SDXL is told
        the tile's place on the picture (``tile_state["picture"]``). Depends only on the loaded
        models and ``tile_state``, so the tiles can be computed anywhere (Ray workers)."""
        import torch

        from ..diffusion.vae import tiled_decode, tiled_encode

        vae = self.components.vae
        sf = vae.config.scaling_factor
        picture = getattr(self, "tile_state", {}).get("picture")
        outs = []
        for tile_img, (y, x) in zip(batch, starts):
            px = torch.from_numpy(np.ascontiguousarray(tile_img[:, :, :3].transpose(2, 0, 1)))[None] * 2 - 1
            big = max(px.shape[-2:])
            with self.phase("vae"):
                lat = tiled_encode(vae, px, tile=big, overlap=0)
            seed = self.seed * 1_000_003 + y * 65_537 + x  # keyed to canvas position, not order
            time_ids = self.time_ids(tuple(picture) if picture else None, (y, x))
            lat = self._denoise(lat, seed, whole=True, control=self._control(tile_img, tuple(lat.shape[-2:])),
                                time_ids=time_ids)
            with self.phase("vae"):
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
    stage.tile_state = {"picture": padded.shape[:2]}
    out = run_tiled(padded, fn, scale=1, tile=tile, overlap=min(t.overlap, tile - m), multiple=m,
                    blend=t.blend, batch=1, on_tile=report, keyed=True)[:h, :w]
    if grey:
        out = out.mean(axis=2, keepdims=True)
    if alpha is not None:
        out = np.concatenate([out, alpha], axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)
