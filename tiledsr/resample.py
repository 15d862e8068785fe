"""Classical resampling of float images (Pillow's float kernels, channel by channel), whole or by bands.

:func:`resize_bands` produces the resized image band by band from a store, reading for each
band only the input rows its kernels reach, so memory follows the band, not the image. Each
band is computed from enough input context that it equals the whole-image resize up to float
rounding of the kernel positions (about 1e-7).
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from PIL import Image

__all__ = ["METHODS", "SUPPORT", "band_rows", "first_input_row", "input_rows", "resize", "resize_bands"]

METHODS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}
SUPPORT = {"lanczos": 3.0, "bicubic": 2.0, "bilinear": 1.0, "area": 0.5, "nearest": 0.5}  # in output-scale px
BAND_BYTES = 64 << 20  # output bytes per band


def resize(image: np.ndarray, size: tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """(H, W, C) float32 -> (h, w, C) float32 for ``size = (h, w)``; values are not clipped."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32, copy=False)
    return _resize_box(image, (h, w), method, (0.0, float(image.shape[0])))


def _resize_box(image: np.ndarray, size: tuple[int, int], method: str, rows: tuple[float, float]) -> np.ndarray:
    """Resize the rows ``rows = (top, bottom)`` (input coordinates, fractional) of ``image`` to ``size``."""
    h, w = size
    out = np.empty((h, w, image.shape[2]), dtype=np.float32)
    box = (0.0, rows[0], float(image.shape[1]), rows[1])
    for c in range(image.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(image[:, :, c], dtype=np.float32), mode="F")
        out[:, :, c] = np.asarray(plane.resize((w, h), METHODS[method], box=box))
    return out


def band_rows(width: int, channels: int) -> int:
    """Rows per band for an output ``width`` x ``channels`` wide."""
    return max(8, BAND_BYTES // max(1, 4 * width * channels))


def input_rows(y0: int, y1: int, in_h: int, out_h: int, method: str) -> tuple[int, int]:
    """The input rows [a, b) the kernels of output rows [y0, y1) reach (with a row of margin)."""
    s = in_h / out_h
    reach = SUPPORT[method] * max(s, 1.0)
    a = math.floor((y0 + 0.5) * s - reach) - 1
    b = math.ceil((y1 - 0.5) * s + reach) + 2
    return max(0, a), min(in_h, b)


def first_input_row(start: int, in_h: int, out_h: int, method: str, rows: int) -> int:
    """The first input row :func:`resize_bands` reads to produce output rows from ``start`` on."""
    if in_h == out_h:
        return start
    return input_rows(start - start % rows, min(out_h, start - start % rows + rows), in_h, out_h, method)[0]


def resize_bands(src, size: tuple[int, int], method: str = "lanczos", rows: int | None = None,
                 start: int = 0) -> Iterator[np.ndarray]:
    """The store ``src`` (H, W, C) resized to ``size = (h, w)``, as consecutive float32 bands of
    ``rows`` output rows (default: about 64 MB each) from output row ``start`` on; values are
    not clipped. Input rows are read forwards (``src`` may be a StreamStore). Bands are cut at
    multiples of ``rows`` whatever ``start`` is (the first is cropped), so a resumed run
    computes exactly the bands an uninterrupted one does."""
    in_h, in_w, c = src.shape
    h, w = size
    step = rows or band_rows(w, c)
    if (in_h, in_w) == (h, w):
        for y in range(start, h, step):
            yield src.read(y, min(h, y + step))
        return
    s = in_h / h
    for y0 in range(start - start % step, h, step):
        y1 = min(h, y0 + step)
        a, b = input_rows(y0, y1, in_h, h, method)
        block = src.read(a, b)
        if (a, b) == (0, in_h) and (y0, y1) == (0, h):
            band = _resize_box(block, (h, w), method, (0.0, float(in_h)))
        else:  # the kernel positions of rows y0:y1, whatever rows were read
            band = _resize_box(block, (y1 - y0, w), method, (y0 * s - a, y1 * s - a))
        yield band[max(0, start - y0):]
