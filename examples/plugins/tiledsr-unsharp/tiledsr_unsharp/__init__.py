"""tiledsr-unsharp: an example third-party tiledsr stage, ``unsharp`` (an unsharp mask).

``out = clip(x + amount * d, 0, 1)`` with ``d = x - gaussian(x, sigma=radius)``, and ``d`` set to
0 where ``|d| <= threshold``. The gaussian is separable, truncated at ``reach = ceil(3 * radius)``
pixels, with edges mirrored (half-sample symmetric: ``... b a | a b c ...``).

The stage streams: each output band of rows ``y0:y1`` reads input rows ``y0 - reach : y1 + reach``
(mirrored at the image's edges) and nothing else, and every output row is computed by the same
float32 operations whatever band it falls in, so a banded run is bit-identical to one band over
the whole image, for any band height and any first row.

Only ``tiledsr.stages.Stage`` and numpy are used, as a plug-in should.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from tiledsr.stages import Stage

__all__ = ["UnsharpConfig", "UnsharpStage", "gaussian_kernel", "reach", "unsharp", "unsharp_bands"]
__version__ = "0.1.0"

MAX_RADIUS = 64.0  # px of sigma; the blur then reaches 192 px
MAX_AMOUNT = 10.0
BAND_BYTES = 16 << 20  # output bytes per band (about; at least 8 rows and 2 * reach rows)


@dataclass(frozen=True)
class UnsharpConfig:
    """``radius``: gaussian sigma in px; ``amount``: gain of the detail added back;
    ``threshold``: detail of at most this size (in [0, 1] units) is left alone."""

    radius: float = 2.0
    amount: float = 0.5
    threshold: float = 0.0

    def check(self) -> str | None:
        if not 0 < self.radius <= MAX_RADIUS:
            return f"radius must be a gaussian sigma in (0, {MAX_RADIUS:g}] pixels, got {self.radius}"
        if not 0 <= self.amount <= MAX_AMOUNT:
            return f"amount must be in [0, {MAX_AMOUNT:g}] (0 leaves the image as it is), got {self.amount}"
        if not 0 <= self.threshold <= 1:
            return f"threshold must be in [0, 1] (a difference of pixel values), got {self.threshold}"
        return None


def reach(radius: float) -> int:
    """Pixels the blur of sigma ``radius`` reaches on each side: ``ceil(3 * radius)``, at least 1."""
    return max(1, math.ceil(3 * radius))


def gaussian_kernel(radius: float) -> np.ndarray:
    """Normalised 1-D gaussian of sigma ``radius``: float32 (2 * reach + 1,), summing to 1."""
    k = np.arange(-reach(radius), reach(radius) + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / radius) ** 2)
    return (w / w.sum()).astype(np.float32)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Indices folded into 0..n-1 by half-sample symmetric reflection, any distance out."""
    i = np.mod(index, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _convolve(p: np.ndarray, kernel: np.ndarray, axis: int, n: int) -> np.ndarray:
    """``sum_k kernel[k] * p[k:k + n]`` along ``axis`` (0 or 1), taps in order: float32."""
    def tap(k: int) -> np.ndarray:
        return p[k:k + n] if axis == 0 else p[:, k:k + n]

    acc = tap(0) * kernel[0]
    tmp = np.empty_like(acc)
    for k in range(1, len(kernel)):
        np.multiply(tap(k), kernel[k], out=tmp)
        acc += tmp
    return acc


def _band(src: Any, y0: int, y1: int, config: UnsharpConfig, kernel: np.ndarray) -> np.ndarray:
    """Output rows y0:y1 of the store ``src`` (H, W, C): float32 (y1 - y0, W, C) in [0, 1]."""
    h, w, c = src.shape
    r = (len(kernel) - 1) // 2
    colour = c - 1 if c in (2, 4) else c
    # 1. The rows the kernel reaches, mirrored at the top and bottom edges.
    rows = _mirror(np.arange(y0 - r, y1 + r), h)
    a = int(rows.min())
    block = src.read(a, int(rows.max()) + 1)
    # 2. Vertical, then horizontal pass (columns mirrored at the left and right edges).
    padded = block[rows - a, :, :colour]
    vertical = _convolve(padded, kernel, 0, y1 - y0)
    padded = vertical[:, _mirror(np.arange(-r, w + r), w)]
    del vertical
    blur = _convolve(padded, kernel, 1, w)
    del padded
    # 3. Add the thresholded detail back; alpha is copied as it is.
    x = block[y0 - a:y1 - a]
    detail = np.subtract(x[:, :, :colour], blur, out=blur)
    if config.threshold > 0:
        detail[np.abs(detail) <= config.threshold] = 0
    detail *= np.float32(config.amount)
    out = np.array(x, dtype=np.float32)
    sharp = out[:, :, :colour]
    sharp += detail
    np.clip(sharp, 0.0, 1.0, out=sharp)
    return out


def unsharp_bands(src: Any, config: UnsharpConfig, rows: int, start: int = 0) -> Iterator[np.ndarray]:
    """The unsharp mask of the store ``src`` (H, W, C) float32 in [0, 1] (anything with ``shape``
    and ``read(y0, y1)``), as consecutive bands of ``rows`` rows from row ``start`` on."""
    h = src.shape[0]
    kernel = gaussian_kernel(config.radius)
    for y0 in range(start, h, rows):
        yield _band(src, y0, min(h, y0 + rows), config, kernel)


class _Rows:
    """An (H, W, C) array seen as a store."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = array.shape

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return np.asarray(self.array[y0:y1, x0:x1], dtype=np.float32)


def unsharp(image: np.ndarray, radius: float = 2.0, amount: float = 0.5, threshold: float = 0.0) -> np.ndarray:
    """Unsharp mask of a whole (H, W) or (H, W, C) float32 image in [0, 1]: float32, same shape."""
    config = UnsharpConfig(radius, amount, threshold)
    problem = config.check()
    if problem:
        raise ValueError(problem)
    a = np.asarray(image, dtype=np.float32)
    flat = a.ndim == 2
    store = _Rows(a[:, :, None] if flat else a)
    out = next(unsharp_bands(store, config, max(1, a.shape[0])), np.zeros_like(store.array))
    return out[:, :, 0] if flat else out


class UnsharpStage(Stage):
    """Unsharp mask, scale 1, any channels (alpha untouched); streamed band by band, not tiled."""

    type = "unsharp"
    Config = UnsharpConfig

    @property
    def context(self) -> int:
        """Input pixels each output pixel depends on, on every side: the blur's reach."""
        return reach(self.config.radius)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def grid(self, height: int, width: int):
        return None  # rows of bands, no tiles

    def band_rows(self, width: int, channels: int) -> int:
        """Rows per output band: about BAND_BYTES, and at least twice the context."""
        return max(8, 2 * self.context, BAND_BYTES // max(1, 4 * width * channels))

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        """Bytes per band of n rows, R = 2 * context: the input rows read (n + R; a view or a copy,
        per store) and the previous band (n, held by whoever writes it), plus the largest step: the
        vertical pass (its mirrored rows n + R, a sum and a product of n), the horizontal one (rows
        R wider), or the detail, its threshold test and the output band; and the index arrays and
        numpy's iteration buffers (under 100 KB)."""
        n = min(self.band_rows(width, channels), height)
        big = 2 * self.context
        colour = channels - 1 if channels in (2, 4) else channels
        row, row_c = 4 * width * channels, 4 * width * colour
        step = max((3 * n + big) * row_c, 3 * n * row_c + 4 * colour * n * big, 9 * n * row_c // 4 + n * row)
        small = 32 * (n + width + 2 * big) + (64 << 10)
        return {"tile": 0, "canvas": (2 * n + big) * row + step + small}

    def describe(self) -> str:
        c = self.config
        return (f"unsharp radius {c.radius:g}px, amount {c.amount:g}, threshold {c.threshold:g} "
                f"(context {self.context}px; plug-in tiledsr-unsharp {__version__})")

    def stream(self, src, report, source=None, start: int = 0) -> Iterator[np.ndarray]:
        """Band by band: output rows y0:y1 read input rows y0 - context : y1 + context only."""
        h, w, c = src.shape
        rows = self.band_rows(w, c)
        total = -(-(h - start) // rows)
        for i, band in enumerate(unsharp_bands(src, self.config, rows, start), 1):
            report(i, total)
            yield band
