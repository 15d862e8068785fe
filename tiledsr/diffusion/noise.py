"""Whole-canvas Gaussian noise, drawn the way diffusers draws it.

Noise is drawn in ONE ``torch.randn`` call with the shape of the whole latent
canvas from a CPU generator seeded with ``seed``, exactly as diffusers'
``randn_tensor`` does when a pipeline is given
``generator=torch.Generator("cpu").manual_seed(seed)``. A tile therefore sees
the same noise whatever the tile size, order or batch, and a one-tile run sees
the same noise as the diffusers pipeline.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["canvas_noise", "draw_noise", "seeded_generator"]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (what diffusers' examples pass as ``generator``)."""
    return torch.Generator("cpu").manual_seed(int(seed))


def draw_noise(
    shape: Sequence[int],
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Standard normal tensor of ``shape`` in ``dtype``, drawn on the CPU from ``generator``, moved to ``device``.

    Drawn directly in ``dtype`` (a float16 draw differs from a float32 draw
    cast to float16), as ``diffusers.utils.torch_utils.randn_tensor`` does.
    Advances ``generator``.
    """
    noise = torch.randn(tuple(shape), generator=generator, device="cpu", dtype=dtype)
    return noise if device is None else noise.to(device)


def canvas_noise(
    shape: Sequence[int],
    seed: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Noise for a whole canvas ``shape`` (e.g. (1, 4, h, w)) from a fresh generator seeded with ``seed``."""
    return draw_noise(shape, seeded_generator(seed), dtype, device)
