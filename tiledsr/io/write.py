"""Write images: PNG and TIFF at 8 or 16 bits, JPEG and WebP at 8 bits, with their metadata.

:func:`write_bands` checks the output first (:mod:`.checks`), then encodes row bands pulled
one at a time into a temporary file that is renamed into place, or writes stdout
(:mod:`.files`); :func:`write_image` writes a whole array through it. PNG (our own streaming
encoder, :mod:`.png_stream`) and TIFF hold one band at a time; JPEG and WebP, bounded by
their size limits, gather the image first. Every output carries the Software marker
``tiledsr <version>``.
"""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Sequence

import numpy as np
import tifffile
from PIL import Image

from ..errors import InputError
from . import png_stream
from .checks import FORMAT_NAMES, check_output
from .files import _atomic_write, _encode_errors, _write_stdout
from .meta import (PNG_DPI, SOFTWARE, exif_bytes, load_exif, normalize_exif, quiet_libraries,
                   quoted, tiff_append_exif_ifds, tiff_text_tags)

__all__ = ["quantize", "software_name", "write_bands", "write_image"]

BIGTIFF_BYTES = 2**32 - 2**25  # TIFFs with more pixel bytes than this are written as BigTIFF
TILED_TIFF_PIXELS = 2**24  # TIFFs with more pixels than this are written in tiles
TIFF_TILE = 512
TIFF_STRIP_BYTES = 2**18  # bytes per strip of a TIFF in strips (tifffile's default)
JPEG_QUALITY = WEBP_QUALITY = 95
PNG_LEVEL = 3  # zlib level: about 4x faster than 6 on large outputs, files about 5-10% larger
JPEG_EXIF_BYTES = 65533  # one APP1 marker
JPEG_ICC_BYTES = 255 * 65519  # 255 APP2 markers
_DPI_RANGE = {"PNG": PNG_DPI, "JPEG": (1, 65535), "TIFF": (1e-3, 2**32 - 1),
              "WEBP": (1e-3, 2**32 - 1)}  # WebP: in its EXIF
_ROWS = 256  # rows converted at a time, to bound temporaries
_STREAMED = ("PNG", "TIFF")  # encoders that hold one band at a time


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
    dropped, 16 bits or alpha the format cannot hold. :func:`write_bands` of its rows.
    """
    array = _checked(image, str(dst))
    return write_bands(dst, (array[top: top + _ROWS] for top in range(0, len(array), _ROWS)),
                       size=array.shape[:2], channels=array.shape[2], bit_depth=bit_depth,
                       format=format, icc_profile=icc_profile, exif=exif, dpi=dpi,
                       overwrite=overwrite, inputs=inputs)


def write_bands(dst: str | Path, bands: Iterable[np.ndarray], *, size: tuple[int, int],
                channels: int, bit_depth: int = 8, format: str | None = None,
                icc_profile: bytes | None = None, exif: bytes | None = None,
                dpi: tuple[float, float] | None = None, overwrite: bool = False,
                inputs: Sequence[str | Path] = ()) -> tuple[str, ...]:
    """Write an image of ``size`` (H, W) and ``channels`` (1..4) from ``bands``, pulled one at a
    time while it is encoded; otherwise as :func:`write_image`, whose notes it returns.

    ``bands``: consecutive row bands covering rows 0..H in order, of any heights, each
    (h, W, C) (or (h, W) when C is 1): float (NaN to 0, clipped to [0, 1], rounded) or
    already quantised, uint8 for ``bit_depth`` 8 and uint16 for 16, written as is. The output
    is checked before the first band is pulled; PNG and TIFF then hold one band at a time
    (TIFF: :data:`TIFF_TILE` rows), JPEG and WebP gather the image. A band of the wrong shape
    or dtype, or too many or too few rows, raises ValueError; what ``bands`` itself raises
    passes through unchanged; either way nothing is left behind and ``bands`` is closed.
    """
    name = str(dst)
    if bit_depth not in (8, 16):
        raise InputError(f"cannot write {quoted(name, 'stdout')}: bit depth {bit_depth} is not "
                         "8 or 16")
    height, width = _image_size(size, channels, name)
    fmt = check_output(dst, format=format, size=(height, width), channels=channels,
                       overwrite=overwrite, inputs=inputs)
    depth, notes = _depth(fmt, bit_depth, channels)
    with quiet_libraries():
        meta, more = _metadata(fmt, icc_profile, exif, dpi)
    source = _Bands(bands, (height, width), channels, bit_depth, name)
    encode = functools.partial(_ENCODERS[fmt], bands=source, size=(height, width),
                               channels=channels, depth=depth, **meta)
    try:
        with _encode_errors(name, keep=source.raised):
            if name == "-":
                _write_stdout(encode, streamed=fmt == "PNG")
            else:
                _atomic_write(Path(dst), name, encode, overwrite, streamed=fmt in _STREAMED)
    finally:
        source.close()
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


def _image_size(size: tuple[int, int], channels: int, name: str) -> tuple[int, int]:
    """(H, W) as ints; ValueError unless both are positive and ``channels`` is 1..4."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        height = width = 0
    if height < 1 or width < 1 or channels not in (1, 2, 3, 4):
        raise ValueError(f"cannot write {quoted(name, 'stdout')}: size {size!r} and channels "
                         f"{channels!r} are not (H, W) > 0 and 1..4")
    return height, width


class _Bands:
    """The caller's bands as they are pulled: each checked against the image (ValueError) and
    made (h, W, C); :meth:`raised` tells what came from them, so that it passes through."""

    def __init__(self, bands: Iterable[np.ndarray], size: tuple[int, int], channels: int,
                 bit_depth: int, name: str):
        self._source = iter(bands)
        self._size, self._channels, self._name = size, channels, name
        self._dtype = np.dtype(np.uint8 if bit_depth == 8 else np.uint16)
        self._errors: list[BaseException] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        height, rows = self._size[0], 0
        band = self._next()
        while band is not None:
            band = self._band(band, rows)
            rows += len(band)
            if rows == height:  # the end is checked before the last band goes out
                while (extra := self._next()) is not None:
                    self._band(extra, rows)  # ValueError unless empty
            if len(band):
                yield band
            band = self._next() if rows < height else None
        if rows != height:
            raise self._fail(f"the bands hold {rows} rows, not the image's {height}")

    def _next(self) -> np.ndarray | None:
        """The next band as given, None at the end; what the iterator raises is remembered."""
        try:
            return next(self._source)
        except StopIteration:
            return None
        except BaseException as err:
            self._errors.append(err)
            raise

    def _band(self, band: np.ndarray, top: int) -> np.ndarray:
        """``band`` (the one starting at row ``top``) as (h, W, C); ValueError when it does not
        fit the image."""
        array = np.asarray(band)
        if array.ndim == 2 and self._channels == 1:
            array = array[..., None]
        (height, width), channels = self._size, self._channels
        if array.ndim != 3 or array.shape[1:] != (width, channels):
            raise self._fail(f"the band at row {top} has shape {np.shape(band)}, not "
                             f"(rows, {width}, {channels})")
        if array.dtype.kind != "f" and array.dtype != self._dtype:
            raise self._fail(f"the band at row {top} is {array.dtype}, not float or "
                             f"{self._dtype}")
        if top + len(array) > height:
            raise self._fail(f"the bands hold more than the image's {height} rows")
        return array

    def _fail(self, problem: str) -> ValueError:
        err = ValueError(f"cannot write {quoted(self._name, 'stdout')}: {problem}")
        self._errors.append(err)
        return err

    def raised(self, err: BaseException) -> bool:
        """Whether ``err`` came from the bands (their iterator, or a band that does not fit)."""
        return any(err is mine for mine in self._errors)

    def close(self) -> None:
        """Close the caller's iterator (a generator's ``finally`` runs now); forget the errors
        (their tracebacks hold bands)."""
        self._errors.clear()
        close = getattr(self._source, "close", None)
        if close is not None:
            close()


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


def quantize(band: np.ndarray, depth: int) -> np.ndarray:
    """Float rows (h, W, C) in [0, 1] as the uint8/uint16 values the writers store (integer rows as
    :func:`_as_depth` makes them): what a work directory keeps of the final output."""
    return _as_depth(np.asarray(band), depth)


def _as_depth(band: np.ndarray, depth: int) -> np.ndarray:
    """A checked band (float, uint8 or uint16) as uint8 (``depth`` 8) or uint16 (16)."""
    if band.dtype.kind == "f":
        return _quantize(band, depth)
    if band.dtype == np.uint16 and depth == 8:  # JPEG or WebP asked for 16 bits
        return ((band.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if band.dtype == np.uint8 and depth == 16:
        return band.astype(np.uint16) * np.uint16(257)
    return band


def _regrouped(bands: Iterable[np.ndarray], rows: int, width: int, channels: int,
               dtype: np.dtype) -> Iterator[np.ndarray]:
    """``bands`` (uint, any heights) copied into new arrays of ``rows`` rows (the last may be
    shorter): a consumer may keep views of one while the next is filled."""
    group, filled = np.empty((rows, width, channels), dtype), 0
    for band in bands:
        start = 0
        while start < len(band):
            take = min(rows - filled, len(band) - start)
            group[filled: filled + take] = band[start: start + take]
            filled, start = filled + take, start + take
            if filled == rows:
                yield group
                group, filled = np.empty((rows, width, channels), dtype), 0
    if filled:
        yield group[:filled]


# Encoders: fh is a binary file (seekable for TIFF); bands are checked (h, W, C) bands, float,
# uint8 or uint16 (see _Bands), pulled while encoding: an encoder quiets only its library
# calls, never a pull; size (H, W); exif has the Exif\0\0 header; dpi fits the format (see
# _dpi_for); software is the Software marker.


def _write_png(fh: BinaryIO, *, bands: Iterable[np.ndarray], size: tuple[int, int],
               channels: int, depth: int, icc: bytes | None, exif: bytes | None,
               dpi: tuple[float, float] | None, software: str) -> None:
    """Our streaming encoder (Paeth, zlib level :data:`PNG_LEVEL`), metadata before IDAT."""
    png_stream.write_png(fh, (_as_depth(band, depth) for band in bands), size=size,
                         channels=channels, depth=depth, level=PNG_LEVEL, icc=icc, exif=exif,
                         dpi=dpi, software=software)


def _write_pillow(fh: BinaryIO, *, bands: Iterable[np.ndarray], size: tuple[int, int],
                  channels: int, depth: int, icc: bytes | None, exif: bytes | None,
                  dpi: tuple[float, float] | None, software: str, fmt: str) -> None:
    """JPEG (4:4:4; alpha composited over white) and WebP (grey stored as RGB) at 8 bits,
    from the bands gathered into one uint8 array (the format's size limit bounds it)."""
    flatten = fmt == "JPEG" and channels in (2, 4)
    pixels = np.empty((*size, channels - flatten), np.uint8)
    top = 0
    for band in bands:
        pixels[top: top + len(band)] = _as_depth(_flattened(band) if flatten else band, 8)
        top += len(band)
    params = {"icc_profile": icc or b"", "exif": exif or b"", "quality": WEBP_QUALITY}
    if fmt == "JPEG":
        params.update(quality=JPEG_QUALITY, subsampling=0,
                      dpi=tuple(round(v) for v in dpi) if dpi else (0, 0))
    with quiet_libraries():  # only now: no band is pulled inside
        im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        if fmt == "WEBP" and im.mode in ("L", "LA"):
            im = im.convert("RGBA" if im.mode == "LA" else "RGB")
        im.save(fh, fmt, **params)


def _flattened(band: np.ndarray) -> np.ndarray:
    """A band with alpha (float, or uint scaled to [0, 1]) composited over white, float."""
    if band.dtype.kind != "f":
        band = band.astype(np.float32) / np.float32(np.iinfo(band.dtype).max)
    alpha = np.clip(band[..., -1:], 0, 1)
    return band[..., :-1] * alpha + (1 - alpha)


def _write_tiff(fh: BinaryIO, *, bands: Iterable[np.ndarray], size: tuple[int, int],
                channels: int, depth: int, icc: bytes | None, exif: bytes | None,
                dpi: tuple[float, float] | None, software: str) -> None:
    """Deflate-compressed TIFF from the bands regrouped into strips of about
    :data:`TIFF_STRIP_BYTES` (the layout tifffile picks) or, beyond :data:`TILED_TIFF_PIXELS`,
    into rows of tiles; BigTIFF beyond 4 GiB of pixels. Holds a few strips, or about two rows
    of tiles (:data:`TIFF_TILE` rows each), at a time."""
    (height, width), dtype = size, np.dtype(np.uint8 if depth == 8 else np.uint16)
    row_bytes = width * channels * dtype.itemsize
    bigtiff = height * row_bytes > BIGTIFF_BYTES
    tiled = height * width > TILED_TIFF_PIXELS
    rows = TIFF_TILE if tiled else max(1, TIFF_STRIP_BYTES // row_bytes)
    groups = _regrouped((_as_depth(band, depth) for band in bands), rows, width, channels,
                        dtype.newbyteorder("<"))  # the file's byte order
    if tiled:
        data, layout = _tiff_tiles(groups, channels), dict(
            tile=(TIFF_TILE, TIFF_TILE), buffersize=rows * row_bytes)
    else:
        data, layout = _tiff_strips(groups), dict(rowsperstrip=rows)
    shape = (height, width) if channels == 1 else (height, width, channels)
    with quiet_libraries():
        extratags = tiff_text_tags(exif)
    with _tifffile_quiet(), tifffile.TiffWriter(fh, bigtiff=bigtiff, byteorder="<") as tiff:
        tiff.write(
            data, shape=shape, dtype=dtype, photometric="rgb" if channels >= 3 else "minisblack",
            extrasamples=("unassalpha",) if channels in (2, 4) else None, compression="zlib",
            predictor=True, iccprofile=icc, resolution=dpi,
            resolutionunit="INCH" if dpi else None, metadata=None, software=software,
            extratags=extratags, **layout)
    if not bigtiff:
        with quiet_libraries():
            tiff_append_exif_ifds(fh, exif)


def _tiff_tiles(groups: Iterable[np.ndarray], channels: int) -> Iterator[np.ndarray]:
    """Row-major TIFF tiles (edge tiles short; tifffile pads them), a row of tiles per group."""
    for group in groups:
        for left in range(0, group.shape[1], TIFF_TILE):
            tile = group[:, left: left + TIFF_TILE]
            yield tile[..., 0] if channels == 1 else tile


def _tiff_strips(groups: Iterable[np.ndarray]) -> Iterator[bytes]:
    """Each group as one encoded strip (horizontal predictor, deflate, as tifffile would),
    encoded on tifffile's number of threads a few strips ahead."""
    predict, compress = tifffile.TIFF.PREDICTORS[2], tifffile.TIFF.COMPRESSORS[8]
    encode = lambda strip: compress(predict(strip, axis=-2))  # noqa: E731
    workers = tifffile.TIFF.MAXWORKERS
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: list[concurrent.futures.Future] = []
        for group in groups:
            pending.append(pool.submit(encode, group))
            if len(pending) > workers:
                yield pending.pop(0).result()
        for job in pending:
            yield job.result()


class _ThisThread(logging.Filter):
    """Drops the records logged from the thread that made it."""

    def __init__(self) -> None:
        super().__init__()
        self.ident = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.ident


@contextmanager
def _tifffile_quiet() -> Iterator[None]:
    """tifffile's log records from this thread swallowed, without the process-wide lock of
    ``quiet_libraries`` (the caller's bands are computed while tifffile writes)."""
    logger, only = logging.getLogger("tifffile"), _ThisThread()
    logger.addFilter(only)
    try:
        yield
    finally:
        logger.removeFilter(only)


_ENCODERS: dict[str, Callable[..., None]] = {
    "PNG": _write_png,
    "JPEG": functools.partial(_write_pillow, fmt="JPEG"),
    "TIFF": _write_tiff,
    "WEBP": functools.partial(_write_pillow, fmt="WEBP"),
}
