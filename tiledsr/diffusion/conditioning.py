"""Per-tile conditioning beyond the prompt: SDXL's size micro-conditioning and a tile ControlNet.

Both are computed for each tile from where the tile sits, so a tile is conditioned as a crop of
the whole picture, never as a picture of its own:

* :class:`TimeIds`: SDXL's ``add_time_ids`` per tile: original size = the whole canvas, crop
  top-left = the tile's position on it, target size = the tile (pixels). With one tile covering
  the canvas these are the diffusers pipeline's defaults (original = target = the image, crop 0).
* :class:`TileControl`: a ControlNet run on each tile's noisy latents with the control image
  cropped at the tile's window, its residuals fed to the UNet in the same step (as
  ``StableDiffusionControlNetImg2ImgPipeline`` does for the whole image).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from ..tiling import Tile

__all__ = ["TileControl", "TimeIds", "check_controlnet", "check_time_ids"]


@dataclass(frozen=True)
class TimeIds:
    """SDXL micro-conditioning for tiles of a latent canvas.

    ``factor``: image pixels per latent pixel. ``original``: (H, W) pixels of the whole picture
    (None: the canvas being denoised, times ``factor``); ``offset``: (y, x) pixels of that canvas
    on the picture (a tile refined on its own sits at its position). ``aesthetic``: (score,
    negative score) for refiner-style UNets (``requires_aesthetics_score``), which take
    original + crop + score instead of original + crop + target.
    """

    factor: int = 8
    original: tuple[int, int] | None = None
    offset: tuple[int, int] = (0, 0)
    aesthetic: tuple[float, float] | None = None

    def batch(self, tiles: Sequence[Tile], canvas: tuple[int, int], guided: bool, dtype, device) -> torch.Tensor:
        """(N, k) time ids for ``tiles`` of a latent canvas (h, w); (2N, k) as [negative]*N + [positive]*N
        when ``guided`` (k = 6, or 5 with ``aesthetic``)."""
        f = self.factor
        original = self.original or (canvas[0] * f, canvas[1] * f)
        rows, neg = [], []
        for t in tiles:
            crop = (self.offset[0] + t.y * f, self.offset[1] + t.x * f)
            if self.aesthetic is None:
                ids = [*original, *crop, t.h * f, t.w * f]
                rows.append(ids)
                neg.append(ids)
            else:
                rows.append([*original, *crop, self.aesthetic[0]])
                neg.append([*original, *crop, self.aesthetic[1]])
        out = torch.tensor((neg + rows) if guided else rows, dtype=dtype)
        return out.to(device)

    @property
    def count(self) -> int:
        """Numbers per tile: 6, or 5 with an aesthetic score."""
        return 6 if self.aesthetic is None else 5


def check_time_ids(unet, time_ids: TimeIds | None, pooled: torch.Tensor | None) -> None:
    """InputError unless ``time_ids`` and a ``pooled`` embedding fit an SDXL UNet's added embedding
    (or the UNet has none and neither is given)."""
    kind = getattr(unet.config, "addition_embed_type", None)
    if kind is None:
        return
    if kind != "text_time":
        raise InputError(f"UNets with {kind!r} added conditions are not supported (SD 1.x/2.x and SDXL are)")
    if time_ids is None or pooled is None:
        raise InputError("an SDXL UNet needs pooled prompt embeddings (encode_sdxl_prompt) and time ids")
    want = unet.add_embedding.linear_1.in_features
    got = unet.config.addition_time_embed_dim * time_ids.count + pooled.shape[-1]
    if want != got:
        hint = ("the model wants an aesthetic score (a refiner): set requires_aesthetics_score in model_index.json"
                if want - got == unet.config.addition_time_embed_dim else "check the model's configs")
        raise InputError(f"the SDXL UNet's added embedding takes {want} numbers, the conditioning gives {got}; "
                         f"{hint}")


class TileControl:
    """A ControlNet for tiled denoising.

    ``image``: (1, 3, H, W) float in [0, 1] covering the latent canvas times the VAE factor (on any
    device; crops move to the ControlNet's). ``scale``: the conditioning scale; ``start``/``end``:
    the fraction of the run's steps it acts in (as diffusers' ``control_guidance_start/end``).
    """

    def __init__(self, net, image: torch.Tensor, *, factor: int, scale: float = 1.0, start: float = 0.0,
                 end: float = 1.0):
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise InputError(f"control image must be (1, 3, H, W), got {tuple(image.shape)}")
        self.net, self.image, self.factor = net, image, factor
        self.scale, self.start, self.end = float(scale), float(start), float(end)

    def weight(self, step: int, steps: int) -> float:
        """The conditioning scale at ``step`` (0-based) of ``steps``: 0 outside [start, end]."""
        keep = not (step / steps < self.start or (step + 1) / steps > self.end)
        return self.scale * keep

    def residuals(self, x_in: torch.Tensor, t, tiles: Sequence[Tile], *, step: int, steps: int,
                  hidden: torch.Tensor, added: dict | None) -> dict:
        """The UNet's extra keyword arguments for the model input ``x_in`` (N or 2N tiles, as laid out by
        classifier-free guidance) at ``step`` of ``steps``: ControlNet residuals, or {} when its weight
        is 0 there (adding zeros changes nothing, so the ControlNet is not run)."""
        scale = self.weight(step, steps)
        if scale == 0:
            return {}
        f, net = self.factor, self.net
        crops = [self.image[:, :, t.y * f:(t.y + t.h) * f, t.x * f:(t.x + t.w) * f] for t in tiles]
        cond = torch.cat(crops).to(net.device, net.dtype)
        if x_in.shape[0] != cond.shape[0]:
            cond = torch.cat([cond] * (x_in.shape[0] // cond.shape[0]))
        kwargs = {"added_cond_kwargs": added} if added is not None else {}
        down, mid = net(x_in.to(net.dtype), t, encoder_hidden_states=hidden.to(net.dtype), controlnet_cond=cond,
                        conditioning_scale=scale, guess_mode=False, return_dict=False, **kwargs)
        dtype = x_in.dtype
        return {"down_block_additional_residuals": [d.to(dtype) for d in down],
                "mid_block_additional_residual": mid.to(dtype)}


def check_controlnet(net, unet) -> None:
    """InputError when the ControlNet ``net`` cannot guide ``unet`` tile by tile."""
    cfg, ucfg = net.config, unet.config
    if getattr(cfg, "global_pool_conditions", False):
        raise InputError("ControlNets that pool their condition over the whole image (global_pool_conditions, "
                         "e.g. shuffle) cannot run tile by tile; use a tile ControlNet")
    if cfg.cross_attention_dim != ucfg.cross_attention_dim:
        raise InputError(f"the ControlNet's cross-attention width {cfg.cross_attention_dim} does not match the "
                         f"model's {ucfg.cross_attention_dim}: it was trained for another base model")
    if getattr(cfg, "addition_embed_type", None) != getattr(ucfg, "addition_embed_type", None):
        raise InputError("the ControlNet and the model disagree on added conditioning (an SD 1.x/2.x ControlNet "
                         "with an SDXL model, or the other way round)")
    if tuple(cfg.block_out_channels) != tuple(ucfg.block_out_channels):
        raise InputError(f"the ControlNet's blocks {tuple(cfg.block_out_channels)} do not match the model's "
                         f"{tuple(ucfg.block_out_channels)}")
