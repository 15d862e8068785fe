"""Conversions between what users pass in (PIL, numpy, torch) and the internal float image."""
from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["from_any", "to_like", "to_pil"]


def from_any(image: Any) -> np.ndarray:
    """PIL image, numpy (H, W[, C]) uint8/uint16/float, or torch (C, H, W)/(1, C, H, W) float
    -> float32 (H, W, C) in [0, 1], C in 1..4."""
    if hasattr(image, "getbands"):  # PIL
        return from_any(_pil_to_numpy(image))
    if type(image).__module__.startswith("torch"):
        t = image.detach().float().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3:
            raise InputError(f"expected a torch tensor (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
        return from_any(t.permute(1, 2, 0).numpy())
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4 or min(a.shape[:2]) < 1:
        raise InputError(f"expected an image of shape (H, W) or (H, W, C) with C in 1..4, got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / 65535.0
    if a.dtype.kind == "f":
        return np.clip(a, 0.0, 1.0).astype(np.float32)
    raise InputError(f"expected uint8, uint16 or float pixels, got {a.dtype}")


def _pil_to_numpy(img: Any) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(img, dtype=np.uint32).clip(0, 65535).astype(np.uint16)
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    return np.asarray(img)


def to_pil(image: np.ndarray, bit_depth: int = 8) -> Any:
    """float32 (H, W, C) in [0, 1] -> PIL image (16-bit only for one channel: Pillow keeps no 16-bit RGB)."""
    from PIL import Image

    if bit_depth == 16 and image.shape[2] == 1:
        return Image.fromarray(np.rint(image[:, :, 0] * 65535).astype(np.uint16))
    a = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def to_like(image: np.ndarray, like: Any) -> Any:
    """float32 (H, W, C) -> the same kind (and dtype / layout) as ``like``."""
    if hasattr(like, "getbands"):
        return to_pil(image, 16 if like.mode.startswith("I") else 8)
    if type(like).__module__.startswith("torch"):
        import torch

        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return t[None] if like.ndim == 4 else t
    a = np.asarray(like)
    out = image[:, :, 0] if a.ndim == 2 else image
    if a.dtype == np.uint8:
        return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
    if a.dtype == np.uint16:
        return np.rint(np.clip(out, 0, 1) * 65535).astype(np.uint16)
    return out.astype(np.float32)
