"""Read an image by bands of rows instead of decoding it whole.

:func:`open_rows` gives a :class:`RowSource`; ``read(y0, y1)`` returns rows y0:y1 exactly as
:func:`~tiledsr.io.read_image` delivers them, before its division to [0, 1]. A non-interlaced
PNG (any colour type, 1 to 16 bits) is inflated from the file as far as the rows asked for and
unfiltered by libpng a few megabytes at a time (each piece starts with the previous piece's
last row, unfiltered, so Up, Average and Paeth rows decode); a striped or tiled 8/16-bit grey,
grey+alpha, RGB or RGBA TIFF (or YCbCr in JPEG) decodes only the strips or tiles under the
rows (uncompressed strips are read row by row). Anything else (JPEG, WebP, interlaced or
animated PNG, EXIF orientations, other TIFF layouts, files our readers leave to Pillow) is
decoded once, whole, in its own dtype, and sliced. Reads may go backwards (a PNG is inflated
again from its start); the last band read is kept, so overlapping bands read top to bottom
decode each row about once.
"""
from __future__ import annotations

import math
import struct
import threading
import zlib
from dataclasses import dataclass
from operator import index
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import tifffile

from ..errors import InputError, TiledsrError
from ..quiet import quiet_fds
from .meta import DEFAULT_MAX_PIXELS, ImageInfo, png_chunk, quiet_libraries, quoted
from .read import _PNG16_CHANNELS, _input_error, read_source, to_float
from .source import Source, open_source

__all__ = ["RowSource", "open_rows"]

PIECE_BYTES = 4 * 2**20  # filtered PNG scanlines handed to libpng at a time
READ_BYTES = 2**20  # compressed bytes read from the file at a time
CACHE_BYTES = 256 * 2**20  # at most this much of the last band is kept for the next read
_LIBPNG_SIDE = 1_000_000  # libpng's default limit on width and height
_LIBPNG_CHUNK = 2**31 - 1  # the largest PNG chunk libpng accepts
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_BLOCK = 65535  # the most a stored deflate block holds
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_SAMPLES = {**_PNG16_CHANNELS, 3: 1}  # PNG colour type -> samples per pixel
_PILLOW_NOTE = "read through Pillow"  # read.py's note when Pillow decoded what our reader did not
_P = tifffile.PHOTOMETRIC
_JPEG = (6, 7, 33007, 34892)  # TIFF compressions decoded by libjpeg (YCbCr made RGB there)


def open_rows(src: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> RowSource:
    """Open ``src`` ("-" is stdin) to be read by rows, as displayed.

    The header is checked as :func:`~tiledsr.io.probe` checks it (InputError for unreadable
    files and for images above ``max_pixels``); corrupt or truncated pixel data found later is
    an InputError from :meth:`RowSource.read`. Close it (or use it in a ``with`` block).
    """
    source = open_source(src, max_pixels)  # a stream is read into memory once, here
    _, info, orientation = read_source(source, max_pixels, decode=False)
    rows = None
    if orientation == 1 and not any(n.startswith(_PILLOW_NOTE) for n in info.notes):
        opener = {"PNG": _PngRows.open, "TIFF": _TiffRows.open}.get(source.format)
        rows = opener(source, info) if opener else None
    if rows is None:
        pixels, info, _ = read_source(source, max_pixels, decode=True)
        rows = _Whole(pixels)
    return RowSource(source.name, info, rows)


class RowSource:
    """Rows of one image (from :func:`open_rows`); safe to share between threads.

    ``info`` is the image's ImageInfo (as :func:`~tiledsr.io.probe` gives it; after a whole
    decode, as :func:`~tiledsr.io.read_image` gives it), ``shape`` (H, W, C) as displayed,
    ``dtype`` uint8, uint16 or float32 (float and 32-bit TIFF, values in [0, 1]), ``streamed``
    True when rows are decoded by bands, False when the image was decoded whole.
    """

    def __init__(self, name: str, info: ImageInfo, rows: _Whole | _PngRows | _TiffRows):
        self.info = info
        self.shape: tuple[int, int, int] = rows.shape
        self.dtype: np.dtype = rows.dtype
        self.streamed = not isinstance(rows, _Whole)
        self._name, self._rows, self._lock = name, rows, threading.Lock()
        self._top, self._band = 0, self._empty(0)  # the end of the last band read, kept

    def read(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` (0 <= y0 <= y1 <= H) as a new C-contiguous (y1 - y0, W, C) array of
        ``dtype``, equal to ``read_image``'s rows before its division to [0, 1]."""
        y0, y1 = self._checked(y0, y1)
        with self._lock:
            if self._rows is None:
                raise InputError(f"cannot read {quoted(self._name)}: its row reader is closed")
            out = self._empty(y1 - y0)
            lo, hi = max(y0, self._top), min(y1, self._top + len(self._band))
            if lo < hi:  # the overlap with the last band, then what lies either side of it
                out[lo - y0: hi - y0] = self._band[lo - self._top: hi - self._top]
                self._fill(y0, out[: lo - y0])
                self._fill(hi, out[hi - y0:])
            else:
                self._fill(y0, out)
            if self.streamed and len(out):
                keep = max(1, CACHE_BYTES // max(1, out[0].nbytes))
                self._top, self._band = max(y0, y1 - keep), out[-keep:].copy()
            return out

    def read_float(self, y0: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1`` as float32 in [0, 1], bit for bit ``read_image(src)[0][y0:y1]``."""
        return to_float(self.read(y0, y1))

    def close(self) -> None:
        """Release the file and the decoded rows; reading afterwards is an error."""
        with self._lock:
            if self._rows is not None:
                self._rows.close()
            self._rows, self._band = None, self._empty(0)

    def __enter__(self) -> RowSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked(self, y0: int, y1: int) -> tuple[int, int]:
        """(y0, y1) as ints; InputError unless they are whole numbers, 0 <= y0 <= y1 <= H."""
        try:
            rows = index(y0), index(y1)
        except TypeError:
            rows = (-1, -1)
        if not 0 <= rows[0] <= rows[1] <= self.shape[0]:
            raise InputError(f"cannot read rows {y0!r}:{y1!r} of {quoted(self._name)}: it has "
                             f"rows 0:{self.shape[0]}; pass whole numbers 0 <= y0 <= y1 <= "
                             f"{self.shape[0]}")
        return rows

    def _empty(self, rows: int) -> np.ndarray:
        return np.empty((rows, *self.shape[1:]), self.dtype)

    def _fill(self, y0: int, out: np.ndarray) -> None:
        if len(out):
            self._rows.fill(y0, out)


class _Whole:
    """The fallback: pixels decoded whole by read.py (uint8, uint16 or float32; maybe a view)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.shape, self.dtype = pixels.shape, pixels.dtype

    def fill(self, y0: int, out: np.ndarray) -> None:
        out[...] = self.pixels[y0: y0 + len(out)]

    def close(self) -> None:
        self.pixels = None


# --- PNG ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _PngLayout:
    """What streaming a PNG needs from its header; ``table`` maps palette indices to RGB(A),
    ``key`` is a tRNS colour key (one value per sample) that becomes an alpha channel."""

    width: int
    height: int
    depth: int
    colour: int
    idat: int  # file offset of the first IDAT chunk's length field
    size: int  # file size
    table: np.ndarray | None = None
    key: tuple[int, ...] | None = None

    @property
    def samples(self) -> int:
        return _PNG_SAMPLES[self.colour]

    @property
    def row_bytes(self) -> int:
        return (self.width * self.samples * self.depth + 7) // 8

    @property
    def packed(self) -> bool:
        """Indices or samples below 8 bits: libpng unfilters them as plain bytes."""
        return self.colour == 3 or self.depth < 8

    @property
    def channels(self) -> int:
        if self.table is not None:
            return self.table.shape[1]
        return self.samples + (self.key is not None)


def _png_layout(fh: BinaryIO, info: ImageInfo) -> _PngLayout | None:
    """The layout of a PNG we stream, from IHDR and the chunks before the first IDAT; None for
    what read.py's readers handle differently (interlaced, animated, odd tRNS or palettes)."""
    size = fh.seek(0, 2)
    fh.seek(8)
    head = fh.read(25)
    if len(head) < 25 or head[4:8] != b"IHDR" or struct.unpack(">I", head[:4])[0] != 13:
        return None
    width, height, depth, colour, *methods = struct.unpack(">IIBBBBB", head[8:21])
    if any(methods) or depth not in _PNG_DEPTHS.get(colour, ()):
        return None
    plte, trns, pos = None, None, 33
    while True:
        fh.seek(pos)
        head = fh.read(8)
        if len(head) < 8:
            return None
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            break
        repeated = kind == b"PLTE" and plte is not None or kind == b"tRNS" and trns is not None
        if kind in (b"IEND", b"acTL") or repeated:
            return None  # no image data, an animation, a repeated chunk: not ours to stream
        if kind in (b"PLTE", b"tRNS"):
            data = fh.read(length)
            if len(data) < length:
                return None
            plte, trns = (data, trns) if kind == b"PLTE" else (plte, data)
        pos += 12 + length
    layout = _PngLayout(width, height, depth, colour, pos, size)
    if colour == 3:
        layout = _with_palette(layout, plte, trns)
    elif trns is not None:
        layout = _with_key(layout, trns)
    if layout is None or layout.channels != info.channels \
            or max(width, layout.row_bytes) > _LIBPNG_SIDE:
        return None
    raw = height * (1 + layout.row_bytes)
    if depth == 16 and (height > _LIBPNG_SIDE or raw + raw // 4096 + 2**16 > _LIBPNG_CHUNK):
        return None  # read.py's whole decode through libpng refuses these: let it say so
    return layout


def _with_palette(layout: _PngLayout, plte: bytes | None,
                  trns: bytes | None) -> _PngLayout | None:
    """The RGB(A) table Pillow converts palette images with: indices past the palette are
    black, alpha past tRNS is 255."""
    if not plte or len(plte) % 3 or len(plte) > 768 or trns is not None \
            and not 0 < len(trns) <= len(plte) // 3:
        return None
    table = np.zeros((256, 3 if trns is None else 4), np.uint8)
    table[: len(plte) // 3, :3] = np.frombuffer(plte, np.uint8).reshape(-1, 3)
    if trns is not None:
        table[:, 3] = 255
        table[: len(trns), 3] = np.frombuffer(trns, np.uint8)
    return _replace(layout, table=table)


def _with_key(layout: _PngLayout, trns: bytes) -> _PngLayout | None:
    """A grey or RGB colour key: at 8 and 16 bits, in range, of the right length."""
    count = {0: 1, 2: 3}.get(layout.colour, 0)
    if not count or len(trns) != 2 * count or layout.depth < 8:
        return None
    key = struct.unpack(f">{count}H", trns)
    return _replace(layout, key=key) if max(key) < 2**layout.depth else None


def _replace(layout: _PngLayout, **changes: object) -> _PngLayout:
    return _PngLayout(**{**layout.__dict__, **changes})


class _PngRows:
    """Rows of a non-interlaced PNG, inflated from the file as needed and unfiltered by libpng
    a piece at a time; delivered as read.py does (Pillow below 16 bits, libpng at 16)."""

    def __init__(self, source: Source, layout: _PngLayout):
        self._source, self._layout = source, layout
        self.shape = (layout.height, layout.width, layout.channels)
        self.dtype = np.dtype(np.uint16 if layout.depth == 16 else np.uint8)
        self._piece_rows = max(1, PIECE_BYTES // (1 + layout.row_bytes))
        self._fh = source.open()
        self._restart()

    @classmethod
    def open(cls, source: Source, info: ImageInfo) -> _PngRows | None:
        try:
            with source.open() as fh:
                layout = _png_layout(fh, info)
        except Exception:  # noqa: BLE001 - a header we cannot follow: read.py decides
            return None
        return cls(source, layout) if layout is not None else None

    def close(self) -> None:
        self._fh.close()

    def fill(self, y0: int, out: np.ndarray) -> None:
        """Rows ``y0 : y0 + len(out)`` into ``out``; InputError for corrupt or missing data."""
        try:
            if y0 < self._next:
                self._restart()
            while self._next < y0:
                self._piece(min(y0 - self._next, self._piece_rows))
            for at in range(0, len(out), self._piece_rows):
                part = out[at: at + self._piece_rows]
                part[...] = self._delivered(self._piece(len(part)))
        except BaseException as err:  # zlib, libpng and short files raise anything
            self._next = self._layout.height + 1  # a piece left half done: start again next time
            if isinstance(err, Exception):
                raise _input_error(self._source, err) from err
            raise

    def _restart(self) -> None:
        """Back to row 0: a new inflater at the first IDAT chunk."""
        self._inflater = zlib.decompressobj()
        self._chunk_at, self._left, self._ended = self._layout.idat, 0, False
        self._next, self._previous = 0, b""  # the next row, the last row's unfiltered bytes

    def _piece(self, rows: int) -> np.ndarray:
        """The next ``rows`` rows, unfiltered: (rows, W, samples) at 8 and 16 bits, else (rows,
        row bytes) of packed samples or palette indices."""
        layout = self._layout
        data = self._inflate(rows * (1 + layout.row_bytes))
        prefix = b"\x00" + self._previous if self._previous else b""
        width, depth, colour = (layout.row_bytes, 8, 0) if layout.packed else \
            (layout.width, layout.depth, layout.colour)
        ihdr = struct.pack(">IIBBBBB", width, rows + bool(prefix), depth, colour, 0, 0, 0)
        png = _rebuilt_png(ihdr, (prefix, data))
        with quiet_fds():
            pixels = imagecodecs.png_decode(png)
        pixels = pixels.reshape(rows + bool(prefix), width, -1)[1 if prefix else 0:]
        last = pixels[-1].astype(">u2") if depth == 16 else pixels[-1]
        self._previous, self._next = last.tobytes(), self._next + rows
        return pixels[..., 0] if layout.packed else pixels

    def _delivered(self, pixels: np.ndarray) -> np.ndarray:
        """Unfiltered rows as read.py delivers them: palette looked up, packed grey scaled to
        8 bits, a colour key turned into alpha."""
        layout = self._layout
        if layout.packed:
            values = _unpack(pixels, layout.depth, layout.width)
            if layout.table is not None:
                return layout.table[values]
            return (values * np.uint8(255 // (2**layout.depth - 1)))[..., None]
        if layout.key is None:
            return pixels
        opaque = np.iinfo(pixels.dtype).max
        alpha = np.where((pixels == np.array(layout.key, pixels.dtype)).all(-1), 0, opaque)
        return np.concatenate([pixels, alpha.astype(pixels.dtype)[..., None]], axis=-1)

    def _inflate(self, size: int) -> bytes:
        """The next ``size`` bytes of filtered scanlines; EOFError when the image data ends."""
        parts, got = [], 0
        while got < size:
            part = self._inflater.decompress(self._inflater.unconsumed_tail, size - got)
            if not part:
                data = b"" if self._inflater.eof else self._compressed()
                if not data:
                    raise EOFError("the PNG image data ends early")
                part = self._inflater.decompress(data, size - got)
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _compressed(self) -> bytes:
        """Up to READ_BYTES more of the IDAT data, b"" at its end. Below 16 bits (Pillow) the
        data ends at the first other chunk and a cut-off chunk is used as far as it goes; at 16
        bits (read.py's own) other chunks are skipped and only whole chunks count."""
        sixteen = self._layout.depth == 16
        while not self._left and not self._ended:
            self._fh.seek(self._chunk_at)
            head = self._fh.read(8)
            length, kind = struct.unpack(">I4s", head) if len(head) == 8 else (0, b"")
            whole = self._chunk_at + 12 + length <= self._layout.size
            if kind == b"IDAT" and (whole or not sixteen):
                self._left = length
            elif not (sixteen and whole and kind not in (b"IEND", b"IDAT", b"")):
                self._ended = True
            self._chunk_at += 12 + length
        if self._ended and not self._left:
            return b""
        data = self._fh.read(min(self._left, READ_BYTES))
        self._left = self._left - len(data) if data else 0
        self._ended |= not data
        return data


def _rebuilt_png(ihdr: bytes, scanlines: tuple[bytes, ...]) -> bytes:
    """A PNG of IHDR and one IDAT holding ``scanlines`` in stored (uncompressed) deflate
    blocks: assembled in one copy, libpng only unfilters it."""
    stream = [b"\x78\x01"]
    adler = 1
    for data in scanlines:
        view = memoryview(data)
        for at in range(0, len(view), _STORED_BLOCK):
            part = view[at: at + _STORED_BLOCK]
            stream += [struct.pack("<BHH", 0, len(part), 0xFFFF ^ len(part)), part]
        adler = zlib.adler32(view, adler)
    stream += [b"\x01\x00\x00\xff\xff", struct.pack(">I", adler)]  # an empty final block
    crc = zlib.crc32(b"IDAT")
    for part in stream:
        crc = zlib.crc32(part, crc)
    size = sum(len(part) for part in stream)
    return b"".join([_PNG_SIGNATURE, png_chunk(b"IHDR", ihdr), struct.pack(">I", size), b"IDAT",
                     *stream, struct.pack(">I", crc), png_chunk(b"IEND", b"")])


def _unpack(packed: np.ndarray, depth: int, width: int) -> np.ndarray:
    """(n, row bytes) uint8 scanlines of 1, 2, 4 or 8-bit values, most significant bits first,
    as (n, width) uint8 values."""
    if depth == 8:
        return packed[:, :width]
    shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
    values = (packed[:, :, None] >> shifts) & np.uint8(2**depth - 1)
    return values.reshape(len(packed), -1)[:, :width]


# --- TIFF --------------------------------------------------------------------------------------

class _TiffRows:
    """Rows of a striped or tiled TIFF (first page; grey, grey+alpha, RGB or RGBA; 8 or 16
    bits; samples interleaved): only the strips or tiles under the rows are decoded, and the
    last strip or row of tiles used is kept. Uncompressed strips are read row by row."""

    def __init__(self, source: Source, fh: BinaryIO, tif: tifffile.TiffFile, channels: int):
        page = tif.pages.first
        self._source, self._fh, self._tif, self._page = source, fh, tif, page
        self.shape = (page.imagelength, page.imagewidth, channels)
        self.dtype = np.dtype("=" + page.dtype.char)
        self._file_dtype = np.dtype(tif.byteorder + page.dtype.char)
        height, width = self.shape[:2]
        self._block = min(page.tilelength if page.is_tiled else page.rowsperstrip, height)
        self._across = math.ceil(width / page.tilewidth) if page.is_tiled else 1
        self._offsets, self._counts = tuple(page.dataoffsets), tuple(page.databytecounts)
        self._plain = not page.is_tiled and page.compression == 1 and page.predictor == 1 \
            and page.fillorder == 1
        if self._plain and len(self._offsets) == 1:
            self._block = height  # one contiguous strip, however RowsPerStrip reads
        self._args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} \
            if page.compression in _JPEG else {}
        self._size = tif.filehandle.size
        self._kept: dict[int, np.ndarray] = {}  # decoded blocks (strips or rows of tiles)

    @classmethod
    def open(cls, source: Source, info: ImageInfo) -> _TiffRows | None:
        fh = source.open()
        try:
            with quiet_libraries(), quiet_fds():
                tif = tifffile.TiffFile(fh)
                channels = _tiff_channels(tif, info)
                if channels:
                    return cls(source, fh, tif, channels)
                tif.close()
        except Exception:  # noqa: BLE001 - a file we cannot follow: read.py decides
            pass
        fh.close()
        return None

    def close(self) -> None:
        self._kept = {}
        self._tif.close()
        self._fh.close()

    def fill(self, y0: int, out: np.ndarray) -> None:
        """Rows ``y0 : y0 + len(out)`` into ``out``; InputError for corrupt or missing data."""
        try:
            with quiet_libraries(), quiet_fds():
                if self._plain:
                    self._fill_plain(y0, out)
                else:
                    self._fill_blocks(y0, out)
        except TiledsrError:
            raise
        except Exception as err:  # noqa: BLE001 - decoders of hostile files raise anything
            raise _input_error(self._source, err) from err

    def _fill_blocks(self, y0: int, out: np.ndarray) -> None:
        """Rows from decoded blocks; the first and last block used are kept for the next read."""
        y1, kept = y0 + len(out), {}
        blocks = range(y0 // self._block, (y1 - 1) // self._block + 1)
        for block in blocks:
            top = block * self._block
            data = self._kept.get(block)
            if data is None:
                data = self._decoded(block)
            lo, hi = max(y0, top), min(y1, top + len(data))
            out[lo - y0: hi - y0] = data[lo - top: hi - top, :, : self.shape[2]]
            if block in (blocks[0], blocks[-1]):
                kept[block] = data
        self._kept = kept

    def _decoded(self, block: int) -> np.ndarray:
        """One strip or row of tiles, all samples: (rows, W, samples) native uint8/uint16."""
        page, (height, width) = self._page, self.shape[:2]
        top = block * self._block
        data = np.empty((min(self._block, height - top), width, page.samplesperpixel), self.dtype)
        segments = list(range(block * self._across, (block + 1) * self._across))
        found = self._tif.filehandle.read_segments(
            [self._offsets[i] for i in segments], [self._counts[i] for i in segments],
            indices=segments, sort=True, flat=True)
        for encoded, segment in found:
            try:
                tile, (_, _, _, left, _), shape = page.decode(encoded, segment, **self._args)
                if tile is None:
                    data[:, left: left + shape[2]] = page.nodata
                else:
                    data[:, left: left + shape[2]] = tile[0, : len(data), : width - left]
            except Exception as err:  # noqa: BLE001 - decoders of hostile files raise anything
                cut = self._offsets[segment] + self._counts[segment] > self._size
                raise _input_error(self._source, EOFError("the TIFF data ends early") if cut
                                   else err) from err
        return data

    def _fill_plain(self, y0: int, out: np.ndarray) -> None:
        """Uncompressed strips: the rows' bytes read straight from the file."""
        row = self.shape[1] * self._page.samplesperpixel * self._file_dtype.itemsize
        y1, at = y0 + len(out), y0
        while at < y1:
            strip = at // self._block
            stop = min(y1, (strip + 1) * self._block)
            self._fh.seek(self._offsets[strip] + (at - strip * self._block) * row)
            data = self._fh.read((stop - at) * row)
            if len(data) < (stop - at) * row:
                raise _input_error(self._source, EOFError("the TIFF data ends early"))
            pixels = np.frombuffer(data, self._file_dtype).reshape(stop - at, self.shape[1], -1)
            out[at - y0: stop - y0] = pixels[..., : self.shape[2]]
            at = stop


def _tiff_channels(tif: tifffile.TiffFile, info: ImageInfo) -> int:
    """Channels read.py delivers for a TIFF whose first page we stream, 0 for other layouts."""
    page = tif.pages.first
    height, width, samples = page.imagelength, page.imagewidth, page.samplesperpixel
    jpeg = page.compression in _JPEG
    colours = {_P.MINISBLACK: 1, _P.RGB: 3, _P.YCBCR: 3 if jpeg else 0}.get(page.photometric, 0)
    channels = colours + min(samples - colours, 1)
    if not colours or samples < colours or channels != info.channels or tif.is_ndpi \
            or page.dtype not in (np.uint8, np.uint16) or page.bitspersample not in (8, 16) \
            or page.shaped != (1, 1, height, width, samples) or page.is_subsampled and not jpeg \
            or page.decode.__name__.startswith("decode_raise"):
        return 0
    if page.is_tiled:
        count = math.ceil(width / page.tilewidth) * math.ceil(height / page.tilelength)
        if page.tiledepth != 1:
            return 0
    else:
        count = math.ceil(height / min(page.rowsperstrip, height)) if page.rowsperstrip else 0
    plain = not page.is_tiled and page.compression == 1 and len(page.dataoffsets) == 1
    if not plain and not len(page.dataoffsets) == len(page.databytecounts) == count:
        return 0
    return channels
