"""Write images: PNG and TIFF at 8 or 16 bits, JPEG and WebP at 8 bits, with their metadata.

:func:`write_image` checks the output first (:mod:`.checks`), then encodes into a temporary
file that is renamed into place, or writes stdout (:mod:`.files`). Every output carries the
Software marker ``tiledsr <version>``.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from ..errors import InputError
from .checks import FORMAT_NAMES, check_output
from .files import _atomic_write, _encode_errors, _write_stdout
from .meta import (PNG_DPI, SOFTWARE, exif_bytes, load_exif, normalize_exif, png_meta_chunks,
                   quiet_libraries, quoted, tiff_append_exif_ifds, tiff_text_tags)

__all__ = ["software_name", "write_image"]

BIGTIFF_BYTES = 2**32 - 2**25  # TIFFs with more pixel bytes than this are written as BigTIFF
TILED_TIFF_PIXELS = 2**24  # TIFFs with more pixels than this are written in tiles, streamed
TIFF_TILE = 512
JPEG_QUALITY = WEBP_QUALITY = 95
PNG_LEVEL = 3  # zlib level: about 4x faster than 6 on large outputs, files about 5-10% larger
JPEG_EXIF_BYTES = 65533  # one APP1 marker
JPEG_ICC_BYTES = 255 * 65519  # 255 APP2 markers
_DPI_RANGE = {"PNG": PNG_DPI, "JPEG": (1, 65535), "TIFF": (1e-3, 2**32 - 1),
              "WEBP": (1e-3, 2**32 - 1)}  # WebP: in its EXIF
_ROWS = 256  # rows converted at a time, to bound temporaries


def write_image(dst: str | Path, image: np.ndarray, *, bit_depth: int = 8,
                format: str | None = None, icc_profile: bytes | None = None,
                exif: bytes | None = None, dpi: tuple[float, float] | None = None,
                overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> tuple[str, ...]:
    """Write ``image`` (float H x W x C, C in 1..4; clipped to [0, 1] and rounded) to ``dst``.

    ``bit_depth`` 16 applies to PNG and TIFF; JPEG (quality 95, 4:4:4) and WebP (quality 95)
    are 8-bit, and JPEG has no alpha, so alpha is composited over white. ICC, EXIF
    (``Exif\\0\\0`` header optional) and DPI are written where the format holds them (WebP: DPI
    in its EXIF), with the Software marker ``tiledsr <version>``. "-" writes to stdout and needs
    ``format``. Without ``overwrite`` an existing file, or one of ``inputs``, is never replaced.
    Returns notes (one-line sentences) on what could not be written as asked: metadata
    dropped, 16 bits or alpha the format cannot hold.
    """
    name = str(dst)
    array = _checked(image, name)
    if bit_depth not in (8, 16):
        raise InputError(f"cannot write {quoted(name, 'stdout')}: bit depth {bit_depth} is not "
                         "8 or 16")
    fmt = check_output(dst, format=format, size=array.shape[:2], channels=array.shape[2],
                       overwrite=overwrite, inputs=inputs)
    depth, notes = _depth(fmt, bit_depth, array.shape[2])
    with quiet_libraries():
        meta, more = _metadata(fmt, icc_profile, exif, dpi)
    encode = functools.partial(_ENCODERS[fmt], image=array, depth=depth, **meta)
    if name == "-":
        _write_stdout(encode)
    else:
        with _encode_errors(name):
            _atomic_write(Path(dst), name, encode, overwrite, streamed=fmt == "TIFF")
    return notes + more


def _checked(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as H x W x C float; InputError for other shapes or dtypes."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or array.dtype.kind != "f" \
            or 0 in array.shape:
        raise InputError(f"cannot write {quoted(name, 'stdout')}: expected a float H x W x C "
                         f"image with C in 1..4, got shape {tuple(np.shape(image))} "
                         f"{np.asarray(image).dtype}")
    return array


def _depth(fmt: str, bit_depth: int, channels: int) -> tuple[int, tuple[str, ...]]:
    """The depth written, and notes on 16 bits or alpha the format cannot hold."""
    notes = []
    if bit_depth == 16 and fmt in ("JPEG", "WEBP"):
        notes.append(f"{FORMAT_NAMES[fmt]} holds 8 bits per channel; the output was written at 8 bits")
    if fmt == "JPEG" and channels in (2, 4):
        notes.append("JPEG has no alpha channel; transparency was flattened onto white")
    return (bit_depth if fmt in ("PNG", "TIFF") else 8), tuple(notes)


def _metadata(fmt: str, icc: bytes | None, exif: bytes | None,
              dpi: tuple[float, float] | None) -> tuple[dict, tuple[str, ...]]:
    """Encoder keywords (icc, exif, dpi, software) for what ``fmt`` can hold, and notes on the
    rest: EXIF that cannot be written again, a DPI out of the format's range, an ICC profile
    too large for JPEG."""
    software = software_name()
    dpi, notes = _dpi_for(fmt, dpi)
    exif, exif_notes = _exif_for(fmt, normalize_exif(exif), software, dpi)
    notes += exif_notes
    if icc and fmt == "JPEG" and len(icc) > JPEG_ICC_BYTES:
        icc = None
        notes.append("the ICC profile is too large for JPEG and was not written")
    return dict(icc=icc or None, exif=exif, dpi=dpi, software=software), tuple(notes)


def _exif_for(fmt: str, exif: bytes | None, software: str,
              dpi: tuple[float, float] | None) -> tuple[bytes | None, list[str]]:
    """EXIF re-serialised with Software = ``software`` and the resolution = ``dpi`` (JPEG and
    WebP always get EXIF; it is where WebP keeps its DPI)."""
    value = load_exif(exif)
    notes = ["the EXIF metadata is unreadable and was not written"] if exif and value is None \
        else []
    if value is None:
        if fmt not in ("JPEG", "WEBP"):
            return None, notes
        value = Image.Exif()
    value[SOFTWARE] = software
    if dpi:
        value[282], value[283], value[296] = float(dpi[0]), float(dpi[1]), 2  # per inch
    data, dropped = exif_bytes(value)
    if dropped:
        notes.append(f"{dropped} EXIF tag(s) could not be written and were dropped")
    if fmt == "JPEG" and data and len(data) > JPEG_EXIF_BYTES:
        notes.append(f"the EXIF metadata ({len(data):,} bytes) is too long for JPEG; only the "
                     "Software tag was written")
        value = Image.Exif()
        value[SOFTWARE] = software
        data = value.tobytes()
    return data, notes


def _dpi_for(fmt: str, dpi: tuple[float, float] | None) -> tuple[tuple[float, float] | None,
                                                                  list[str]]:
    """``dpi`` when ``fmt`` can store it, else None and a note."""
    if not dpi:
        return None, []
    try:
        x, y = (float(v) for v in dpi)
    except (TypeError, ValueError):
        return None, [f"the DPI {dpi!r} is not a pair of numbers and was not written"]
    low, high = _DPI_RANGE[fmt]
    if not (low <= x <= high and low <= y <= high):
        return None, [f"the DPI {x:g} x {y:g} is out of the range {fmt} can store; it was not "
                      "written"]
    return (x, y), []


@functools.cache
def software_name() -> str:
    """The Software marker of tiledsr's outputs: ``"tiledsr <version>"``."""
    from .. import __version__

    return f"tiledsr {__version__}"


def _quantize(image: np.ndarray, depth: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Rows ``start:stop`` as uint8/uint16: NaN to 0, clipped to [0, 1], scaled, rounded."""
    block = np.nan_to_num(np.asarray(image[start:stop], dtype=np.float32))
    np.clip(block, 0, 1, out=block)
    block *= np.float32(255 if depth == 8 else 65535)
    np.rint(block, out=block)
    return block.astype(np.uint8 if depth == 8 else np.uint16)


def _quantize_all(image: np.ndarray, depth: int) -> np.ndarray:
    out = np.empty(image.shape, np.uint8 if depth == 8 else np.uint16)
    for top in range(0, image.shape[0], _ROWS):
        out[top: top + _ROWS] = _quantize(image, depth, top, top + _ROWS)
    return out


# Encoders: fh is a seekable binary file; image float H x W x C; exif has the Exif\0\0 header;
# dpi fits the format (see _dpi_for); software is the Software marker.


def _write_png(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
               exif: bytes | None, dpi: tuple[float, float] | None, software: str) -> None:
    """libpng via imagecodecs (Pillow cannot write 16-bit colour); metadata chunks spliced in."""
    pixels = _quantize_all(image, depth)
    data = imagecodecs.png_encode(pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                                  level=PNG_LEVEL, filter=imagecodecs.PNG.FILTER.PAETH)
    fh.write(data[:33] + png_meta_chunks(icc, exif, dpi, software))  # after signature, IHDR
    fh.write(data[33:])


def _write_pillow(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
                  exif: bytes | None, dpi: tuple[float, float] | None, software: str,
                  fmt: str) -> None:
    """JPEG (4:4:4; alpha composited over white) and WebP (grey stored as RGB) at 8 bits."""
    if fmt == "JPEG" and image.shape[2] in (2, 4):
        alpha = np.clip(image[..., -1:], 0, 1)
        image = image[..., :-1] * alpha + (1 - alpha)
    pixels = _quantize_all(image, 8)
    im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    if fmt == "WEBP" and im.mode in ("L", "LA"):
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")
    params = {"icc_profile": icc or b"", "exif": exif or b"", "quality": WEBP_QUALITY}
    if fmt == "JPEG":
        params.update(quality=JPEG_QUALITY, subsampling=0,
                      dpi=tuple(round(v) for v in dpi) if dpi else (0, 0))
    im.save(fh, fmt, **params)


def _write_tiff(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
                exif: bytes | None, dpi: tuple[float, float] | None, software: str) -> None:
    """Deflate-compressed TIFF; tiled and streamed when large, BigTIFF beyond 4 GiB of pixels."""
    height, width, channels = image.shape
    dtype = np.dtype(np.uint8 if depth == 8 else np.uint16)
    bigtiff = height * width * channels * dtype.itemsize > BIGTIFF_BYTES
    tiled = height * width > TILED_TIFF_PIXELS
    data = _tiff_tiles(image, depth) if tiled else _quantize_all(image, depth)
    shape = (height, width) if channels == 1 else (height, width, channels)
    with tifffile.TiffWriter(fh, bigtiff=bigtiff) as tiff:
        tiff.write(
            data if tiled else data.reshape(shape), shape=shape, dtype=dtype,
            photometric="rgb" if channels >= 3 else "minisblack",
            extrasamples=("unassalpha",) if channels in (2, 4) else None,
            tile=(TIFF_TILE, TIFF_TILE) if tiled else None, compression="zlib", predictor=True,
            iccprofile=icc, resolution=dpi, resolutionunit="INCH" if dpi else None,
            metadata=None, software=software, extratags=tiff_text_tags(exif))
    if not bigtiff:
        tiff_append_exif_ifds(fh, exif)


def _tiff_tiles(image: np.ndarray, depth: int) -> Iterator[np.ndarray]:
    """Row-major TIFF tiles, converted one band of tile rows at a time."""
    for top in range(0, image.shape[0], TIFF_TILE):
        band = _quantize(image, depth, top, top + TIFF_TILE)
        for left in range(0, image.shape[1], TIFF_TILE):
            tile = band[:, left: left + TIFF_TILE]
            yield tile[..., 0] if image.shape[2] == 1 else tile


_ENCODERS: dict[str, Callable[..., None]] = {
    "PNG": _write_png,
    "JPEG": functools.partial(_write_pillow, fmt="JPEG"),
    "TIFF": _write_tiff,
    "WEBP": functools.partial(_write_pillow, fmt="WEBP"),
}
