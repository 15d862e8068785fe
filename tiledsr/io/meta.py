"""Image metadata: :class:`ImageInfo`, format sniffing, the pixel-count guard and EXIF helpers.

EXIF travels as bytes the way Pillow writes them (``Image.Exif().tobytes()``):
``b"Exif\\x00\\x00"`` followed by a TIFF-structured block.
"""
from __future__ import annotations

import json
import logging
import math
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
import tifffile
from PIL import Image, ImageFile, TiffImagePlugin

from ..errors import InputError
from ..quiet import LOCK
from ..text import show

__all__ = ["DEFAULT_MAX_PIXELS", "FORMATS", "ImageInfo", "check_size", "clean_exif", "sniff_format"]

DEFAULT_MAX_PIXELS = 2**28  # a 16384 x 16384 poster
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
              ".webp": "WEBP"}
EXIF_HEADER = b"Exif\x00\x00"
ORIENTATION = 0x0112
SOFTWARE = 0x0131
DESCRIPTION = 270
EXIF_IFD, GPS_IFD, INTEROP_IFD = 0x8769, 0x8825, 0xA005
# Descriptive IFD0 tags that may travel between formats (structural TIFF tags never do).
IFD0_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an image, after EXIF orientation is applied.

    ``width`` and ``height`` are in pixels as displayed; ``channels`` is 1 grey, 2 grey+alpha,
    3 RGB or 4 RGBA; ``bit_depth`` is 8 or 16 (float and 32-bit TIFF report 16, the depth they
    are written back at); ``exif`` has no orientation tag and only tags that can be written
    again; ``dpi`` is (x, y) dots per inch; ``software`` is the program that wrote the file, as
    its metadata says (PNG text "Software", TIFF tag 305, EXIF 0x0131), ``"tiledsr <version>"``
    for tiledsr's own outputs; ``notes`` are one-line sentences about what was dropped or
    converted on the way in (metadata that could not be kept, pages not read).
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
    software: str | None = None
    notes: tuple[str, ...] = ()


@contextmanager
def quiet_libraries() -> Iterator[None]:
    """Python warnings and tifffile's log records swallowed (so nothing reaches stderr); Pillow's
    pixel limit off (callers check the header first) and truncated files always failing,
    whatever the caller set. Serialised: these settings are process-wide."""
    logger = logging.getLogger("tifffile")
    with LOCK, warnings.catch_warnings():  # process-wide settings: one thread at a time
        warnings.simplefilter("ignore")
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, logger.disabled
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, logger.disabled = None, False, True
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, logger.disabled = saved


def quoted(name: str, stream: str = "stdin") -> str:
    """``'name'`` for messages (control characters escaped, a very long name elided in the
    middle); ``stream`` ("stdin" or "stdout") for ``-``."""
    return stream if name == "-" else f"'{show(name)}'"


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
        size, limit = pixel_counts(width * height, max_pixels)
        raise InputError(f"{quoted(name)} is {width}x{height} = {size}, above the limit of "
                         f"{limit}; pass --max-pixels N to allow it")


def pixel_counts(*counts: int) -> list[str]:
    """``counts`` as words in one unit: "4,096 pixels" below a megapixel, else "268.4 megapixels";
    exact pixels whenever the megapixel figures would read the same."""
    mega = [f"{n / 10**6:.1f}".removesuffix(".0") + " megapixels" for n in counts]
    if min(counts) < 10**6 or len(set(mega)) < len(mega):
        return [f"{n:,} pixels" for n in counts]
    return mega


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


def clean_exif(exif: bytes | None) -> tuple[bytes | None, tuple[str, ...]]:
    """EXIF re-serialised without its orientation tag, and notes on what had to be dropped.

    Tags Pillow cannot parse or write again (a resolution given as text, a GPS value out of
    range) are left out one by one; None when nothing is left.
    """
    if not exif:
        return None, ()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = load_exif(exif)
    if value is None:
        return None, ("its EXIF metadata is unreadable and was dropped",)
    value.pop(ORIENTATION, None)
    data, dropped = exif_bytes(value)
    notes = [f"{dropped} EXIF tag(s) could not be kept and were dropped"] if dropped else []
    if caught and not dropped:
        notes.append("its EXIF metadata is partly corrupt; the unreadable tags were dropped")
    return data, tuple(notes)


def exif_bytes(value: Image.Exif) -> tuple[bytes | None, int]:
    """(``Exif\\0\\0`` bytes or None when empty, how many tags had to be left out to write it)."""
    try:
        return _exif_or_none(value.tobytes()), 0
    except Exception:  # noqa: BLE001 - Pillow raises many types on values it cannot write
        pass
    keep, dropped = Image.Exif(), 0
    for tag in list(value):
        item = dict(value.get_ifd(tag)) if tag in (EXIF_IFD, GPS_IFD) else value[tag]
        if isinstance(item, dict):
            item.pop(INTEROP_IFD, None)
            good = {k: v for k, v in item.items() if _writable(tag, {k: v})}
            dropped += len(item) - len(good)
            if good:
                keep[tag] = good
        elif _writable(tag, item):
            keep[tag] = item
        else:
            dropped += 1
    try:
        return _exif_or_none(keep.tobytes()), dropped
    except Exception:  # noqa: BLE001 - tags that only fail together
        return None, len(value)


def _writable(tag: int, item: object) -> bool:
    probe = Image.Exif()
    try:
        probe[tag] = item
        probe.tobytes()
    except Exception:  # noqa: BLE001
        return False
    return True


def _exif_or_none(data: bytes) -> bytes | None:
    """None for an EXIF block without a single tag."""
    value = load_exif(data)
    return data if value is not None and len(value) else None


def exif_dpi(exif: bytes | None) -> tuple[float, float] | None:
    """DPI from the EXIF resolution tags (282, 283, unit 296: inch or cm); None without."""
    value = load_exif(exif)
    if value is None or 282 not in value or 283 not in value:
        return None
    try:
        per_inch = {2: 1.0, 3: 2.54}[int(value.get(296, 2))]
        return round_dpi([float(value[282]) * per_inch, float(value[283]) * per_inch])
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return None


def exif_software(exif: bytes | None) -> str | None:
    """The EXIF Software tag (0x0131), None when absent or not text."""
    value = load_exif(exif)
    software = value.get(SOFTWARE) if value is not None else None
    return clean_text(software)


def clean_text(value: object) -> str | None:
    """A metadata text value stripped of NULs and spaces; None when absent, empty or not text."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    return value.replace("\x00", "").strip() or None


def is_layout_description(text: object) -> bool:
    """True for ImageDescription texts that describe another program's data layout, not the
    picture: tifffile's JSON (``{"shape": [...]}``), ImageJ headers and OME-XML."""
    text = clean_text(text) or ""
    if text.startswith(("ImageJ=", "<?xml")) and ("ImageJ=" in text or "<OME" in text):
        return True
    if not text.startswith("{"):
        return False
    try:
        return "shape" in json.loads(text)
    except (ValueError, TypeError):
        return False


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
    except (TypeError, ValueError, OverflowError):
        return None
    return (x, y) if x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y) else None


def png_meta_chunks(icc: bytes | None, exif: bytes | None, dpi: tuple[float, float] | None,
                    software: str | None = None) -> bytes:
    """iCCP, eXIf, pHYs and tEXt Software chunks, to go right after IHDR.

    ``dpi`` must fit pHYs (whole dots per metre, 1 .. 2**32 - 1; see ``PNG_DPI``).
    """
    chunks = [_png_chunk(b"tEXt", b"Software\x00" + software.encode("latin-1", "replace"))] \
        if software else []
    if icc:
        chunks.append(_png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc)))
    if exif:
        chunks.append(_png_chunk(b"eXIf", exif.removeprefix(EXIF_HEADER)))
    if dpi:
        x, y = (round(v / 0.0254) for v in dpi)
        chunks.append(_png_chunk(b"pHYs", struct.pack(">IIB", x, y, 1)))
    return b"".join(chunks)


PNG_DPI = (0.0254, (2**32 - 1) * 0.0254)  # what pHYs can hold, in dots per inch


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each whole chunk of a PNG, in order; a cut-off last chunk is left out."""
    chunks, pos = [], 8
    while pos + 12 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos: pos + 8])
        if pos + 12 + size > len(data):
            break
        chunks.append((kind, data[pos + 8: pos + 8 + size]))
        pos += 12 + size
        if kind == b"IEND":
            break
    return chunks


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data and CRC."""
    return _png_chunk(kind, data)


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
            if tag in source and not (tag == DESCRIPTION and is_layout_description(source[tag])):
                keep[tag] = source[tag]
        for tag, sub in _sub_ifds(source).items():
            keep[tag] = sub
        return keep.tobytes() if len(keep) else None
    except Exception:  # noqa: BLE001 - broken metadata never stops the pixels
        return None


def _sub_ifds(value: Image.Exif) -> dict[int, dict]:
    """The non-empty Exif and GPS IFDs as dicts, without the Interop pointer (an offset into
    the source file that would point nowhere in ours)."""
    subs = {}
    for tag in (EXIF_IFD, GPS_IFD):
        sub = {k: v for k, v in value.get_ifd(tag).items() if k != INTEROP_IFD} \
            if tag in value else {}
        if sub:
            subs[tag] = sub
    return subs


def tiff_text_tags(exif: bytes | None) -> list[tuple[int, str, int, str, bool]]:
    """tifffile ``extratags`` for the descriptive IFD0 text tags in ``exif``.

    Software is left out (the writer sets its own) and so is a description of another
    program's data layout.
    """
    value = load_exif(exif)
    if value is None:
        return []
    return [(tag, "s", 0, value[tag], True) for tag in IFD0_TEXT_TAGS
            if tag != SOFTWARE and isinstance(value.get(tag), str) and value[tag].isascii()
            and "\x00" not in value[tag]
            and not (tag == DESCRIPTION and is_layout_description(value[tag]))]


def tiff_append_exif_ifds(fh: BinaryIO, exif: bytes | None) -> None:
    """Add the Exif and GPS IFDs of ``exif`` to a little-endian classic TIFF open in r+b.

    They and a new first IFD (the old entries plus the two pointers, sorted) are appended and
    the header is pointed at the new IFD; the old one stays behind as a few dead bytes.
    Sub-IFDs Pillow cannot serialise are left out.
    """
    value = load_exif(exif)
    subs = _sub_ifds(value) if value is not None else {}
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
