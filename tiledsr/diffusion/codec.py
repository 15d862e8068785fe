"""Pixels <-> latents with one VAE, tiled; and the latent canvas handed between diffusion stages."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..resample import resize
from ..stages.base import Tiling

__all__ = ["LatentCodec", "Latents", "split_planes"]


def split_planes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """(H, W, C) in [0, 1] -> (RGB (H, W, 3), alpha (H, W, 1) copy or None, grey): what diffusion models
    see (grey repeated to RGB), and what goes around them."""
    c = image.shape[2]
    alpha = image[:, :, -1:].copy() if c in (2, 4) else None
    rgb = image[:, :, :3] if c >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    return rgb, alpha, c <= 2


def _pad(n: int, f: int) -> int:
    """Pixels to add to a side of ``n``: up to a multiple of ``f``, and at least 2 latent pixels (GroupNorm
    fails on a 1x1 latent when a group holds a single channel)."""
    return max(-n % f, 2 * f - n)


@dataclass(frozen=True)
class Latents:
    """A latent canvas handed from stage to stage without a decode/encode round trip.

    ``tensor``: (1, C, h, w) float32 on the stage device, already multiplied by the VAE's
    scaling factor; ``size``: the (H, W) pixel size it stands for (the canvas may be padded
    to the VAE factor); ``alpha``: the (H0, W0, 1) alpha plane of the pipeline's pixels, or
    None; ``grey``: decode back to one channel; ``pixels``: the (H, W, C) float32 image these
    latents were encoded from (a tile ControlNet's control image), or None once they change.
    """

    tensor: Any
    codec: "LatentCodec"
    size: tuple[int, int]
    alpha: np.ndarray | None = None
    grey: bool = False
    pixels: np.ndarray | None = None

    def scaled(self, tensor: Any, factor: int) -> "Latents":
        """The same image at ``factor`` times the size, with a new latent tensor (and no ``pixels``)."""
        return replace(self, tensor=tensor, size=(self.size[0] * factor, self.size[1] * factor), pixels=None)


class LatentCodec:
    """Tiled VAE encode/decode of float images (H, W, C) in [0, 1] on the CPU.

    Alpha is split off before encoding and resized onto the decoded image; greyscale
    runs as RGB and comes back as one channel. ``tiling`` is in pixels; ``phase()``: a context
    the VAE runs in (the stage's offload phase that brings it to the device).
    """

    def __init__(self, vae: Any, tiling: Tiling, phase: Callable[[], Any] | None = None):
        self.vae = vae
        self.tiling = tiling
        self.phase = phase or contextlib.nullcontext  # a context the VAE runs in (its offload phase)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.space = f"{vae.config.latent_channels}ch@{vae.config.scaling_factor:g}"

    @property
    def overlap(self) -> int:
        """The VAE tiles' overlap in pixels: the stage's, at most :data:`~tiledsr.diffusion.vae.OVERLAP`
        (their context makes neighbours agree, so a short feather is enough)."""
        from .vae import vae_overlap

        return vae_overlap(self.tiling.overlap)

    def grid(self, height: int, width: int):
        """The pixel tile grid the tiled VAE uses for an image of (height, width)."""
        from ..tiling import make_grid

        f, t = self.factor, self.tiling
        h, w = height + _pad(height, f), width + _pad(width, f)
        return make_grid(h, w, max(f, t.tile - t.tile % f), min(self.overlap - self.overlap % f, t.tile - f), f)

    def encode(self, image: np.ndarray, report: Callable[[int, int], None]) -> Latents:
        """(H, W, C) float32 [0, 1] -> Latents (mode of the latent distribution x scaling factor)."""
        import torch

        from .vae import tiled_encode

        h, w, _ = image.shape
        rgb, alpha, grey = split_planes(image)
        f = self.factor
        padded = np.pad(rgb, ((0, _pad(h, f)), (0, _pad(w, f)), (0, 0)), mode="reflect" if min(h, w) > f else "edge")
        pixels = torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))[None] * 2 - 1
        t = self.tiling
        with self.phase():
            lat = tiled_encode(self.vae, pixels, tile=t.tile, overlap=self.overlap, blend=t.blend, progress=report)
        return Latents(lat, self, (h, w), alpha, grey, image)

    def decode(self, latents: Latents, report: Callable[[int, int], None]) -> np.ndarray:
        """Latents -> (H, W, C) float32 in [0, 1], cropped to ``latents.size``, alpha re-attached."""
        from .vae import tiled_decode

        t = self.tiling
        sf = self.vae.config.scaling_factor
        with self.phase():
            pixels = tiled_decode(self.vae, latents.tensor / sf, tile=t.tile, overlap=self.overlap, blend=t.blend,
                                  progress=report)
        h, w = latents.size
        rgb = ((pixels[0].float().cpu().numpy().transpose(1, 2, 0)[:h, :w] + 1) / 2).clip(0, 1)
        out = rgb.mean(axis=2, keepdims=True) if latents.grey else rgb
        if latents.alpha is not None:
            out = np.concatenate([out, np.clip(resize(latents.alpha, (h, w), "lanczos"), 0, 1)], axis=2)
        return np.ascontiguousarray(out, dtype=np.float32)
