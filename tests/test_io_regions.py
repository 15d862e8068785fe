"""tiledsr.io.regions: reading by row bands gives exactly read_image's rows for every layout,
streams the layouts it should, keeps memory bounded, and reports bad data as one-line
InputErrors. Offline; images built in code."""
from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from tiledsr.errors import InputError
from tiledsr.io import probe, read_image, write_image
from tiledsr.io import regions
from tiledsr.io import source as source_module
from tiledsr.io import write as write_module
from tiledsr.io.regions import open_rows

SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
PNG_TYPES = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4),
             (3, 8), (4, 8), (4, 16), (6, 8), (6, 16)]  # (colour type, bit depth)


# --- building PNGs -----------------------------------------------------------------------------

def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def packed(samples: np.ndarray, depth: int) -> np.ndarray:
    """(H, W, S) integer samples as (H, row bytes) uint8 scanlines: 16 bits big-endian, 1, 2
    and 4 bits packed most significant first."""
    height = samples.shape[0]
    flat = samples.reshape(height, -1)
    if depth == 16:
        return flat.astype(">u2").view(np.uint8).reshape(height, -1)
    if depth == 8:
        return flat.astype(np.uint8)
    per = 8 // depth
    flat = np.pad(flat.astype(np.uint8), ((0, 0), (0, -flat.shape[1] % per)))
    shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
    return np.bitwise_or.reduce(flat.reshape(height, -1, per) << shifts, axis=2).astype(np.uint8)


def filtered(raw: np.ndarray, bpp: int, kinds: np.ndarray,
             above: np.ndarray | None = None) -> np.ndarray:
    """(H, row bytes) scanlines with PNG filter ``kinds[y]`` (0 None .. 4 Paeth) applied, as
    (H, 1 + row bytes); ``above`` is the unfiltered row before the first (zeros by default)."""
    raw16 = raw.astype(np.int16)
    first = np.zeros_like(raw16[:1]) if above is None else above[None].astype(np.int16)
    up = np.concatenate([first, raw16[:-1]])
    out = raw16.copy()
    for kind in (1, 2, 3, 4):
        rows = np.flatnonzero(kinds == kind)
        if not len(rows):
            continue
        x, b = raw16[rows], up[rows]
        a, c = np.zeros_like(x), np.zeros_like(x)
        a[:, bpp:], c[:, bpp:] = x[:, :-bpp], b[:, :-bpp]
        if kind == 1:
            guess = a
        elif kind == 2:
            guess = b
        elif kind == 3:
            guess = (a + b) >> 1
        else:
            p = a + b - c
            pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
            guess = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        out[rows] = x - guess
    return np.concatenate([kinds[:, None].astype(np.uint8), (out & 255).astype(np.uint8)], axis=1)


def png_file(samples: np.ndarray, depth: int, colour: int, *, plte: bytes = b"",
             trns: bytes = b"", kinds: np.ndarray | None = None, idat: int = 0,
             between: bytes = b"", level: int = 6) -> bytes:
    """A non-interlaced PNG of (H, W, S) samples (palette indices for colour type 3), every
    filter type used in turn unless ``kinds`` says; the zlib stream cut into IDAT chunks of
    ``idat`` bytes (0: one chunk) with ``between`` (whole chunks) after the first."""
    height, width = samples.shape[:2]
    raw = packed(samples, depth)
    kinds = np.arange(height) % 5 if kinds is None else kinds
    bpp = max(1, SAMPLES[colour] * depth // 8)
    stream = zlib.compress(filtered(raw, bpp, kinds).tobytes(), level)
    size = idat or len(stream)
    parts = [chunk(b"IDAT", stream[at: at + size]) for at in range(0, len(stream), size)]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + (chunk(b"PLTE", plte) if plte else b"")
            + (chunk(b"tRNS", trns) if trns else b"") + parts[0] + between + b"".join(parts[1:])
            + chunk(b"IEND", b""))


def adam7_file(samples: np.ndarray, depth: int, colour: int) -> bytes:
    """An interlaced PNG of (H, W, S) samples, unfiltered rows."""
    height, width = samples.shape[:2]
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
              (1, 0, 2, 1)]
    rows = [b"\x00" + row.tobytes() for y, x, dy, dx in passes
            if samples[y::dy, x::dx].size for row in packed(samples[y::dy, x::dx], depth)]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


def png_case(colour: int, depth: int, transparent: bool, height: int = 41, width: int = 29,
             seed: int = 0) -> bytes:
    """Random samples of a colour type and depth; a palette of fewer entries than indices
    (so some are past its end), or a tRNS colour key that some pixels match."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 2**depth, (height, width, SAMPLES[colour]))
    plte = trns = b""
    if colour == 3:
        entries = min(2**depth, 11) - (depth > 1)
        plte = rng.integers(0, 256, 3 * entries, dtype=np.uint8).tobytes()
        trns = bytes(rng.integers(0, 256, min(entries, 5), dtype=np.uint8)) if transparent else b""
    elif transparent:
        samples[::3, ::2] = samples[0, 0]
        trns = struct.pack(f">{SAMPLES[colour]}H", *samples[0, 0])
    return png_file(samples, depth, colour, plte=plte, trns=trns)


# --- checking against read_image ---------------------------------------------------------------

def read_by_bands(rows: regions.RowSource) -> np.ndarray:
    """The whole image from bands of 1, 7, 100 and the rest rows, each read again with the
    previous rows overlapping, then reads backwards and across; checks they all agree."""
    height = rows.shape[0]
    edges = sorted({0, height, *(min(height, e) for e in (1, 8, 108))})
    bands = []
    for y0, y1 in zip(edges, edges[1:]):
        band = rows.read(y0, y1)
        assert band.shape == (y1 - y0, *rows.shape[1:]) and band.dtype == rows.dtype
        assert band.flags.c_contiguous
        again = rows.read(max(0, y0 - 5), y1)  # overlapping re-read
        assert np.array_equal(again[y0 - max(0, y0 - 5):], band)
        bands.append(band)
    whole = np.concatenate(bands)
    third = height // 3
    for y0, y1 in [(height // 2, height), (0, (height + 1) // 2), (third, min(height, third + 2)),
                   (0, height), (height - 1, height), (0, 1), (height // 2, height // 2)]:
        assert np.array_equal(rows.read(y0, y1), whole[y0:y1])
    return whole


def assert_like_read_image(path: Path | str, streamed: bool | None = True,
                           **kwargs: int) -> np.ndarray:
    """open_rows(path) read by bands equals read_image(path) bit for bit; returns the rows."""
    image, info = read_image(path, **kwargs)
    with open_rows(path, **kwargs) as rows:
        assert rows.shape == image.shape and rows.dtype in (np.uint8, np.uint16, np.float32)
        if streamed is not None:
            assert rows.streamed is streamed
        assert rows.info == (probe(path, **kwargs) if rows.streamed else info)
        whole = read_by_bands(rows)
        assert np.array_equal(rows.read_float(0, rows.shape[0]), image)
        middle = rows.shape[0] // 3
        stop = min(rows.shape[0], middle + 3)
        assert np.array_equal(rows.read_float(middle, stop), image[middle: stop])
    scale = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}.get(whole.dtype)
    back = whole.astype(np.float32) / np.float32(scale) if scale else whole
    assert np.array_equal(back, image)
    return whole


@pytest.fixture(params=["default", "tiny pieces"])
def pieces(request, monkeypatch):
    """Unfilter the default few megabytes at a time, or one row and a few bytes at a time."""
    if request.param == "tiny pieces":
        monkeypatch.setattr(regions, "PIECE_BYTES", 1)
        monkeypatch.setattr(regions, "READ_BYTES", 7)
    return request.param


# --- PNG ---------------------------------------------------------------------------------------

class TestPng:
    @pytest.mark.parametrize("colour,depth,transparent",
                             [(*t, False) for t in PNG_TYPES]
                             + [(*t, True) for t in PNG_TYPES if t[0] in (0, 2, 3)])
    def test_every_colour_type_and_depth(self, tmp_path, pieces, colour, depth, transparent):
        path = tmp_path / "a.png"
        path.write_bytes(png_case(colour, depth, transparent))
        low_bit_key = transparent and colour == 0 and depth < 8  # Pillow's own rule: whole
        assert_like_read_image(path, streamed=not low_bit_key)

    @pytest.mark.parametrize("depth", [8, 16])
    @pytest.mark.parametrize("channels", [1, 2, 3, 4])
    def test_our_own_outputs(self, tmp_path, depth, channels):
        image = np.random.default_rng(channels).integers(0, 2**depth, (70, 45, channels))
        write_image(tmp_path / "a.png", (image / (2**depth - 1)).astype(np.float32),
                    bit_depth=depth)
        whole = assert_like_read_image(tmp_path / "a.png")
        assert np.array_equal(whole, image)

    @pytest.mark.parametrize("mode,transparency", [("1", None), ("L", 7), ("LA", None),
                                                   ("P", 3), ("P", b"\x00\x80\xff"),
                                                   ("RGB", (1, 2, 3)), ("RGBA", None),
                                                   ("I;16", None)])
    def test_pillow_outputs(self, tmp_path, mode, transparency):
        rng = np.random.default_rng(3)
        im = Image.fromarray(rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)).convert(
            "RGBA" if mode in ("LA", "RGBA") else "RGB")
        im = im.quantize(16) if mode == "P" else im.convert(mode) if mode != "I;16" else \
            Image.fromarray(rng.integers(0, 65536, (37, 23), dtype=np.uint16))
        params = {} if transparency is None else {"transparency": transparency}
        im.save(tmp_path / "a.png", optimize=mode == "L", **params)
        assert_like_read_image(tmp_path / "a.png")

    @pytest.mark.parametrize("filter_", ["NONE", "SUB", "UP", "AVG", "PAETH"])
    def test_libpng_filters(self, tmp_path, filter_):
        import imagecodecs
        image = np.random.default_rng(5).integers(0, 65536, (53, 31, 3), dtype=np.uint16)
        data = imagecodecs.png_encode(image, filter=getattr(imagecodecs.PNG.FILTER, filter_))
        (tmp_path / "a.png").write_bytes(data)
        assert np.array_equal(assert_like_read_image(tmp_path / "a.png"), image)

    @pytest.mark.parametrize("height,width", [(1, 1), (1, 257), (263, 1), (31, 37), (2, 3)])
    @pytest.mark.parametrize("colour,depth", [(0, 1), (3, 4), (2, 8), (6, 16)])
    def test_odd_sizes(self, tmp_path, pieces, height, width, colour, depth):
        path = tmp_path / "a.png"
        path.write_bytes(png_case(colour, depth, False, height, width, seed=height))
        assert_like_read_image(path)

    def test_many_idat_chunks_and_chunks_between(self, tmp_path, pieces):
        samples = np.random.default_rng(1).integers(0, 65536, (60, 17, 3))
        text = chunk(b"tEXt", b"Comment\x00between the image data")
        for depth, streamed in ((16, True), (8, None)):
            for name, between in (("split", b""), ("between", text)):
                path = tmp_path / f"{name}{depth}.png"
                path.write_bytes(png_file(samples % 2**depth, depth, 2, idat=101, between=between))
                if between and depth == 8:  # Pillow stops at the text chunk: truncated
                    with pytest.raises(InputError, match="truncated"):
                        read_image(path)
                    with pytest.raises(InputError, match="truncated"), open_rows(path) as rows:
                        rows.read(0, 60)
                else:
                    assert_like_read_image(path, streamed=streamed)

    @pytest.mark.parametrize("colour,depth", [(2, 8), (6, 16), (3, 4)])
    def test_interlaced_is_decoded_whole(self, tmp_path, colour, depth):
        samples = np.random.default_rng(2).integers(0, 2**depth, (19, 13, SAMPLES[colour]))
        data = adam7_file(samples, depth, colour)
        if colour == 3:
            at = data.index(b"IDAT") - 4
            data = data[:at] + chunk(b"PLTE", bytes(range(48))) + data[at:]
        (tmp_path / "i.png").write_bytes(data)
        assert_like_read_image(tmp_path / "i.png", streamed=False)

    def test_exif_rotated_is_decoded_whole(self, tmp_path):
        exif = Image.Exif()
        exif[0x0112] = 6
        pixels = np.random.default_rng(4).integers(0, 256, (21, 34, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "r.png", exif=exif.tobytes())
        whole = assert_like_read_image(tmp_path / "r.png", streamed=False)
        assert whole.shape == (34, 21, 3) and whole.dtype == np.uint8

    def test_odd_chunks_are_left_to_read_py(self, tmp_path):
        samples = np.random.default_rng(6).integers(0, 16, (9, 11, 1))
        cases = {"long tRNS": dict(plte=bytes(range(6)), trns=bytes(range(5))),
                 "no PLTE": dict()}
        for name, kwargs in cases.items():
            (tmp_path / f"{name}.png").write_bytes(png_file(samples, 4, 3, **kwargs))
            assert_like_read_image(tmp_path / f"{name}.png", streamed=False)
        key = struct.pack(">H", 300)  # out of range for 8 bits
        (tmp_path / "key.png").write_bytes(png_file(samples, 8, 0, trns=key))
        assert_like_read_image(tmp_path / "key.png", streamed=False)

    @pytest.mark.parametrize("depth", [8, 16])
    def test_truncated_in_the_middle(self, tmp_path, pieces, depth):
        samples = np.random.default_rng(8).integers(0, 2**depth, (200, 64, 3))
        data = png_file(samples, depth, 2, level=0, idat=5000)
        path = tmp_path / "cut.png"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError) as whole:
            read_image(path)
        with open_rows(path) as rows:
            assert rows.streamed and rows.shape == (200, 64, 3)
            assert np.array_equal(rows.read(0, 40), samples[:40])
            for _ in range(2):  # and again: the reader starts over
                with pytest.raises(InputError) as caught:
                    rows.read(40, 200)
                message = str(caught.value)
                assert "truncated" in message and str(path) in message and "\n" not in message
            assert np.array_equal(rows.read(10, 20), samples[10:20])
        assert "truncated" in str(whole.value)

    def test_corrupt_in_the_middle(self, tmp_path):
        samples = np.random.default_rng(9).integers(0, 256, (90, 33, 4))
        kinds = np.arange(90) % 5
        kinds[60] = 7  # no such filter
        path = tmp_path / "bad.png"
        path.write_bytes(png_file(samples, 8, 6, kinds=kinds))
        with pytest.raises(InputError, match="corrupt"):
            read_image(path)
        with open_rows(path) as rows:
            assert np.array_equal(rows.read(0, 60), samples[:60])
            with pytest.raises(InputError, match="corrupt") as caught:
                rows.read(55, 70)
            assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        data = bytearray(png_file(samples, 8, 6, level=1))
        data[len(data) // 2: len(data) // 2 + 40] = bytes(40)  # the deflate stream broken
        path.write_bytes(bytes(data))
        with pytest.raises(InputError, match="corrupt|truncated"):
            read_image(path)
        with pytest.raises(InputError, match="corrupt|truncated"), open_rows(path) as rows:
            rows.read(0, 90)

    def test_stdin_is_read_once_and_by_bands(self, monkeypatch):
        data = png_case(6, 16, False, 50, 20)
        monkeypatch.setattr(source_module, "_STREAMS", {})
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        image, _ = read_image("-")
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        with open_rows("-") as rows:
            assert rows.streamed and rows.info.path == "-"
            assert np.array_equal(read_by_bands(rows).astype(np.float32) / 65535, image)


# --- TIFF --------------------------------------------------------------------------------------

TIFF_LAYOUTS = {
    "one plain strip": dict(),
    "plain strips": dict(rowsperstrip=5),
    "plain big-endian": dict(rowsperstrip=7, byteorder=">"),
    "deflate strips": dict(compression="zlib", rowsperstrip=3, predictor=True),
    "lzw": dict(compression="lzw"),
    "packbits big-endian": dict(compression="packbits", byteorder=">", rowsperstrip=16),
    "plain tiles": dict(tile=(16, 32)),
    "deflate tiles": dict(tile=(16, 16), compression="zlib", predictor=True),
    "bigtiff tiles": dict(tile=(32, 16), compression="zlib", bigtiff=True),
    "bigtiff strips": dict(rowsperstrip=9, compression="zstd", bigtiff=True),
}


def tiff_case(path: Path, dtype: type, channels: int, height: int = 45, width: int = 51,
              **layout: object) -> np.ndarray:
    """A TIFF of random samples (grey, grey+alpha, RGB, RGBA, RGBA + one more extra sample)."""
    image = np.random.default_rng(channels).integers(0, np.iinfo(dtype).max + 1,
                                                     (height, width, channels), dtype=dtype)
    colours = 3 if channels >= 3 else 1
    extra = ("unassalpha", "unspecified")[: channels - colours]
    tifffile.imwrite(path, image if channels > 1 else image[..., 0],
                     photometric="rgb" if colours == 3 else "minisblack",
                     extrasamples=extra or None, metadata=None, **layout)
    return image


class TestTiff:
    @pytest.mark.parametrize("layout", list(TIFF_LAYOUTS))
    @pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
    @pytest.mark.parametrize("channels", [1, 2, 3, 4, 5])
    def test_layouts(self, tmp_path, layout, dtype, channels):
        image = tiff_case(tmp_path / "a.tif", dtype, channels, **TIFF_LAYOUTS[layout])
        whole = assert_like_read_image(tmp_path / "a.tif")
        assert np.array_equal(whole, image[..., : min(channels, 4)])

    def test_jpeg_compressed_rgb(self, tmp_path):
        image = np.random.default_rng(0).integers(0, 256, (70, 40, 3), dtype=np.uint8)
        for name, layout in {"strips": dict(rowsperstrip=16), "tiles": dict(tile=(32, 16))}.items():
            tifffile.imwrite(tmp_path / f"{name}.tif", image, photometric="rgb",
                             compression="jpeg", metadata=None, **layout)
            assert_like_read_image(tmp_path / f"{name}.tif")

    @pytest.mark.parametrize("height,width", [(1, 1), (1, 257), (263, 1), (31, 37)])
    @pytest.mark.parametrize("layout", ["plain strips", "deflate tiles"])
    def test_odd_sizes(self, tmp_path, height, width, layout):
        tiff_case(tmp_path / "a.tif", np.uint16, 3, height, width, **TIFF_LAYOUTS[layout])
        assert_like_read_image(tmp_path / "a.tif")

    @pytest.mark.parametrize("bigtiff", [False, True])
    def test_our_own_tiled_outputs(self, tmp_path, monkeypatch, bigtiff):
        monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)
        monkeypatch.setattr(write_module, "TIFF_TILE", 16)
        monkeypatch.setattr(write_module, "BIGTIFF_BYTES", 0 if bigtiff else 2**40)
        for channels in (1, 2, 3, 4):
            image = np.random.default_rng(channels).integers(0, 65536, (40, 50, channels))
            path = tmp_path / f"t{channels}.tif"
            write_image(path, (image / 65535).astype(np.float32), bit_depth=16)
            with tifffile.TiffFile(path) as tif:
                assert tif.is_bigtiff is bigtiff and tif.pages.first.is_tiled
            assert np.array_equal(assert_like_read_image(path), image)

    def test_our_own_striped_outputs(self, tmp_path):
        image = np.random.default_rng(1).integers(0, 256, (300, 70, 3))
        write_image(tmp_path / "s.tif", (image / 255).astype(np.float32))
        assert np.array_equal(assert_like_read_image(tmp_path / "s.tif"), image)

    @pytest.mark.parametrize("case", ["planar", "palette", "float", "cmyk", "miniswhite", "int16",
                                      "orientation"])
    def test_other_layouts_are_decoded_whole(self, tmp_path, case):
        rng = np.random.default_rng(2)
        path = tmp_path / f"{case}.tif"
        rgb = rng.integers(0, 256, (23, 19, 3), dtype=np.uint8)
        if case == "planar":
            tifffile.imwrite(path, np.moveaxis(rgb, -1, 0), photometric="rgb",
                             planarconfig="separate", metadata=None)
        elif case == "palette":
            tifffile.imwrite(path, rgb[..., 0] // 16, photometric="palette", metadata=None,
                             colormap=rng.integers(0, 65536, (3, 256), dtype=np.uint16))
        elif case == "float":
            tifffile.imwrite(path, rng.random((23, 19, 3), dtype=np.float32), photometric="rgb",
                             metadata=None)
        elif case == "cmyk":
            tifffile.imwrite(path, rng.integers(0, 256, (23, 19, 4), dtype=np.uint8),
                             photometric="separated", metadata=None)
        elif case == "miniswhite":
            tifffile.imwrite(path, rgb[..., 0], photometric="miniswhite", metadata=None)
        elif case == "int16":
            tifffile.imwrite(path, rng.integers(-999, 999, (23, 19), dtype=np.int16),
                             photometric="minisblack", metadata=None)
        else:
            tifffile.imwrite(path, rgb, photometric="rgb", metadata=None,
                             extratags=[(274, "H", 1, 8, True)])  # Orientation: rotate 270
        whole = assert_like_read_image(path, streamed=False)
        if case == "orientation":
            assert whole.shape == (19, 23, 3)

    @pytest.mark.parametrize("layout", ["one plain strip", "deflate strips", "deflate tiles"])
    def test_truncated_in_the_middle(self, tmp_path, layout):
        image = tiff_case(tmp_path / "a.tif", np.uint8, 3, 200, 64, **TIFF_LAYOUTS[layout])
        data = (tmp_path / "a.tif").read_bytes()
        with tifffile.TiffFile(tmp_path / "a.tif") as tif:
            page = tif.pages.first
            assert page.offset < page.dataoffsets[0]  # the header before the pixels
        path = tmp_path / "cut.tif"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError):
            read_image(path)
        with open_rows(path) as rows:
            assert rows.streamed
            assert np.array_equal(rows.read(0, 32), image[:32])
            with pytest.raises(InputError, match="truncated") as caught:
                rows.read(32, 200)
            assert str(path) in str(caught.value) and "\n" not in str(caught.value)
            assert np.array_equal(rows.read(0, 16), image[:16])

    def test_corrupt_strip(self, tmp_path):
        tiff_case(tmp_path / "a.tif", np.uint8, 1, 64, 40, compression="zlib", rowsperstrip=8)
        data = bytearray((tmp_path / "a.tif").read_bytes())
        with tifffile.TiffFile(tmp_path / "a.tif") as tif:
            at = tif.pages.first.dataoffsets[5]
        data[at: at + 8] = b"\xff" * 8
        (tmp_path / "a.tif").write_bytes(bytes(data))
        with pytest.raises(InputError, match="corrupt"):
            read_image(tmp_path / "a.tif")
        with open_rows(tmp_path / "a.tif") as rows:
            rows.read(0, 40)
            with pytest.raises(InputError, match="corrupt"):
                rows.read(40, 48)


# --- formats decoded whole ---------------------------------------------------------------------

class TestWholeDecodes:
    @pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("WEBP", "RGB"),
                                          ("WEBP", "RGBA")])
    def test_jpeg_and_webp(self, tmp_path, fmt, mode):
        y, x = np.mgrid[0:67, 0:45]
        pixels = np.stack([x * 5, y * 3, x + y, 255 - x], axis=-1).astype(np.uint8)
        Image.fromarray(pixels).convert(mode).save(tmp_path / "a.img", fmt, quality=90)
        whole = assert_like_read_image(tmp_path / "a.img", streamed=False)
        assert whole.dtype == np.uint8

    @pytest.mark.parametrize("orientation", [3, 6, 8])
    def test_exif_rotated_jpeg(self, tmp_path, orientation):
        exif = Image.Exif()
        exif[0x0112] = orientation
        y, x = np.mgrid[0:40, 0:24]
        Image.fromarray((x * 9 + y).astype(np.uint8)).save(tmp_path / "r.jpg", exif=exif.tobytes())
        whole = assert_like_read_image(tmp_path / "r.jpg", streamed=False)
        assert whole.shape[:2] == ((40, 24) if orientation == 3 else (24, 40))

    def test_what_read_py_leaves_to_pillow(self, tmp_path):
        image = np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8)
        tifffile.imwrite(tmp_path / "lab.tif", image, photometric="cielab", metadata=None)
        assert_like_read_image(tmp_path / "lab.tif", streamed=False)
        with open_rows(tmp_path / "lab.tif") as rows:
            assert any(note.startswith("read through Pillow") for note in rows.info.notes)


# --- the reader itself -------------------------------------------------------------------------

class TestRowSource:
    def test_bad_rows_and_closed_reader(self, tmp_path):
        (tmp_path / "a.png").write_bytes(png_case(2, 8, False, 10, 6))
        rows = open_rows(tmp_path / "a.png")
        for y0, y1 in [(-1, 3), (4, 3), (0, 11), (0.5, 2), ("0", 1)]:
            with pytest.raises(InputError, match="rows") as caught:
                rows.read(y0, y1)
            assert "a.png" in str(caught.value) and "0:10" in str(caught.value)
        assert rows.read(np.int64(2), np.int32(4)).shape == (2, 6, 3)
        rows.close()
        rows.close()
        with pytest.raises(InputError, match="closed"):
            rows.read(0, 1)

    def test_bands_are_the_callers_own(self, tmp_path):
        (tmp_path / "a.png").write_bytes(png_case(0, 8, False, 30, 6))
        with open_rows(tmp_path / "a.png") as rows:
            first = rows.read(0, 20)
            expected = first.copy()
            first[:] = 0
            assert np.array_equal(rows.read(10, 30)[:10], expected[10:])
            assert np.array_equal(rows.read(0, 20), expected)

    @pytest.mark.parametrize("name", ["bomb.png", "bomb.tif"])
    def test_pixel_limit_from_the_header(self, tmp_path, name):
        path = tmp_path / name
        if name.endswith(".png"):
            ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
            path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                             + chunk(b"IDAT", zlib.compress(bytes(16))) + chunk(b"IEND", b""))
        else:
            tifffile.imwrite(path, np.zeros((1, 1), np.uint8), metadata=None)
            data = bytearray(path.read_bytes())
            ifd = struct.unpack_from("<I", data, 4)[0]
            for i in range(struct.unpack_from("<H", data, ifd)[0]):
                tag = struct.unpack_from("<H", data, ifd + 2 + 12 * i)[0]
                if tag in (256, 257):
                    struct.pack_into("<HHII", data, ifd + 2 + 12 * i, tag, 4, 1, 100000)
            path.write_bytes(bytes(data))
        with pytest.raises(InputError) as expected:
            read_image(path)
        with pytest.raises(InputError) as caught:
            open_rows(path)
        assert str(caught.value) == str(expected.value) and "--max-pixels" in str(caught.value)

    def test_max_pixels_is_honoured(self, tmp_path):
        (tmp_path / "a.png").write_bytes(png_case(2, 8, False, 20, 30))
        with pytest.raises(InputError, match="above the limit"):
            open_rows(tmp_path / "a.png", max_pixels=599)
        with open_rows(tmp_path / "a.png", max_pixels=600) as rows:
            assert rows.read(0, 20).shape == (20, 30, 3)

    def test_missing_file(self, tmp_path):
        with pytest.raises(InputError, match="no such file"):
            open_rows(tmp_path / "missing.png")

    def test_overlapping_bands_decode_each_row_about_once(self, tmp_path, monkeypatch):
        samples = np.random.default_rng(3).integers(0, 256, (1000, 40, 3))
        (tmp_path / "a.png").write_bytes(png_file(samples, 8, 2))
        image = tiff_case(tmp_path / "a.tif", np.uint8, 3, 1000, 40, tile=(32, 16),
                          compression="zlib")
        monkeypatch.setattr(regions, "PIECE_BYTES", 3000)
        png_rows, tiff_blocks = [], []
        piece, decoded = regions._PngRows._piece, regions._TiffRows._decoded
        monkeypatch.setattr(regions._PngRows, "_piece",
                            lambda self, rows: png_rows.append(rows) or piece(self, rows))
        monkeypatch.setattr(regions._TiffRows, "_decoded",
                            lambda self, block: tiff_blocks.append(block) or decoded(self, block))
        for name, pixels in (("a.png", samples), ("a.tif", image)):
            with open_rows(tmp_path / name) as rows:
                for top in range(0, 1000, 64):
                    y0, y1 = max(0, top - 36), min(1000, top + 100)
                    assert np.array_equal(rows.read(y0, y1), pixels[y0:y1])
        assert sum(png_rows) == 1000
        assert sorted(tiff_blocks) == list(range(32))  # 1000 rows in 32-row tiles

    def test_reading_backwards_starts_a_png_over(self, tmp_path, monkeypatch):
        samples = np.random.default_rng(4).integers(0, 65536, (300, 20, 1))
        (tmp_path / "a.png").write_bytes(png_file(samples, 16, 0))
        starts = []
        restart = regions._PngRows._restart
        monkeypatch.setattr(regions._PngRows, "_restart",
                            lambda self: starts.append(1) or restart(self))
        with open_rows(tmp_path / "a.png") as rows:
            assert np.array_equal(rows.read(200, 300), samples[200:])
            assert np.array_equal(rows.read(250, 260), samples[250:260])  # kept: no restart
            assert len(starts) == 1
            assert np.array_equal(rows.read(0, 10), samples[:10])
            assert np.array_equal(rows.read(150, 160), samples[150:160])
            assert len(starts) == 2

    def test_threads_share_a_reader(self, tmp_path):
        samples = np.random.default_rng(5).integers(0, 256, (400, 30, 4))
        (tmp_path / "a.png").write_bytes(png_file(samples, 8, 6))
        failures = []
        with open_rows(tmp_path / "a.png") as rows:
            def work(seed):
                for y0 in np.random.default_rng(seed).integers(0, 390, 20):
                    if not np.array_equal(rows.read(y0, y0 + 10), samples[y0: y0 + 10]):
                        failures.append(y0)
            threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert not failures


# --- memory ------------------------------------------------------------------------------------

READER = r"""
import json, resource, sys, time, zlib
from tiledsr.io.regions import open_rows


def memory(field):
    # this process's resident set in MB: VmHWM is the peak since exec (ru_maxrss may include
    # the parent's memory at fork), VmRSS the present size
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) / 1024 for line in fh if line.startswith(field))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024


path, rows_per_band, overlap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # the peak starts again from here
    start = memory("VmRSS:")
except OSError:
    start = None
clock = time.perf_counter()
with open_rows(path, max_pixels=2**31) as rows:
    crc, top, height = 0, 0, rows.shape[0]
    while top < height:
        band = rows.read(max(0, top - overlap), min(height, top + rows_per_band))
        crc = zlib.crc32(band[top - max(0, top - overlap):], crc)
        top += rows_per_band
    streamed = rows.streamed
print(json.dumps(dict(crc=crc, streamed=streamed, seconds=time.perf_counter() - clock,
                      start=start, peak=memory("VmHWM:"))))
"""


def pattern(y0: int, y1: int, width: int) -> np.ndarray:
    """uint8 RGB rows y0:y1 of a test card that compresses well but varies everywhere."""
    y = np.arange(y0, y1, dtype=np.uint16)[:, None]
    x = np.arange(width, dtype=np.uint16)[None, :]
    plane = ((x ^ (y << 1)) + ((x >> 4) & (y >> 3))).astype(np.uint8)
    return plane[..., None] + np.array([0, 85, 170], np.uint8)


def write_png_by_bands(path: Path, height: int, width: int, band: int = 512) -> int:
    """An 8-bit RGB PNG of :func:`pattern`, written band by band (rows filtered None, Sub, Up
    and Paeth in turn); returns the crc32 of its pixels."""
    crc, above = 0, None
    squeeze = zlib.compressobj(1)
    with open(path, "wb") as fh:
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr))
        for top in range(0, height, band):
            pixels = pattern(top, min(height, top + band), width)
            crc = zlib.crc32(pixels, crc)
            raw = pixels.reshape(len(pixels), -1)
            kinds = np.array([0, 1, 2, 4])[np.arange(top, top + len(raw)) % 4]
            data = squeeze.compress(filtered(raw, 3, kinds, above).tobytes())
            above = raw[-1]
            if data:
                fh.write(chunk(b"IDAT", data))
        fh.write(chunk(b"IDAT", squeeze.flush()) + chunk(b"IEND", b""))
    return crc


def write_tiff_by_bands(path: Path, height: int, width: int) -> int:
    """A tiled, deflated BigTIFF of :func:`pattern` by write_image, from a float view that
    is never materialised; returns the crc32 of its pixels."""
    base = np.arange(3 * (height + width), dtype=np.float32) % 256 / np.float32(255)
    view = np.lib.stride_tricks.as_strided(base, (height, width, 3), (12, 12, 4))
    write_image(path, view)
    crc = 0
    for top in range(0, height, 512):
        crc = zlib.crc32(np.rint(view[top: top + 512] * 255).astype(np.uint8), crc)
    return crc


def read_in_subprocess(path: Path, rows_per_band: int, overlap: int) -> dict:
    done = subprocess.run([sys.executable, "-c", READER, str(path), str(rows_per_band),
                           str(overlap)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class TestMemory:
    @pytest.mark.slow
    def test_16384_squared_png_and_bigtiff_by_bands(self, tmp_path, monkeypatch):
        monkeypatch.setattr(write_module, "BIGTIFF_BYTES", 0)
        side = 16384
        expected = {"a.png": write_png_by_bands(tmp_path / "a.png", side, side),
                    "a.tif": write_tiff_by_bands(tmp_path / "a.tif", side, side)}
        with tifffile.TiffFile(tmp_path / "a.tif") as tif:
            assert tif.is_bigtiff and tif.pages.first.is_tiled
        for name, crc in expected.items():
            with pytest.raises(InputError, match="above the limit"):
                open_rows(tmp_path / name, max_pixels=side * side - 1)
            result = read_in_subprocess(tmp_path / name, 512, 64)
            print(name, result)
            assert result["streamed"] and result["crc"] == crc
            assert result["peak"] < 400, result  # MB; the image alone is 768 MB
            (tmp_path / name).unlink()

    def test_bands_of_a_large_png_and_tiff(self, tmp_path, monkeypatch):
        monkeypatch.setattr(write_module, "BIGTIFF_BYTES", 0)
        height, width = 4096, 4096  # 48 MB of pixels
        expected = {"a.png": write_png_by_bands(tmp_path / "a.png", height, width),
                    "a.tif": write_tiff_by_bands(tmp_path / "a.tif", height, width)}
        for name, crc in expected.items():
            result = read_in_subprocess(tmp_path / name, 128, 16)
            assert result["streamed"] and result["crc"] == crc
            if result["start"] is not None:  # Linux: the growth while reading is measurable
                assert result["peak"] - result["start"] < 24, result  # MB; the image is 48
