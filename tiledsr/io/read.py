"""Read PNG, JPEG, TIFF and WebP images into float32 arrays, checking the header before decoding.

Pillow reads 8-bit PNG, JPEG and WebP; imagecodecs (libpng) reads 16-bit PNG, which Pillow
cannot keep at 16 bits in colour; tifffile reads every TIFF.
"""
from __future__ import annotations

import io
import struct
import sys
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageCms, ImageFile, UnidentifiedImageError

from ..errors import InputError
from .meta import (DEFAULT_MAX_PIXELS, ImageInfo, check_size, exif_orientation, normalize_exif,
                   orient, png_pixel_chunks, quoted, round_dpi, sniff_format, strip_orientation,
                   tiff_dpi, tiff_exif)

__all__ = ["probe", "read_image"]

_PILLOW_LOCK = threading.Lock()
_STDIN: bytes | None = None
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                  RuntimeError, IndexError, KeyError)
_TRUNCATED = ("truncat", "too small", "end of file", "ends early")  # words decoders use
_PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels
_P = tifffile.PHOTOMETRIC
_TIFF_COLOURS = {_P.MINISBLACK: 1, _P.MINISWHITE: 1, _P.PALETTE: 1, _P.RGB: 3, _P.YCBCR: 3,
                 _P.SEPARATED: 4}


@dataclass(frozen=True)
class _Source:
    name: str
    path: Path | None
    data: bytes | None  # the bytes read from stdin
    head: bytes
    format: str

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else open(self.path, "rb")


def probe(src: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header facts about ``src`` ("-" is stdin) without decoding pixels.

    Raises InputError for unreadable files and for images above ``max_pixels``.
    """
    return _read(src, max_pixels, decode=False)[1]


def read_image(src: str | Path,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``src`` ("-" is stdin) as displayed (EXIF orientation applied).

    Returns float32 H x W x C in [0, 1] (C = ``info.channels``; 8-bit values are k/255 and
    16-bit values k/65535, so writing back at the same depth is exact) and its ImageInfo.
    """
    pixels, info = _read(src, max_pixels, decode=True)
    if pixels.dtype.kind == "f":
        return np.ascontiguousarray(pixels, dtype=np.float32), info
    out = pixels.astype(np.float32, order="C")
    out /= np.float32(255 if pixels.dtype == np.uint8 else 65535)
    return out, info


def _read(src: str | Path, max_pixels: int, decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """1. find and sniff the file, 2. read header (+ pixels), 3. apply EXIF orientation."""
    source = _source(src)
    reader = _read_tiff if source.format == "TIFF" else _read_pillow
    with source.open() as fh, _decode_errors(source):
        pixels, info = reader(source, fh, max_pixels, decode)
    orientation = exif_orientation(info.exif)
    if pixels is not None:
        pixels = orient(pixels.reshape(*pixels.shape[:2], -1), orientation)
    width, height = (info.height, info.width) if orientation >= 5 else (info.width, info.height)
    return pixels, replace(info, width=width, height=height, exif=strip_orientation(info.exif))


def _source(src: str | Path) -> _Source:
    """Locate ``src`` and sniff its format; InputError for missing, empty or non-image files."""
    name = str(src)
    path, data = (None, _stdin_bytes()) if name == "-" else (Path(src), None)
    if path is not None and path.is_dir():
        raise InputError(f"cannot read {quoted(name)}: it is a folder, not an image file; "
                         "pass an image file")
    try:
        with (io.BytesIO(data) if path is None else open(path, "rb")) as fh:
            head = fh.read(64)
    except FileNotFoundError as err:
        raise InputError(f"cannot read {quoted(name)}: no such file; check the path") from err
    except OSError as err:
        raise InputError(f"cannot read {quoted(name)}: {err.strerror or err}; "
                         "check the path and its permissions") from err
    if not head:
        raise InputError(f"cannot read {quoted(name)}: the file is empty (0 bytes); re-export it")
    return _Source(name, path, data, head, sniff_format(head, name))


def _stdin_bytes() -> bytes:
    """All of stdin, read once and kept, so probe("-") then read_image("-") both work."""
    global _STDIN
    if _STDIN is None:
        _STDIN = sys.stdin.buffer.read()
    return _STDIN


@contextmanager
def _decode_errors(source: _Source) -> Iterator[None]:
    """Turn decoder exceptions into one-line InputErrors naming the file."""
    try:
        yield
    except _DECODE_ERRORS as err:
        text = " ".join(str(err).split()) or type(err).__name__
        lowered = text.lower()
        if isinstance(err, EOFError) or any(word in lowered for word in _TRUNCATED):
            reason = f"file is truncated (the {source.format} data ends early)"
        elif isinstance(err, UnidentifiedImageError):
            reason = f"the {source.format} header is corrupt or cut short"
        else:
            reason = f"the {source.format} data is corrupt or unsupported ({text})"
        raise InputError(f"cannot read {quoted(source.name)}: {reason}; re-export it") from err


@contextmanager
def _pillow_settings() -> Iterator[None]:
    """Pillow's own pixel limit off (we check the header first); truncated files always fail."""
    with _PILLOW_LOCK:
        saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _read_pillow(source: _Source, fh: BinaryIO, max_pixels: int,
                 decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """PNG, JPEG and WebP: header through Pillow; pixels uint8, or uint16 for 16-bit PNG."""
    png16 = source.format == "PNG" and source.head[24:25] == b"\x10"
    if source.format == "PNG" and source.head[12:16] == b"IHDR":  # size before Pillow sees it
        check_size(source.name, *struct.unpack(">II", source.head[16:24]), max_pixels)
    with _pillow_settings():
        im = Image.open(fh, formats=[source.format])
        check_size(source.name, im.width, im.height, max_pixels)
        mode = _target_mode(im)
        icc = im.info.get("icc_profile") or None
        if im.mode == "CMYK":
            icc = _srgb_profile() if icc else None
        channels = _png16_channels(source.head[25], im.info) if png16 else len(mode)
        dpi = round_dpi(im.info.get("dpi"), 1 if source.format == "PNG" else 2)
        info = ImageInfo(source.name, source.format, im.width, im.height, channels,
                         16 if png16 else 8, icc, normalize_exif(im.info.get("exif")), dpi)
        if not decode:
            return None, info
        if png16:
            fh.seek(0)
            return imagecodecs.png_decode(png_pixel_chunks(fh.read())), info
        return np.asarray(_converted(im, mode)), info


def _png16_channels(colour_type: int, info: dict) -> int:
    """Channels libpng delivers for a 16-bit PNG: a tRNS colour key becomes an alpha channel."""
    key = "transparency" in info and colour_type in (0, 2)
    return _PNG16_CHANNELS.get(colour_type, 0) + (1 if key else 0)


def _target_mode(im: Image.Image) -> str:
    """The Pillow mode an 8-bit image is delivered in: L, LA, RGB or RGBA."""
    alpha = "transparency" in im.info or im.mode in ("LA", "La", "PA", "RGBA", "RGBa")
    grey = im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
    return ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")


def _converted(im: Image.Image, mode: str) -> Image.Image:
    """Decode ``im`` and convert to ``mode``; CMYK goes through its ICC profile when it has one."""
    im.load()
    if im.mode == "CMYK" and im.info.get("icc_profile"):
        source = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    return im if im.mode == mode else im.convert(mode)


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _read_tiff(source: _Source, fh: BinaryIO, max_pixels: int,
               decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """Any TIFF through tifffile; the first page only."""
    with tifffile.TiffFile(fh) as tif:
        page = tif.pages.first
        check_size(source.name, page.imagewidth, page.imagelength, max_pixels)
        colours, alpha = _tiff_layout(source, page)
        palette = page.colormap if page.photometric == _P.PALETTE else None
        eight = page.dtype.itemsize == 1 if palette is None else not (palette % 257).any()
        icc = page.tags.valueof(34675)
        channels = (1 if colours == 1 and palette is None else 3) + alpha
        if page.photometric == _P.SEPARATED:
            icc = None  # a CMYK profile does not describe the RGB we deliver
        pixels = _tiff_pixels(page, colours, alpha, palette) if decode else None
    info = ImageInfo(source.name, "TIFF", page.imagewidth, page.imagelength, channels,
                     8 if eight else 16, bytes(icc) if icc else None, tiff_exif(fh),
                     tiff_dpi(page.tags))
    return pixels, info


def _tiff_layout(source: _Source, page: tifffile.TiffPage) -> tuple[int, int]:
    """(colour samples, 0 or 1 alpha) of a TIFF page; InputError for layouts we do not read."""
    colours = _TIFF_COLOURS.get(page.photometric)
    jpeg = page.compression == tifffile.COMPRESSION.JPEG
    if colours is None or page.photometric == _P.YCBCR and not jpeg:
        raise InputError(f"cannot read {quoted(source.name)}: TIFF colour model "
                         f"{page.photometric.name} is not supported; save it as RGB or greyscale")
    extra = page.samplesperpixel - colours
    if extra < 0 or page.photometric in (_P.MINISBLACK, _P.MINISWHITE) and extra > 1 \
            or page.dtype.kind not in "biuf":
        raise InputError(f"cannot read {quoted(source.name)}: TIFF with {page.samplesperpixel} "
                         f"samples of {page.dtype} per pixel as {page.photometric.name} is not "
                         "supported; save it as RGB(A) or greyscale(+alpha)")
    return colours, 0 if page.photometric == _P.PALETTE else min(extra, 1)


def _tiff_pixels(page: tifffile.TiffPage, colours: int, alpha: int,
                 palette: np.ndarray | None) -> np.ndarray:
    """H x W x C pixels: uint8, uint16, or float32 in [0, 1] for float and 32-bit TIFF."""
    data = page.asarray()
    if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)
    data = data.reshape(*data.shape[:2], -1)[..., : colours + alpha]
    if palette is not None:
        rgb = palette.T[data[..., 0]]
        return (rgb // 257).astype(np.uint8) if not (palette % 257).any() else rgb
    if data.dtype not in (np.uint8, np.uint16) or page.photometric in (_P.MINISWHITE, _P.SEPARATED):
        data = _tiff_float(data, page.photometric)
    return data


def _tiff_float(data: np.ndarray, photometric: int) -> np.ndarray:
    """float32 [0, 1] from any TIFF sample type; MINISWHITE inverted, CMYK(A) made RGB(A)."""
    if data.dtype.kind == "f":
        out = np.clip(np.nan_to_num(data.astype(np.float32)), 0, 1)
    elif data.dtype.kind == "b":
        out = data.astype(np.float32)
    else:
        out = data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max)
    if photometric == _P.MINISWHITE:
        out[..., 0] = 1 - out[..., 0]
    if photometric == _P.SEPARATED:
        white = 1 - out[..., 3:4]
        out = np.concatenate([(1 - out[..., :3]) * white, out[..., 4:]], axis=-1)
    return out
