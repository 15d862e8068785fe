"""The memory model: what a run holds besides its tiles, and how tiles are fitted to a budget.

Calibrated by measurement (``tests/benchmarks/bench_memory.py``, BENCHMARKS.md): peak RSS of
``tiledsr upscale`` = :data:`BASE_BYTES` (the interpreter with torch, ncnn and the image
libraries loaded) + the largest stage's working set (model weights and activations per window
pixel per backend, the rows of tiles in flight, its input and output when they are in RAM) +
the writer's band.
"""
from __future__ import annotations

__all__ = ["BASE_BYTES", "band_bytes", "fit_tile", "writer_bytes"]

BASE_BYTES = 240 << 20  # measured: python + torch + ncnn + numpy/Pillow/tifffile/imagecodecs imported


def band_bytes(width: int, channels: int, height: int | None = None) -> int:
    """Bytes of one float32 band of rows (see :func:`tiledsr.resample.band_rows`) of an image
    ``height`` rows high."""
    from .resample import band_rows

    rows = band_rows(width, channels)
    return min(rows, height or rows) * width * channels * 4


def writer_bytes(width: int, channels: int, height: int | None = None) -> int:
    """The writer's share: a band regrouped, quantised and compressed (TIFF: 512-row bands)."""
    return max(band_bytes(width, channels, height), min(512, height or 512) * width * channels * 4)


def fit_tile(estimate, tile: int, overlap: int, least: int, budget: int, step: int = 16) -> tuple[int, int] | None:
    """The largest tile (and its overlap, shrunk in proportion) from ``tile`` down to ``least``
    whose ``estimate(tile, overlap)`` bytes fit ``budget``; None when even ``least`` does not."""
    for t in [*range(tile, least, -step), least]:
        o = min(overlap, overlap * t // max(tile, 1))
        if o < t and estimate(t, o) <= budget:
            return t, o
    return None
