"""GroupNorm statistics shared across tiles.

A GroupNorm normalises with the mean and variance of its whole input. Run tile
by tile, each tile would be normalised with its own statistics and tiles would
shift in tone. Here the statistics are recorded once, on a pass over the whole
(downscaled) image, and every GroupNorm is then swapped for
:class:`FrozenGroupNorm`, which applies the recorded statistics to any tile.

Both steps are context managers that restore the model when they exit, also
on errors: no hooks or swapped modules are left behind.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["FrozenGroupNorm", "NormStats", "frozen_group_norms", "record_group_norm_stats"]

# name of each GroupNorm inside the root module -> (mean, var), each (groups,) float32 on its device
NormStats = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _group_norms(root: nn.Module) -> list[tuple[str, nn.GroupNorm]]:
    return [(n, m) for n, m in root.named_modules() if isinstance(m, nn.GroupNorm)]


@contextmanager
def record_group_norm_stats(root: nn.Module) -> Iterator[NormStats]:
    """Record per-group mean/var of every GroupNorm's input while the block runs.

    Yields the dict it fills; a GroupNorm called more than once keeps its last
    call. Statistics are over the whole input (batch 1 expected).
    """
    stats: NormStats = {}
    handles = []

    def hook_for(name: str, gn: nn.GroupNorm):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0].detach().float()
            var, mean = torch.var_mean(x.reshape(x.shape[0], gn.num_groups, -1), dim=-1, unbiased=False)
            stats[name] = (mean.mean(0), var.mean(0))
        return hook

    try:
        for name, gn in _group_norms(root):
            handles.append(gn.register_forward_pre_hook(hook_for(name, gn)))
        yield stats
    finally:
        for h in handles:
            h.remove()


class FrozenGroupNorm(nn.Module):
    """A GroupNorm that normalises with fixed statistics: a per-channel affine map.

    ``y = (x - mean[g]) / sqrt(var[g] + eps) * weight + bias`` for any input
    (N, C, *) whatever its size, so a tile is normalised like the whole image.
    """

    def __init__(self, gn: nn.GroupNorm, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        c, g = gn.num_channels, gn.num_groups
        rstd = torch.rsqrt(var.float() + gn.eps).repeat_interleave(c // g)
        mean = mean.float().repeat_interleave(c // g)
        weight = gn.weight.detach().float() if gn.affine else torch.ones_like(rstd)
        bias = gn.bias.detach().float() if gn.affine else torch.zeros_like(rstd)
        scale = weight * rstd
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", bias - mean * scale, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        scale = self.scale.to(x.dtype).view(shape)
        return torch.addcmul(self.shift.to(x.dtype).view(shape), x, scale)


@contextmanager
def frozen_group_norms(root: nn.Module, stats: NormStats) -> Iterator[None]:
    """Swap every GroupNorm under ``root`` for a :class:`FrozenGroupNorm` using ``stats``.

    The original modules are put back when the block exits. Raises KeyError if
    a GroupNorm has no recorded statistics.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, gn in _group_norms(root):
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name)
            setattr(parent, child, FrozenGroupNorm(gn, *stats[name]))
            swapped.append((parent, child, gn))
        yield
    finally:
        for parent, child, gn in reversed(swapped):
            setattr(parent, child, gn)
