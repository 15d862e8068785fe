"""SRVGGNetCompact, Real-ESRGAN's compact model (animevideov3, general-x4v3).

A plain stack of 3x3 convs on the low-resolution input, a pixel shuffle, plus the
input upsampled with nearest neighbour. Input N x in_ch x H x W float in [0, 1]
(any device); output N x out_ch x H*upscale x W*upscale, not clipped. Each output
pixel depends on input pixels at most ``num_conv + 2`` away (the receptive radius).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ACTIVATIONS", "SRVGGNetCompact"]

ACTIVATIONS = ("prelu", "relu", "leakyrelu")


def _activation(act: str, num_feat: int) -> nn.Module:
    if act == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "leakyrelu":
        return nn.LeakyReLU(0.1, inplace=True)
    raise ValueError(f"SRVGGNetCompact act must be one of {ACTIVATIONS}, got {act!r}")


class SRVGGNetCompact(nn.Module):
    """Compact VGG-style super-resolution net; keys ``body.K.weight`` / ``body.K.bias``.

    ``body`` alternates conv and activation: conv at even K, activation at odd K,
    the last conv (num_feat -> out_ch * upscale**2) at K = 2 * num_conv + 2.
    """

    def __init__(
        self,
        in_ch: int = 3,
        out_ch: int = 3,
        num_feat: int = 64,
        num_conv: int = 16,
        upscale: int = 4,
        act: str = "prelu",
    ) -> None:
        super().__init__()
        self.upscale = upscale
        self.receptive_radius = num_conv + 2
        layers: list[nn.Module] = [nn.Conv2d(in_ch, num_feat, 3, 1, 1), _activation(act, num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), _activation(act, num_feat)]
        layers.append(nn.Conv2d(num_feat, out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.upsampler(self.body(x))
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
