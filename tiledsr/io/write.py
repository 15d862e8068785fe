"""Write images atomically: PNG and TIFF at 8 or 16 bits, JPEG and WebP at 8 bits.

A file is encoded into a temporary file in the destination folder and moved into place with
one rename, so a crash or error never leaves a partial output behind.
"""
from __future__ import annotations

import errno
import functools
import io
import os
import struct
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from ..errors import InputError, TiledsrError
from .meta import (EXTENSIONS, FORMATS, normalize_exif, png_meta_chunks, quoted,
                   tiff_append_exif_ifds, tiff_text_tags)

__all__ = ["output_format", "write_image"]

BIGTIFF_BYTES = 2**32 - 2**25  # TIFFs with more pixel bytes than this are written as BigTIFF
TILED_TIFF_PIXELS = 2**24  # TIFFs with more pixels than this are written in tiles, streamed
TIFF_TILE = 512
JPEG_QUALITY = WEBP_QUALITY = 95
PNG_LEVEL = 3  # zlib level: about 4x faster than 6 on large outputs, files about 5-10% larger
MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}  # libjpeg and libwebp limits
_ROWS = 256  # rows converted at a time, to bound temporaries
_ALIASES = {"JPG": "JPEG", "TIF": "TIFF"}
_USER_ERRNOS = (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS, errno.ENOTDIR)


def output_format(path: str | Path, format: str | None) -> str:
    """"PNG", "JPEG", "TIFF" or "WEBP" from ``format`` (any case, jpg/tif allowed) or the extension.

    InputError for unknown formats or extensions, a format that contradicts a known image
    extension, and stdout ("-") without a format.
    """
    name = str(path)
    ext = "" if name == "-" else Path(name).suffix.lower()
    by_ext = EXTENSIONS.get(ext)
    if format is not None:
        fmt = _ALIASES.get(format.strip().upper(), format.strip().upper())
        if fmt not in FORMATS:
            raise InputError(f"unknown output format {format!r}; use png, jpeg, tiff or webp")
        if by_ext and by_ext != fmt:
            raise InputError(f"output {quoted(name)} has the extension {ext} but the format is "
                             f"{fmt.lower()}; rename the output or change --format")
        return fmt
    if name == "-":
        raise InputError("writing to stdout ('-') needs a format; "
                         "pass --format png, jpeg, tiff or webp")
    if by_ext is None:
        raise InputError(f"cannot tell the output format of {quoted(name)} from its extension "
                         f"'{ext}'; use .png, .jpg, .tif or .webp, or pass --format")
    return by_ext


def write_image(dst: str | Path, image: np.ndarray, *, bit_depth: int = 8,
                format: str | None = None, icc_profile: bytes | None = None,
                exif: bytes | None = None, dpi: tuple[float, float] | None = None,
                overwrite: bool = False, inputs: Sequence[str | Path] = ()) -> None:
    """Write ``image`` (float H x W x C, C in 1..4; clipped to [0, 1] and rounded) to ``dst``.

    ``bit_depth`` 16 applies to PNG and TIFF; JPEG (quality 95, 4:4:4) and WebP (quality 95)
    are 8-bit, and JPEG has no alpha, so alpha is composited over white. ICC, EXIF
    (``Exif\\0\\0`` header optional) and DPI are written where the format holds them (WebP: no
    DPI). "-" writes to stdout and needs ``format``. Without ``overwrite`` an existing file, or
    one of ``inputs``, is never replaced.
    """
    # 1. Check the arguments before touching the disk.
    name = str(dst)
    fmt = output_format(name, format)
    image = _checked(image, name, fmt)
    if bit_depth not in (8, 16):
        raise InputError(f"cannot write {quoted(name)}: bit depth {bit_depth} is not 8 or 16")
    depth = bit_depth if fmt in ("PNG", "TIFF") else 8
    encode = functools.partial(_ENCODERS[fmt], image=image, depth=depth, icc=icc_profile or None,
                               exif=normalize_exif(exif), dpi=tuple(dpi) if dpi else None)
    # 2. Stdout: encode in memory, then write in one go.
    if name == "-":
        buffer = io.BytesIO()
        with _encode_errors(name):
            encode(buffer)
            sys.stdout.buffer.write(buffer.getvalue())
            sys.stdout.buffer.flush()
        return
    # 3. A file: refuse to clobber, then write a temporary file and rename it into place.
    path = Path(dst)
    _check_destination(path, name, inputs, overwrite)
    with _encode_errors(name):
        _atomic_write(path, name, encode, overwrite)


def _checked(image: np.ndarray, name: str, fmt: str) -> np.ndarray:
    """``image`` as H x W x C float; InputError for other shapes, dtypes or sizes."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or array.dtype.kind != "f" \
            or 0 in array.shape:
        raise InputError(f"cannot write {quoted(name)}: expected a float H x W x C image with C in "
                         f"1..4, got shape {tuple(np.shape(image))} {np.asarray(image).dtype}")
    if max(array.shape[:2]) > MAX_SIDE.get(fmt, 2**31 - 1):
        raise InputError(f"cannot write {quoted(name)}: {array.shape[1]}x{array.shape[0]} is "
                         f"larger than {fmt} allows ({MAX_SIDE[fmt]} pixels a side); "
                         "use --format tiff")
    return array


def check_destination(dst: str | Path, inputs: Sequence[str | Path] = (), overwrite: bool = False) -> None:
    """Raise InputError now if ``write_image`` would refuse ``dst`` (checked before any work)."""
    if str(dst) != "-":
        _check_destination(Path(dst), str(dst), inputs, overwrite)


def _check_destination(path: Path, name: str, inputs: Sequence[str | Path],
                       overwrite: bool) -> None:
    """InputError for a folder, a missing parent folder, an input file or an existing file."""
    if path.is_dir():
        raise InputError(f"cannot write {quoted(name)}: it is a folder; pass a file name")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {quoted(name)}: the folder '{path.parent}' does not exist; "
                         "create it first")
    if overwrite:
        return
    for source in inputs:
        if str(source) != "-" and _same_file(path, Path(source)):
            raise InputError(f"refusing to write {quoted(name)}: it is the input file; choose "
                             "another output name or pass --overwrite")
    if path.exists() or path.is_symlink():
        raise _exists(name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


@contextmanager
def _encode_errors(name: str) -> Iterator[None]:
    """Encoder and file-system exceptions as one-line errors naming the output."""
    try:
        yield
    except OSError as err:
        text = err.strerror or " ".join(str(err).split())
        kind = InputError if err.errno in _USER_ERRNOS else TiledsrError
        raise kind(f"cannot write {quoted(name, 'stdout')}: {text}; check the output folder "
                   "and its free space") from err
    except (ValueError, RuntimeError, struct.error, zlib.error) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise TiledsrError(f"cannot write {quoted(name, 'stdout')}: the encoder failed ({text}); "
                           "try another --format") from err


def _atomic_write(path: Path, name: str, encode: Callable[[BinaryIO], None],
                  overwrite: bool) -> None:
    """Encode into a hidden temporary file next to ``path``, then move it into place."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(temp, "w+b") as fh:
            encode(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temp, 0o666 & ~_umask())
        _publish(temp, path, name, overwrite)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _publish(temp: str, path: Path, name: str, overwrite: bool) -> None:
    """Rename ``temp`` to ``path``; without ``overwrite`` a hard link makes it no-clobber."""
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError as err:
        raise _exists(name) from err
    except OSError:  # no hard links on this file system: check, then rename
        if path.exists():
            raise _exists(name) from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def _exists(name: str) -> InputError:
    return InputError(f"refusing to write {quoted(name)}: the file already exists; "
                      "pass --overwrite to replace it")


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


# Encoders: fh is a seekable binary file; image float H x W x C; exif has the Exif\0\0 header.

def _write_png(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
               exif: bytes | None, dpi: tuple[float, float] | None) -> None:
    """libpng via imagecodecs (Pillow cannot write 16-bit colour); metadata chunks spliced in."""
    pixels = _quantize_all(image, depth)
    data = imagecodecs.png_encode(pixels[..., 0] if pixels.shape[2] == 1 else pixels,
                                  level=PNG_LEVEL, filter=imagecodecs.PNG.FILTER.PAETH)
    fh.write(data[:33] + png_meta_chunks(icc, exif, dpi))  # after the signature and IHDR
    fh.write(data[33:])


def _write_pillow(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
                  exif: bytes | None, dpi: tuple[float, float] | None, fmt: str) -> None:
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
        params.update(quality=JPEG_QUALITY, subsampling=0, dpi=dpi or (0, 0))
    im.save(fh, fmt, **params)


def _write_tiff(fh: BinaryIO, *, image: np.ndarray, depth: int, icc: bytes | None,
                exif: bytes | None, dpi: tuple[float, float] | None) -> None:
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
            metadata=None, software=False, extratags=tiff_text_tags(exif))
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
