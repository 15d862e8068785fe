"""Classical resampling of float images (Pillow's float kernels, channel by channel)."""
from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["METHODS", "resize"]

METHODS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}


def resize(image: np.ndarray, size: tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) float32 for ``size = (h, w)``; values are not clipped."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32, copy=False)
    out = np.empty((h, w, image.shape[2]), dtype=np.float32)
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), mode="F")
        out[:, :, c] = np.asarray(plane.resize((w, h), METHODS[method]))
    return out
