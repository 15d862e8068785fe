"""Whole-image GroupNorm statistics in ONE pass over the tiles: every tile pauses at each GroupNorm.

The sweeps of :func:`~tiledsr.diffusion.groupnorm.sweep_stats` re-run every
tile from the start once per GroupNorm (about 11 decoder passes for the SD
VAE). Here each tile's forward is a generator that stops just before each
GroupNorm and hands over the GroupNorm's input plus the tensors it still
needs (the residual). When every tile has stopped at GroupNorm ``k``, their
core sums give the exact whole-image statistics, the GroupNorm is frozen to
them, and every tile resumes up to GroupNorm ``k + 1``. The statistics and
the output are those of the sweeps; the work is one pass per tile.

The price is memory: the paused tiles' tensors for the whole image are held
at once, in host memory (moved off an accelerator between segments, so the
device still holds one tile). The forward is re-stated for diffusers'
``Encoder``/``Decoder`` blocks (ResnetBlock2D, Attention, mid/up/down blocks);
anything else that holds a GroupNorm raises :class:`Unsupported`, and the
caller falls back to the sweeps.
"""
from __future__ import annotations

from typing import Callable, Generator, Sequence

import torch
from torch import nn

from ..errors import TiledsrError
from .groupnorm import CoreSums, NormStats, Region, frozen_group_norms, group_norms

__all__ = ["Unsupported", "one_pass"]

# A paused tile: the GroupNorm it waits at, that GroupNorm's input, and the other tensors it still needs.
Pause = tuple[nn.GroupNorm, torch.Tensor, tuple[torch.Tensor, ...]]
Program = Generator[Pause, tuple[torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor]


class Unsupported(TiledsrError):
    """A module holding a GroupNorm that the one-pass forward does not know how to pause in."""


def _has_group_norm(m: nn.Module) -> bool:
    return any(isinstance(c, nn.GroupNorm) for c in m.modules())


def _resnet(r: nn.Module, x: torch.Tensor) -> Program:
    """diffusers' ResnetBlock2D without a time embedding (as in VAEs)."""
    if r.upsample is not None or r.downsample is not None or r.time_emb_proj is not None:
        raise Unsupported("ResnetBlock2D with up/downsampling or a time embedding")
    x, _ = yield r.norm1, x, ()
    h = r.conv1(r.nonlinearity(r.norm1(x)))
    h, (x,) = yield r.norm2, h, (x,)
    h = r.conv2(r.dropout(r.nonlinearity(r.norm2(h))))
    if r.conv_shortcut is not None:
        x = r.conv_shortcut(x)
    return (x + h) / r.output_scale_factor


def _attention(a: nn.Module, x: torch.Tensor) -> Program:
    """diffusers' Attention whose only GroupNorm normalises its input."""
    if getattr(a, "spatial_norm", None) is not None or not isinstance(a.group_norm, nn.GroupNorm):
        raise Unsupported("Attention without a plain input GroupNorm")
    x, _ = yield a.group_norm, x, ()
    return a(x)  # its group_norm is frozen by now


def _sequence(x: torch.Tensor, *steps: nn.Module | None) -> Program:
    for m in steps:
        if m is not None:
            x = yield from program(m, x)
    return x


def program(m: nn.Module, x: torch.Tensor) -> Program:
    """``m(x)`` as a generator pausing before every GroupNorm (see the module docstring)."""
    kind = type(m).__name__
    if not _has_group_norm(m):
        return m(x)
    if kind == "ResnetBlock2D":
        return (yield from _resnet(m, x))
    if kind == "Attention":
        return (yield from _attention(m, x))
    if kind == "UNetMidBlock2D":
        x = yield from program(m.resnets[0], x)
        for attn, resnet in zip(m.attentions, m.resnets[1:]):
            x = yield from _sequence(x, attn, resnet)
        return x
    if kind in ("DownEncoderBlock2D", "UpDecoderBlock2D"):
        samplers = list(m.downsamplers or []) if kind == "DownEncoderBlock2D" else list(m.upsamplers or [])
        return (yield from _sequence(x, *m.resnets, *samplers))
    if kind in ("Encoder", "Decoder") and isinstance(m.conv_norm_out, nn.GroupNorm):
        blocks = [*m.down_blocks, m.mid_block] if kind == "Encoder" else [m.mid_block, *m.up_blocks]
        x = yield from _sequence(x, m.conv_in, *blocks)
        x, _ = yield m.conv_norm_out, x, ()
        return m.conv_out(m.conv_act(m.conv_norm_out(x)))  # looked up again: frozen by now
    raise Unsupported(f"{kind} holds a GroupNorm")


def _started(root: nn.Module, make: Callable[[], torch.Tensor]) -> Program:
    """``program(root, make())``, making the input only when the tile first runs."""
    return (yield from program(root, make()))


def one_pass(root: nn.Module, tiles: Sequence[tuple[Callable[[], torch.Tensor], Region]],
             finish: Callable[[int, torch.Tensor], None], on_run: Callable[[], None] | None = None, *,
             offload: bool = True) -> NormStats:
    """Run ``root`` on every tile in lockstep, GroupNorms sharing whole-image statistics; return them.

    ``tiles[i]`` is (a thunk making tile i's input on the model's device, its
    :data:`Region`); the cores must partition the image. ``finish(i, out)``
    receives tile i's output as soon as it is done. ``on_run()`` is called
    after every tile segment: tiles x (GroupNorms + 1) calls in all. Raises
    :class:`Unsupported` before any tile has passed a module it cannot pause in
    (the first tile meets it first); ``root`` is left unmodified. ``offload``:
    keep the paused tensors in host memory (else where the model computes).
    """
    names = {id(gn): name for name, gn in group_norms(root)}
    stats: NormStats = {}
    programs = [_started(root, make) for make, _ in tiles]
    paused: list[Pause | None] = [None] * len(tiles)
    device = None

    def stash(t: torch.Tensor) -> torch.Tensor:
        return t.to("cpu") if offload else t

    def advance(i: int, send) -> None:
        try:
            gn, x, keep = next(programs[i]) if send is None else programs[i].send(send)
        except StopIteration as done:
            paused[i] = None
            finish(i, done.value)
        else:
            paused[i] = (gn, stash(x), tuple(stash(k) for k in keep))
            nonlocal device
            device = device or x.device
        if on_run is not None:
            on_run()

    for i in range(len(tiles)):
        advance(i, None)
    while any(p is not None for p in paused):
        # 1. Every tile waits at the same GroupNorm: pool its input over the tile cores
        gn = paused[0][0] if paused[0] is not None else None
        if gn is None or id(gn) not in names or any(p is None or p[0] is not gn for p in paused):
            raise TiledsrError("tiles paused at different GroupNorms, or a GroupNorm ran twice")
        sums = CoreSums()
        for (_, region), (_, x, _) in zip(tiles, paused):
            sums.region = region
            sums.add(names[id(gn)], gn, x)
        stats[names[id(gn)]] = tuple(t.to(gn.weight.device if gn.affine else device) for t in sums.result())
        # 2. Freeze it and let every tile run on to the next GroupNorm (or its end)
        with frozen_group_norms(root, stats):
            for i, (_, x, keep) in enumerate(paused):
                advance(i, (x.to(device), tuple(k.to(device) for k in keep)))
    return stats
