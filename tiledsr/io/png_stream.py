"""A streaming PNG encoder: rows go in band by band, IDAT chunks come out as they fill.

Every row is Paeth-filtered (vectorised with numpy over a block of rows at a time, in buffers
reused from block to block) and fed to one ``zlib.compressobj``; the compressed stream leaves
in IDAT chunks of about :data:`IDAT_BYTES`. Memory: the band being encoded, one block's filter
buffers (about 12 x :data:`BLOCK_BYTES`) and the pending compressed bytes, never the image.
"""
from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Iterable

import numpy as np

from .meta import png_chunk, png_meta_chunks

__all__ = ["write_png"]

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> grey, grey+alpha, RGB, RGBA
IDAT_BYTES = 2**20  # compressed bytes per IDAT chunk, about
BLOCK_BYTES = 2**18  # raw bytes filtered at a time, to keep the temporaries in cache
PAETH = 4  # the filter-type byte that starts every row


def write_png(fh: BinaryIO, bands: Iterable[np.ndarray], *, size: tuple[int, int],
              channels: int, depth: int, level: int, icc: bytes | None, exif: bytes | None,
              dpi: tuple[float, float] | None, software: str | None) -> None:
    """Write a PNG of ``size`` (H, W) to ``fh`` (anything with ``write``) from ``bands``.

    ``bands``: consecutive uint8 (``depth`` 8) or uint16 (16) arrays (h, W, ``channels``) that
    cover the rows exactly, pulled one at a time while the file is written; a band may be
    reused by its producer once the next one is asked for. ``level`` is zlib's; ``icc``,
    ``exif``, ``dpi`` and ``software`` go into chunks before the pixels.
    """
    height, width = size
    header = struct.pack(">IIBBBBB", width, height, depth, COLOR_TYPES[channels], 0, 0, 0)
    fh.write(SIGNATURE + png_chunk(b"IHDR", header) + png_meta_chunks(icc, exif, dpi, software))
    bpp = channels * depth // 8
    pack = zlib.compressobj(level)
    pending = bytearray()
    prev = np.zeros(width * bpp, np.uint8)  # the row above the first one
    step = max(1, BLOCK_BYTES // (width * bpp))  # rows filtered at a time
    paeth = PaethFilter(min(step, height), width * bpp, bpp)
    for band in bands:
        raw = _raw_rows(band, depth)
        for top in range(0, len(raw), step):
            block = raw[top: top + step]
            pending += pack.compress(paeth(block, prev))
            np.copyto(prev, block[-1])
            pending = _flush_idat(fh, pending, IDAT_BYTES)
    pending += pack.flush()
    _flush_idat(fh, pending, 1)
    fh.write(png_chunk(b"IEND", b""))


def _raw_rows(band: np.ndarray, depth: int) -> np.ndarray:
    """uint8 (h, W * C * depth / 8): the rows' bytes as PNG stores them (16 bits big-endian)."""
    if depth == 16:
        band = band.astype(">u2", copy=False)
    raw = np.ascontiguousarray(band).view(np.uint8)
    return raw.reshape(band.shape[0], -1)


class PaethFilter:
    """Paeth filtering of blocks of up to ``rows`` rows of ``n`` raw bytes (``bpp`` bytes per
    pixel, the left neighbour's distance), in buffers made once and reused for every block."""

    def __init__(self, rows: int, n: int, bpp: int):
        self.bpp = bpp
        self.grid = np.zeros((rows + 1, n + bpp), np.uint8)  # the row above on top, zeros left
        self.wide = np.empty((rows + 1, n + bpp), np.int16)
        self.dist = np.empty((3, rows, n), np.int16)
        self.masks = np.empty((2, rows, n), bool)
        self.predictor = np.empty((rows, n), np.uint8)
        self.out = np.empty((rows, n + 1), np.uint8)
        self.out[:, 0] = PAETH

    def __call__(self, block: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """uint8 (r, n + 1): each row of ``block`` (uint8 r x n) after its filter-type byte;
        ``prev`` (uint8 n) is the raw row above the first. Valid until the next call."""
        rows, bpp = len(block), self.bpp
        grid, wide = self.grid[:rows + 1], self.wide[:rows + 1]
        grid[0, bpp:], grid[1:, bpp:] = prev, block
        np.copyto(wide, grid)
        left, up, corner = grid[1:, :-bpp], grid[:-1, bpp:], grid[:-1, :-bpp]
        dist_a, dist_b, dist_c = self.dist[:, :rows]
        # p = left + up - corner; the distances are |p - left|, |p - up|, |p - corner|
        np.subtract(wide[:-1, bpp:], wide[:-1, :-bpp], out=dist_a)  # p - left = up - corner
        np.subtract(wide[1:, :-bpp], wide[:-1, :-bpp], out=dist_b)  # p - up = left - corner
        np.add(dist_a, dist_b, out=dist_c)  # p - corner
        for dist in (dist_a, dist_b, dist_c):
            np.abs(dist, out=dist)
        take_up, take_left = self.masks[:, :rows]
        predictor = self.predictor[:rows]
        np.copyto(predictor, corner)
        np.copyto(predictor, up, where=np.less_equal(dist_b, dist_c, out=take_up))
        np.less_equal(dist_a, dist_b, out=take_left)
        take_left &= np.less_equal(dist_a, dist_c, out=take_up)
        np.copyto(predictor, left, where=take_left)
        out = self.out[:rows]
        np.subtract(block, predictor, out=out[:, 1:])  # modulo 256
        return out


def _flush_idat(fh: BinaryIO, pending: bytearray, least: int) -> bytearray:
    """Write ``pending`` as one IDAT chunk once it holds ``least`` bytes or more; what is left."""
    if len(pending) < least:
        return pending
    fh.write(struct.pack(">I", len(pending)) + b"IDAT" + pending
             + struct.pack(">I", zlib.crc32(pending, zlib.crc32(b"IDAT"))))
    return bytearray()
