"""Image metadata: :class:`ImageInfo`, format sniffing, the pixel-count guard and EXIF helpers.

EXIF travels as bytes the way Pillow writes them (``Image.Exif().tobytes()``):
``b"Exif\\x00\\x00"`` followed by a TIFF-structured block.
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import tifffile
from PIL import Image, TiffImagePlugin

from ..errors import InputError

__all__ = ["DEFAULT_MAX_PIXELS", "FORMATS", "ImageInfo", "check_size", "sniff_format"]

DEFAULT_MAX_PIXELS = 2**28  # a 16384 x 16384 poster
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
              ".webp": "WEBP"}
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION = 0x0112
EXIF_IFD, GPS_IFD = 0x8769, 0x8825
# Descriptive IFD0 tags that may travel between formats (structural TIFF tags never do).
IFD0_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, after EXIF orientation is applied.

    ``width`` and ``height`` are in pixels as displayed; ``channels`` is 1 grey, 2 grey+alpha,
    3 RGB or 4 RGBA; ``bit_depth`` is 8 or 16 (float and 32-bit TIFF report 16, the depth they
    are written back at); ``exif`` has no orientation tag; ``dpi`` is (x, y) dots per inch.
    """

    path: str
    format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    icc_profile: bytes | None
    exif: bytes | None
    dpi: tuple[float, float] | None


def quoted(name: str, stream: str = "stdin") -> str:
    """``'name'`` for messages; ``stream`` ("stdin" or "stdout") for ``-``."""
    return stream if name == "-" else f"'{name}'"


def sniff_format(head: bytes, name: str) -> str:
    """Format name from the first bytes of a file; InputError when it is none we read."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    text = all(32 <= c < 127 or c in b"\t\r\n" for c in head[:64])
    kind = "a text file" if text else f"unknown data (starts with {head[:8].hex(' ')})"
    raise InputError(
        f"cannot read {quoted(name)}: it is {kind}, not a PNG, JPEG, TIFF or WebP image; "
        "pass an image file")


def check_size(name: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse empty images and decompression bombs from header dimensions alone."""
    if width <= 0 or height <= 0:
        raise InputError(f"cannot read {quoted(name)}: the header says {width}x{height} pixels; "
                         "the file is corrupt, re-export it")
    if width * height > max_pixels:
        raise InputError(
            f"{quoted(name)} is {width}x{height} = {width * height // 10**6} megapixels, above the "
            f"limit of {max_pixels // 10**6} megapixels; pass --max-pixels N to allow it")


def normalize_exif(exif: bytes | None) -> bytes | None:
    """EXIF bytes with the ``Exif\\0\\0`` header (WebP stores them without), None when empty."""
    if not exif:
        return None
    return exif if exif.startswith(EXIF_HEADER) else EXIF_HEADER + exif


def load_exif(exif: bytes | None) -> Image.Exif | None:
    """Parsed EXIF, or None when absent or unreadable (broken metadata never stops pixels)."""
    if not exif:
        return None
    value = Image.Exif()
    try:
        value.load(exif)
        for tag in (EXIF_IFD, GPS_IFD):
            value.get_ifd(tag)  # parse the sub-IFDs now, while errors are still catchable here
    except Exception:  # noqa: BLE001 - Pillow raises many types on malformed EXIF
        return None
    return value


def exif_orientation(exif: bytes | None) -> int:
    """The EXIF orientation 1..8 (1 when absent or unreadable)."""
    value = load_exif(exif)
    orientation = value.get(ORIENTATION, 1) if value is not None else 1
    return orientation if orientation in range(1, 9) else 1


def strip_orientation(exif: bytes | None) -> bytes | None:
    """EXIF without the orientation tag; the bytes are untouched when it has none."""
    value = load_exif(exif)
    if value is None or ORIENTATION not in value:
        return exif
    del value[ORIENTATION]
    return value.tobytes()


def orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF orientation 1..8 to an H x W x C array (a view, as displayed)."""
    a = array
    ops = {
        2: lambda: a[:, ::-1], 3: lambda: a[::-1, ::-1], 4: lambda: a[::-1],
        5: lambda: a.transpose(1, 0, 2), 6: lambda: np.rot90(a, -1),
        7: lambda: a[::-1, ::-1].transpose(1, 0, 2), 8: lambda: np.rot90(a, 1),
    }
    return ops[orientation]() if orientation in ops else a


def round_dpi(value: object, decimals: int = 2) -> tuple[float, float] | None:
    """(x, y) DPI rounded (PNG stores whole dots per metre: 0.1), None when absent or zero."""
    try:
        x, y = (round(float(v), decimals) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def png_meta_chunks(icc: bytes | None, exif: bytes | None,
                    dpi: tuple[float, float] | None) -> bytes:
    """iCCP, eXIf and pHYs chunks, to go right after IHDR."""
    chunks = []
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(EXIF_HEADER)))
    if dpi:
        x, y = (round(v / 0.0254) for v in dpi)
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", x, y, 1)))
    return b"".join(chunks)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_pixel_chunks(data: bytes) -> bytes:
    """The PNG without metadata chunks (read already), so libpng has nothing to warn about."""
    keep, pos = [data[:8]], 8
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if kind[0] & 0x20 == 0 or kind == b"tRNS":  # IHDR, PLTE, IDAT, IEND; transparency
            keep.append(data[pos: pos + 12 + size])
        pos += 12 + size
    return b"".join(keep)


def tiff_dpi(tags: tifffile.TiffTags) -> tuple[float, float] | None:
    """DPI from XResolution/YResolution in inches or centimetres; None without a unit."""
    unit = int(tags.valueof(296, 2))
    x, y = tags.valueof(282), tags.valueof(283)
    if unit not in (2, 3) or not x or not y or not x[1] or not y[1]:
        return None
    per_inch = 2.54 if unit == 3 else 1.0
    return round_dpi([x[0] / x[1] * per_inch, y[0] / y[1] * per_inch])


def tiff_exif(fh: BinaryIO) -> bytes | None:
    """Descriptive EXIF (IFD0 text tags, orientation, Exif and GPS IFDs) of a classic TIFF.

    None for BigTIFF (Pillow cannot parse its IFDs) and for unreadable tags.
    """
    fh.seek(0)
    if fh.read(4)[2:4] in (b"+\x00", b"\x00+"):
        return None
    fh.seek(0)
    source, keep = Image.Exif(), Image.Exif()
    try:
        source.load_from_fp(fh)
        for tag in (*IFD0_TEXT_TAGS, ORIENTATION):
            if tag in source:
                keep[tag] = source[tag]
        for tag in (EXIF_IFD, GPS_IFD):
            if tag in source and source.get_ifd(tag):
                keep[tag] = dict(source.get_ifd(tag))
        return keep.tobytes() if len(keep) else None
    except Exception:  # noqa: BLE001 - broken metadata never stops the pixels
        return None


def tiff_text_tags(exif: bytes | None) -> list[tuple[int, str, int, str, bool]]:
    """tifffile ``extratags`` for the descriptive IFD0 text tags in ``exif``."""
    value = load_exif(exif)
    if value is None:
        return []
    return [(tag, "s", 0, value[tag], True) for tag in IFD0_TEXT_TAGS
            if isinstance(value.get(tag), str) and value[tag].isascii()]


def tiff_append_exif_ifds(fh: BinaryIO, exif: bytes | None) -> None:
    """Add the Exif and GPS IFDs of ``exif`` to a little-endian classic TIFF open in r+b.

    They and a new first IFD (the old entries plus the two pointers, sorted) are appended and
    the header is pointed at the new IFD; the old one stays behind as a few dead bytes.
    Sub-IFDs Pillow cannot serialise are left out.
    """
    value = load_exif(exif)
    subs = {tag: dict(value.get_ifd(tag)) for tag in (EXIF_IFD, GPS_IFD)
            if value is not None and value.get_ifd(tag)}
    fh.seek(0)
    header = fh.read(8)
    if not subs or header[:4] != b"II*\x00":
        return
    end = fh.seek(0, 2)
    end += end % 2
    mini = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    try:
        for tag, sub in subs.items():
            mini[tag] = sub
        data = mini.tobytes(end)
    except (ValueError, TypeError, KeyError, struct.error):
        return
    fh.seek(struct.unpack("<I", header[4:])[0])
    count = struct.unpack("<H", fh.read(2))[0]
    entries = [fh.read(12) for _ in range(count)]
    following = fh.read(4)  # offset of the next IFD
    entries += [data[2 + 12 * i: 14 + 12 * i] for i in range(len(subs))]  # the two pointers
    entries.sort(key=lambda entry: struct.unpack("<H", entry[:2])[0])
    fh.seek(0, 2)
    fh.write(b"\x00" * (end - fh.tell()) + data)
    start = fh.tell() + fh.tell() % 2
    fh.write(b"\x00" * (start - fh.tell()) + struct.pack("<H", len(entries)))
    fh.write(b"".join(entries) + following)
    fh.seek(4)
    fh.write(struct.pack("<I", start))
