"""Read PNG, JPEG, TIFF and WebP images into float32 arrays, checking the header before decoding.

Pillow reads 8-bit PNG, JPEG and WebP; imagecodecs (libpng) reads 16-bit PNG, which Pillow
cannot keep at 16 bits in colour; tifffile reads TIFF. Whatever these refuse but Pillow can
decode (CIELAB or YCbCr TIFFs, old-style JPEG TIFFs, damaged files) is read through Pillow,
converted to grey or RGB(A). Streams (stdin, FIFOs, ``<(...)`` pipes, devices) are read once
into memory, up to a size the pixel limit allows, and kept, so ``probe`` then ``read_image``
of the same stream both work. Third-party warnings and log lines never reach the terminal.
"""
from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, ImageCms, UnidentifiedImageError

from ..errors import InputError, OutOfMemory, TiledsrError
from ..quiet import quiet_fds
from .meta import (DEFAULT_MAX_PIXELS, ImageInfo, check_size, clean_exif, clean_text, exif_dpi,
                   exif_orientation, exif_software, normalize_exif, orient, png_chunk, png_chunks,
                   quiet_libraries, quoted, round_dpi, tiff_dpi, tiff_exif)
from .source import Source, open_source, reason

__all__ = ["probe", "read_image"]

_TRUNCATED = ("truncat", "too small", "end of file", "ends early", "premature", "short read")
_PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> channels
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
          (1, 0, 2, 1))  # (top, left, row step, column step) of the seven interlace passes
_LAYOUT = {1: "grey", 2: "grey + alpha", 3: "RGB", 4: "RGBA"}
_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow modes delivered as 16-bit grey
_P = tifffile.PHOTOMETRIC
_TIFF_COLOURS = {_P.MINISBLACK: 1, _P.MINISWHITE: 1, _P.PALETTE: 1, _P.RGB: 3, _P.YCBCR: 3,
                 _P.SEPARATED: 4}


class _Unsupported(Exception):
    """A layout our own reader does not handle; Pillow gets a try before it is reported."""


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
    InputError (one line, naming the file) for anything that is not a readable image.
    """
    pixels, info = _read(src, max_pixels, decode=True)
    return to_float(pixels), info


def to_float(pixels: np.ndarray) -> np.ndarray:
    """C-contiguous float32 in [0, 1] from decoded pixels: uint8 as k/255, uint16 as k/65535,
    float (already in [0, 1]) as is."""
    if pixels.dtype.kind == "f":
        return np.ascontiguousarray(pixels, dtype=np.float32)
    out = pixels.astype(np.float32, order="C")
    out /= np.float32(255 if pixels.dtype == np.uint8 else 65535)
    return out


def _read(src: str | Path, max_pixels: int, decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """1. find and sniff the file, 2. read header (+ pixels), 3. apply EXIF orientation."""
    source = open_source(src, max_pixels, keep=not decode)
    return read_source(source, max_pixels, decode)[:2]


def read_source(source: Source, max_pixels: int,
                decode: bool) -> tuple[np.ndarray | None, ImageInfo, int]:
    """Steps 2 and 3 of :func:`_read` for a located ``source``, and the EXIF orientation (1..8)
    applied. Pixels (when ``decode``): H x W x C uint8, uint16, or float32 in [0, 1], as
    displayed (possibly a view)."""
    with quiet_libraries():
        pixels, info = _decode(source, max_pixels, decode)
        orientation = exif_orientation(info.exif)
        exif, notes = clean_exif(info.exif)
        software = info.software or exif_software(info.exif)
    if pixels is not None:
        pixels = orient(pixels.reshape(*pixels.shape[:2], -1), orientation)
    width, height = (info.height, info.width) if orientation >= 5 else (info.width, info.height)
    return pixels, replace(info, width=width, height=height, exif=exif, software=software,
                           notes=info.notes + notes), orientation


def _decode(source: Source, max_pixels: int,
            decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """Our reader for the format; when it fails, Pillow's own decoding; else one InputError."""
    reader = _read_tiff if source.format == "TIFF" else _read_pillow
    try:
        with source.open() as fh:
            return reader(source, fh, max_pixels, decode)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders of hostile files raise anything
        try:
            with source.open() as fh:
                pixels, info = _read_any(source, fh, max_pixels, decode)
        except InputError:
            raise
        except Exception:  # noqa: BLE001 - Pillow cannot either: report our reader's reason
            raise _input_error(source, err) from err
        why = str(err).split(";")[0] if isinstance(err, _Unsupported) else reason(err, 100)
        note = (f"read through Pillow as {info.bit_depth}-bit {_LAYOUT[info.channels]} "
                f"(tiledsr's own reader: {why})")
        return pixels, replace(info, notes=info.notes + (note,))


def _input_error(source: Source, err: Exception) -> TiledsrError:
    """One line naming the file and why it cannot be read."""
    if isinstance(err, _Unsupported):
        return InputError(f"cannot read {quoted(source.name)}: {err}")
    if isinstance(err, MemoryError):
        return OutOfMemory(f"not enough memory to decode {quoted(source.name)}; free memory or "
                           "pass a smaller --max-pixels")
    text = reason(err)
    if isinstance(err, EOFError) or any(word in text.lower() for word in _TRUNCATED):
        why = f"file is truncated (the {source.format} data ends early)"
    elif isinstance(err, UnidentifiedImageError):
        why = f"the {source.format} header is corrupt or cut short"
    else:
        why = f"the {source.format} data is corrupt or unsupported ({text})"
    return InputError(f"cannot read {quoted(source.name)}: {why}; re-export it")


# --- PNG, JPEG, WebP ---------------------------------------------------------------------------

def _read_pillow(source: Source, fh: BinaryIO, max_pixels: int,
                 decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """PNG, JPEG and WebP: header through Pillow; pixels uint8, or uint16 for 16-bit PNG."""
    png16 = source.format == "PNG" and source.head[24:25] == b"\x10"
    if source.format == "PNG" and source.head[12:16] == b"IHDR":  # size before Pillow sees it
        check_size(source.name, *struct.unpack(">II", source.head[16:24]), max_pixels)
    im = Image.open(fh, formats=[source.format])
    check_size(source.name, im.width, im.height, max_pixels)
    mode = _target_mode(im)
    icc, notes = _icc_for(im)
    channels = _png16_channels(source.head[25], im.info) if png16 else len(mode)
    pixels = None
    if decode and png16:
        fh.seek(0)
        pixels = _png16_pixels(fh.read())
    elif decode:
        pixels = np.asarray(_converted(im, mode, icc is not None))
    return pixels, _pillow_info(source, im, channels, 16 if png16 else 8, icc, notes)


def _pillow_info(source: Source, im: Image.Image, channels: int, depth: int,
                 icc: bytes | None, notes: tuple[str, ...]) -> ImageInfo:
    """ImageInfo from an open Pillow image (TIFF metadata is read from the file itself).

    Call it after the pixels are taken: counting frames seeks through the file.
    """
    if source.format == "TIFF":
        with source.open() as fh:
            exif = tiff_exif(fh)
        software = clean_text(getattr(im, "tag_v2", {}).get(305))
    else:
        exif, software = normalize_exif(im.info.get("exif")), clean_text(im.info.get("Software"))
    dpi = round_dpi(im.info.get("dpi"), 1 if source.format == "PNG" else 2)
    if source.format == "WEBP":
        dpi = exif_dpi(exif)  # WebP keeps its DPI in EXIF
    info = ImageInfo(source.name, source.format, im.width, im.height, channels, depth, icc, exif,
                     dpi, software, notes)
    frames = _frames(im)
    if frames > 1:
        info = replace(info, notes=notes + (f"it has {frames} frames or pages; only the first "
                                            "is read",))
    return info


def _frames(im: Image.Image) -> int:
    """How many frames or pages Pillow finds (1 when a later one is unreadable)."""
    try:
        frames = getattr(im, "n_frames", 1)
    except Exception:  # noqa: BLE001 - a broken later frame does not matter
        return 1
    return frames if isinstance(frames, int) else 1


def _icc_for(im: Image.Image) -> tuple[bytes | None, tuple[str, ...]]:
    """The ICC profile the delivered pixels are in, and a note when one had to be dropped.

    CMYK is delivered as sRGB converted through its own profile, so it gets an sRGB profile;
    a CMYK profile that cannot be parsed is dropped (plain conversion)."""
    icc = im.info.get("icc_profile") or None
    if im.mode != "CMYK" or not icc:
        return (icc if isinstance(icc, bytes) else None), ()
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception:  # noqa: BLE001 - littlecms raises its own types
        return None, ("its CMYK colour profile is unreadable and was dropped; colours are "
                      "converted without it",)
    return _srgb_profile(), ()


def _png16_channels(colour_type: int, info: dict) -> int:
    """Channels libpng delivers for a 16-bit PNG: a tRNS colour key becomes an alpha channel."""
    key = "transparency" in info and colour_type in (0, 2)
    return _PNG16_CHANNELS.get(colour_type, 0) + (1 if key else 0)


def _target_mode(im: Image.Image) -> str:
    """The Pillow mode an 8-bit image is delivered in: L, LA, RGB or RGBA."""
    alpha = "transparency" in im.info or im.mode in ("LA", "La", "PA", "RGBA", "RGBa")
    grey = im.mode in ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
    return ("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB")


def _converted(im: Image.Image, mode: str, profiled: bool) -> Image.Image:
    """Decode ``im`` and convert to ``mode``; CMYK goes through its ICC profile when
    ``profiled`` (checked readable by :func:`_icc_for`)."""
    im.load()
    if im.mode == "CMYK" and profiled:
        source = ImageCms.ImageCmsProfile(io.BytesIO(im.info["icc_profile"]))
        srgb = ImageCms.createProfile("sRGB")
        return ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    return im if im.mode == mode else im.convert(mode)


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _png16_pixels(data: bytes) -> np.ndarray:
    """Pixels of a 16-bit PNG through libpng, from a rebuilt file libpng has nothing to warn
    about: IHDR (+ tRNS) and the image data re-stored, one non-interlaced image per Adam7 pass.

    Returns uint16 H x W (grey) or H x W x C. The zlib stream is checked here (zlib.error,
    EOFError when it ends early).
    """
    chunks = png_chunks(data)
    width, height, _, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1][:13])
    trns = next((d for k, d in chunks if k == b"tRNS"), b"")
    step = _PNG16_CHANNELS[colour] * 2
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    sizes = [(math.ceil((height - y) / dy), math.ceil((width - x) / dx)) for y, x, dy, dx in passes]
    need = sum(h * (1 + w * step) for h, w in sizes if h and w)
    raw = zlib.decompressobj().decompress(b"".join(d for k, d in chunks if k == b"IDAT"), need)
    if len(raw) < need:
        raise EOFError("the PNG image data ends early")
    out, pos = None, 0
    for (y, x, dy, dx), (h, w) in zip(passes, sizes):
        if not h or not w:
            continue
        part = _libpng(w, h, colour, trns, memoryview(raw)[pos: pos + h * (1 + w * step)])
        pos += h * (1 + w * step)
        if out is None:
            out = np.empty((height, width, *part.shape[2:]), part.dtype)
        out[y::dy, x::dx] = part
    return out


def _libpng(width: int, height: int, colour: int, trns: bytes, rows: memoryview) -> np.ndarray:
    """Decode filtered 16-bit scanlines through libpng (imagecodecs)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + (png_chunk(b"tRNS", trns) if trns else b"")
            + png_chunk(b"IDAT", zlib.compress(rows, 0)) + png_chunk(b"IEND", b""))
    with quiet_fds():
        return imagecodecs.png_decode(data)


# --- TIFF --------------------------------------------------------------------------------------

def _read_tiff(source: Source, fh: BinaryIO, max_pixels: int,
               decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """Any TIFF through tifffile; the first page only."""
    with quiet_fds(), tifffile.TiffFile(fh) as tif:
        page = tif.pages.first
        check_size(source.name, page.imagewidth, page.imagelength, max_pixels)
        colours, alpha = _tiff_layout(page)
        palette = page.colormap if page.photometric == _P.PALETTE else None
        eight = page.dtype.itemsize == 1 if palette is None else _palette8(palette) is not None
        icc = page.tags.valueof(34675)
        channels = (1 if colours == 1 and palette is None else 3) + alpha
        if page.photometric == _P.SEPARATED:
            icc = None  # a CMYK profile does not describe the RGB we deliver
        pixels = _tiff_pixels(page, colours, alpha, palette) if decode else None
        pages = _page_count(tif)
        software = clean_text(page.tags.valueof(305))
    notes = (f"it has {pages} pages; only the first is read",) if pages > 1 else ()
    info = ImageInfo(source.name, "TIFF", page.imagewidth, page.imagelength, channels,
                     8 if eight else 16, bytes(icc) if isinstance(icc, bytes) and icc else None,
                     tiff_exif(fh), tiff_dpi(page.tags), software, notes)
    return pixels, info


def _page_count(tif: tifffile.TiffFile) -> int:
    """How many pages tifffile finds (1 when a later one is unreadable)."""
    try:
        return len(tif.pages)
    except Exception:  # noqa: BLE001 - a broken later page does not matter
        return 1


def _tiff_layout(page: tifffile.TiffPage) -> tuple[int, int]:
    """(colour samples, 0 or 1 alpha) of a TIFF page; _Unsupported for layouts we do not read."""
    colours = _TIFF_COLOURS.get(page.photometric)
    jpeg = page.compression == tifffile.COMPRESSION.JPEG
    if colours is None or page.photometric == _P.YCBCR and not jpeg:
        raise _Unsupported(f"TIFF colour model {_photometric(page)} is not supported; save it "
                           "as RGB or greyscale")
    extra = page.samplesperpixel - colours
    if extra < 0 or page.photometric in (_P.MINISBLACK, _P.MINISWHITE) and extra > 1 \
            or page.dtype is None or page.dtype.kind not in "biuf":
        kind = page.dtype or f"{page.bitspersample}-bit samples of format {page.sampleformat}"
        raise _Unsupported(f"TIFF with {page.samplesperpixel} samples of {kind} per pixel as "
                           f"{_photometric(page)} is not supported; save it as RGB(A) or "
                           "greyscale(+alpha)")
    return colours, 0 if page.photometric == _P.PALETTE else min(extra, 1)


def _photometric(page: tifffile.TiffPage) -> str:
    value = page.photometric
    name = getattr(value, "name", None) or (str(value) if value not in (None, ()) else "")
    return name or "(missing)"


def _tiff_pixels(page: tifffile.TiffPage, colours: int, alpha: int,
                 palette: np.ndarray | None) -> np.ndarray:
    """H x W x C pixels: uint8, uint16, or float32 in [0, 1] for float and 32-bit TIFF."""
    data = page.asarray()
    if page.planarconfig == tifffile.PLANARCONFIG.SEPARATE and page.samplesperpixel > 1:
        data = np.moveaxis(data, 0, -1)
    data = data.reshape(*data.shape[:2], -1)[..., : colours + alpha]
    if palette is not None:
        index = np.minimum(data[..., 0].astype(np.intp), palette.shape[1] - 1)  # 1-bit: bools
        table = _palette8(palette)
        return (table if table is not None else palette).T[index]
    if data.dtype not in (np.uint8, np.uint16) or page.photometric in (_P.MINISWHITE, _P.SEPARATED):
        data = _tiff_float(data, page.photometric)
    return data


def _palette8(palette: np.ndarray) -> np.ndarray | None:
    """A 16-bit TIFF colour map as 8-bit values when it holds only those (v * 257, or v << 8
    as Pillow writes them); None when it needs 16 bits."""
    for scale in (257, 256):
        if not (palette % scale).any() and palette.max(initial=0) // scale <= 255:
            return (palette // scale).astype(np.uint8)
    return None


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


# --- anything else Pillow decodes --------------------------------------------------------------

def _read_any(source: Source, fh: BinaryIO, max_pixels: int,
              decode: bool) -> tuple[np.ndarray | None, ImageInfo]:
    """Pillow's decoding of any mode (LAB, YCbCr, CMYK, 16-bit grey, float, ...), delivered as
    8-bit L/LA/RGB/RGBA, 16-bit grey (uint16) or float grey in [0, 1]."""
    with quiet_fds():
        im = Image.open(fh)
        check_size(source.name, im.width, im.height, max_pixels)
        icc, notes = _icc_for(im)
        deep = im.mode in _GREY16 + ("F",) and "transparency" not in im.info
        mode = im.mode if deep else _target_mode(im)
        if im.mode in ("LAB", "HSV", "YCbCr"):
            icc = None  # converted to RGB below, which these profiles do not describe
        pixels = _any_pixels(im, mode, icc is not None) if decode else None
        return pixels, _pillow_info(source, im, 1 if deep else len(mode), 16 if deep else 8,
                                    icc, notes)


def _any_pixels(im: Image.Image, mode: str, profiled: bool) -> np.ndarray:
    """Pixels of a Pillow image in ``mode`` (from :func:`_read_any`)."""
    im.load()
    if mode == "F":
        return np.clip(np.nan_to_num(np.asarray(im, dtype=np.float32)), 0, 1)
    if mode in _GREY16:
        return np.clip(np.asarray(im).astype(np.int64), 0, 65535).astype(np.uint16)
    return np.asarray(_converted(im, mode, profiled))
