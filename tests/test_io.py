"""tiledsr.io: round trips, metadata, bad inputs and safe writing. Offline, images built in code."""
from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from tiledsr.errors import InputError, TiledsrError
from tiledsr.io import DEFAULT_MAX_PIXELS, ImageInfo, output_format, probe, read_image, write_image
from tiledsr.io import source as source_module
from tiledsr.io import write as write_module

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def levels(shape: tuple[int, ...], depth: int, seed: int = 0) -> np.ndarray:
    """float32 image whose values are exactly k / (2**depth - 1)."""
    k = np.random.default_rng(seed).integers(0, 2**depth, shape)
    return (k / (2**depth - 1)).astype(np.float32)


def smooth(height: int = 48, width: int = 64, channels: int = 3) -> np.ndarray:
    """A gentle gradient that lossy codecs keep close."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [x / width, y / height, (x + y) / (width + height), 0.5 + 0.4 * np.sin(x / 9)]
    return np.stack(planes[:channels], axis=-1).astype(np.float32)


def make_exif(**extra: int) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"  # Make
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09"}  # Exif IFD: DateTimeOriginal
    for tag, value in extra.items():
        exif[int(tag[1:])] = value
    return exif.tobytes()


def exif_tags(blob: bytes | None) -> Image.Exif:
    exif = Image.Exif()
    if blob:
        exif.load(blob)
    return exif


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, idat: bytes = zlib.compress(b"\x00" * 16)) -> bytes:
    """A valid 8-bit RGB PNG header claiming width x height, with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def tiff_bytes_claiming(width: int, height: int) -> bytes:
    """A tiny classic TIFF whose ImageWidth/ImageLength entries are patched to claim a huge size."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((1, 1), np.uint8), metadata=None)
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        tag = struct.unpack_from("<H", data, at)[0]
        if tag in (256, 257):
            struct.pack_into("<HHII", data, at, tag, 4, 1, width if tag == 256 else height)
    return bytes(data)


def one_line_input_error(path: Path | str, **kwargs) -> str:
    with pytest.raises(InputError) as caught:
        read_image(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message
    return message


# --- round trips -------------------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_lossless_round_trip_is_exact(tmp_path, ext, depth, channels):
    image = levels((13, 17, channels), depth)
    path = tmp_path / f"out.{ext}"
    write_image(path, image, bit_depth=depth)
    back, info = read_image(path)
    assert back.dtype == np.float32 and back.shape == image.shape
    assert np.array_equal(back, image)
    assert (info.channels, info.bit_depth, info.width, info.height) == (channels, depth, 17, 13)
    # a second write of what was read is byte-for-byte the same pixels again
    write_image(tmp_path / f"again.{ext}", back, bit_depth=depth)
    assert np.array_equal(read_image(tmp_path / f"again.{ext}")[0], image)


def test_sixteen_bit_png_is_really_sixteen_bit(tmp_path):
    image = levels((5, 6, 3), 16)
    write_image(tmp_path / "a.png", image, bit_depth=16)
    raw = (tmp_path / "a.png").read_bytes()
    assert raw[24] == 16 and raw[25] == 2  # IHDR: bit depth, colour type RGB
    assert len(np.unique(np.round(read_image(tmp_path / "a.png")[0] * 65535) % 257)) > 1


@pytest.mark.parametrize("ext,tolerance", [("jpg", 0.03), ("webp", 0.05)])
def test_lossy_formats_round_trip_approximately(tmp_path, ext, tolerance):
    image = smooth()
    write_image(tmp_path / f"a.{ext}", image, bit_depth=16)  # falls back to 8 bits
    back, info = read_image(tmp_path / f"a.{ext}")
    assert back.shape == image.shape and info.bit_depth == 8
    error = np.abs(back - image)
    assert error.mean() < tolerance / 3 and error.max() < tolerance * 3


def test_jpeg_flattens_alpha_onto_white(tmp_path):
    image = np.zeros((16, 16, 4), np.float32)  # transparent black
    write_image(tmp_path / "a.jpg", image)
    back, info = read_image(tmp_path / "a.jpg")
    assert info.channels == 3 and back.min() > 0.95


def test_webp_keeps_alpha(tmp_path):
    image = smooth(channels=4)
    write_image(tmp_path / "a.webp", image)
    back, info = read_image(tmp_path / "a.webp")
    assert info.channels == 4 and np.abs(back[..., 3] - image[..., 3]).max() < 0.05


def adam7_png16(pixels: np.ndarray, trns: bytes = b"") -> bytes:
    """An interlaced 16-bit PNG (unfiltered rows) of H x W x C uint16, optional tRNS chunk."""
    height, width, channels = pixels.shape
    passes = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
              (1, 0, 2, 1)]
    rows = [b"\x00" + row.astype(">u2").tobytes()
            for y, x, dy, dx in passes for row in pixels[y::dy, x::dx] if row.size]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + (png_chunk(b"tRNS", trns) if trns else b"")
            + png_chunk(b"IDAT", zlib.compress(b"".join(rows))) + png_chunk(b"IEND", b""))


def test_interlaced_sixteen_bit_png_and_colour_key(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 65536, (13, 11, 3), dtype=np.uint16)
    (tmp_path / "i.png").write_bytes(adam7_png16(pixels))
    back, info = read_image(tmp_path / "i.png")
    assert info.channels == 3 and np.array_equal(np.round(back * 65535), pixels)
    (tmp_path / "k.png").write_bytes(adam7_png16(pixels, struct.pack(">3H", *pixels[0, 0])))
    back, info = read_image(tmp_path / "k.png")
    assert info.channels == 4 == back.shape[2] and probe(tmp_path / "k.png").channels == 4
    assert back[0, 0, 3] == 0 and np.array_equal(np.round(back[..., :3] * 65535), pixels)


def test_pillow_sixteen_bit_grey_png_reads_as_one_channel(tmp_path):
    values = np.arange(0, 65536, 257 * 3 + 1, dtype=np.uint16)[:60].reshape(6, 10)
    Image.fromarray(values).save(tmp_path / "g.png")
    back, info = read_image(tmp_path / "g.png")
    assert (info.channels, info.bit_depth) == (1, 16)
    assert np.array_equal(np.round(back[..., 0] * 65535).astype(np.uint16), values)


@pytest.mark.parametrize("mode,transparency,channels",
                         [("P", None, 3), ("P", 0, 4), ("L", 7, 2), ("1", None, 1)])
def test_pillow_modes_are_normalised(tmp_path, mode, transparency, channels):
    im = Image.new(mode, (8, 4))
    if mode == "P":
        im.putpalette([10, 20, 30] * 256)
    params = {} if transparency is None else {"transparency": transparency}
    im.save(tmp_path / "m.png", **params)
    back, info = read_image(tmp_path / "m.png")
    assert info.channels == channels and back.shape == (4, 8, channels)
    if mode == "P":
        assert np.allclose(back[0, 0, :3], np.array([10, 20, 30]) / 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)
    back, info = read_image(tmp_path / "c.jpg")
    assert info.channels == 3 and info.icc_profile is None
    assert np.allclose(back[4, 4], [1, 0, 0], atol=0.03)


def test_tiff_from_other_writers(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 65536, (3, 9, 11), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    back, info = read_image(tmp_path / "planar.tif")
    assert info.channels == 3 and np.array_equal(np.round(back * 65535), np.moveaxis(rgb, 0, -1))
    grey = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    tifffile.imwrite(tmp_path / "float.tif", grey * 2 - 0.5)
    back, info = read_image(tmp_path / "float.tif")
    assert (info.channels, info.bit_depth) == (1, 16) and back.min() == 0 and back.max() == 1
    white = np.full((2, 3), 255, np.uint8)
    tifffile.imwrite(tmp_path / "white.tif", white, photometric="miniswhite")
    assert read_image(tmp_path / "white.tif")[0].max() == 0


def test_exif_orientation_is_applied_and_dropped(tmp_path):
    image = levels((6, 10, 3), 8)
    write_image(tmp_path / "o.png", image, exif=make_exif(t274=6))
    info = probe(tmp_path / "o.png")
    back, _ = read_image(tmp_path / "o.png")
    assert (info.width, info.height) == (6, 10)
    assert np.array_equal(back, np.rot90(image, -1))
    tags = exif_tags(info.exif)
    assert 0x0112 not in tags and tags[0x010F] == "TestCam"


@pytest.mark.parametrize("ext", ["png", "jpg", "tif", "webp"])
def test_icc_exif_and_dpi_survive(tmp_path, ext):
    write_image(tmp_path / f"m.{ext}", smooth(), icc_profile=SRGB, exif=make_exif(), dpi=(300, 150))
    info = probe(tmp_path / f"m.{ext}")
    assert info.icc_profile == SRGB
    tags = exif_tags(info.exif)
    assert tags[0x010F] == "TestCam" and tags.get_ifd(0x8769)[0x9003] == "2024:05:06 07:08:09"
    assert info.dpi == (300.0, 150.0)  # WebP: in its EXIF
    assert read_image(tmp_path / f"m.{ext}")[1] == info


def test_tiled_and_bigtiff_outputs(tmp_path, monkeypatch):
    monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)
    monkeypatch.setattr(write_module, "TIFF_TILE", 16)
    monkeypatch.setattr(write_module, "BIGTIFF_BYTES", 0)
    for channels in (1, 4):
        image = levels((40, 50, channels), 16, seed=channels)
        path = tmp_path / f"big{channels}.tif"
        write_image(path, image, bit_depth=16, exif=make_exif(), icc_profile=SRGB)
        with tifffile.TiffFile(path) as tif:
            assert tif.is_bigtiff and tif.pages.first.is_tiled
        back, info = read_image(path)
        assert np.array_equal(back, image) and info.icc_profile == SRGB


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_stdin_and_stdout(tmp_path, monkeypatch, fmt):
    image = levels((4, 5, 3), 16)
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    write_image("-", image, bit_depth=16, format=fmt, exif=make_exif())
    data = stdout.buffer.getvalue()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    monkeypatch.setattr(source_module, "_STREAMS", {})
    assert probe("-").path == "-"
    back, info = read_image("-")
    assert np.array_equal(back, image) and info.format == fmt.upper()
    assert exif_tags(info.exif)[0x010F] == "TestCam"
    with pytest.raises(InputError, match="--format"):
        write_image("-", image)


# --- probe and size guards ---------------------------------------------------------------------

def test_probe_reads_the_header_only(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(100000, 100000))
    info = probe(path, max_pixels=10**11)
    assert isinstance(info, ImageInfo)
    assert (info.width, info.height, info.channels, info.bit_depth) == (100000, 100000, 3, 8)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100000, 100000))
    pillow_limit = Image.MAX_IMAGE_PIXELS
    message = one_line_input_error(path)
    assert "100000x100000 = 10000 megapixels" in message and "268.4 megapixels" in message
    assert "--max-pixels" in message and DEFAULT_MAX_PIXELS == 268_435_456
    with pytest.raises(InputError, match="megapixels"):
        probe(path)
    assert pillow_limit == Image.MAX_IMAGE_PIXELS  # restored


def test_tiff_bomb_is_refused_from_the_header(tmp_path):
    path = tmp_path / "bomb.tif"
    path.write_bytes(tiff_bytes_claiming(100000, 100000))
    assert "10000 megapixels" in one_line_input_error(path)
    info = probe(path, max_pixels=10**11)
    assert (info.width, info.height, info.format) == (100000, 100000, "TIFF")


def test_max_pixels_is_honoured(tmp_path):
    write_image(tmp_path / "a.png", levels((20, 30, 3), 8))
    with pytest.raises(InputError, match="above the limit"):
        read_image(tmp_path / "a.png", max_pixels=599)
    assert read_image(tmp_path / "a.png", max_pixels=600)[0].shape == (20, 30, 3)


# --- bad inputs --------------------------------------------------------------------------------

def valid_png(tmp_path: Path) -> bytes:
    write_image(tmp_path / "ok.png", levels((64, 64, 3), 8))
    return (tmp_path / "ok.png").read_bytes()


def valid_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((smooth() * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["missing", "folder", "empty", "random", "text", "zero"])
def test_bad_inputs_raise_one_line_input_errors(tmp_path, case):
    path = tmp_path / ("x.jpg" if case == "text" else "x.png")
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "text":
        path.write_text("hello, this is not a picture\n")
    elif case == "zero":
        path.write_bytes(png_bytes(0, 10))
    message = one_line_input_error(str(path) + ("/" if case == "folder" else ""))
    assert str(path) in message
    with pytest.raises(InputError):
        probe(path)


def test_truncated_png(tmp_path):
    data = valid_png(tmp_path)
    for cut in (len(data) // 2, 40):
        path = tmp_path / f"cut{cut}.png"
        path.write_bytes(data[:cut])
        message = one_line_input_error(path)
        assert "truncated" in message or "corrupt" in message


def test_truncated_sixteen_bit_png(tmp_path):
    write_image(tmp_path / "a.png", levels((64, 64, 4), 16), bit_depth=16)
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:-2000])
    assert "truncated" in one_line_input_error(tmp_path / "b.png")


def test_truncated_jpeg_even_when_pillow_is_lenient(tmp_path, monkeypatch):
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library set it
    data = valid_jpeg()
    for cut in (2, 100, len(data) // 2):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:-cut])
        assert "truncated" in one_line_input_error(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_unsupported_tiff_layout(tmp_path):
    tifffile.imwrite(tmp_path / "ms.tif", np.zeros((5, 4, 4), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    assert "not supported" in one_line_input_error(tmp_path / "ms.tif")


# --- safe writing ------------------------------------------------------------------------------

def test_refuses_existing_file_unless_overwrite(tmp_path):
    path = tmp_path / "out.png"
    path.write_bytes(b"precious")
    with pytest.raises(InputError, match="--overwrite") as caught:
        write_image(path, smooth())
    assert "out.png" in str(caught.value) and path.read_bytes() == b"precious"
    write_image(path, smooth(), overwrite=True)
    assert read_image(path)[0].shape == (48, 64, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_refuses_to_write_over_an_input(tmp_path):
    source = tmp_path / "in.png"
    write_image(source, smooth())
    before = source.read_bytes()
    other_spelling = tmp_path / "sub" / ".." / "in.png"
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="input file") as caught:
        write_image(other_spelling, smooth() * 0.5, inputs=[source])
    assert "\n" not in str(caught.value) and "--overwrite" in str(caught.value)
    assert source.read_bytes() == before


@pytest.mark.parametrize("failure", ["shape", "encoder", "interrupt"])
def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch, failure):
    image = smooth()
    if failure == "shape":
        image, expected = np.zeros((4, 4, 5), np.float32), InputError
    elif failure == "encoder":
        def broken(*args, **kwargs):
            raise RuntimeError("disk on fire")
        monkeypatch.setattr(write_module.png_stream, "PaethFilter", broken)
        expected = TiledsrError
    else:
        def interrupted(fh, **kwargs):
            fh.write(b"partial data")
            raise KeyboardInterrupt
        monkeypatch.setitem(write_module._ENCODERS, "PNG", interrupted)
        expected = KeyboardInterrupt
    with pytest.raises(expected) as caught:
        write_image(tmp_path / "out.png", image)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_written_file_has_normal_permissions(tmp_path):
    write_image(tmp_path / "p.png", smooth())
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o666 & ~umask


def test_bad_destinations(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        write_image(tmp_path / "nowhere" / "a.png", smooth())
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(InputError, match="folder"):
        write_image(tmp_path / "dir.png", smooth())
    with pytest.raises(InputError, match="bit depth"):
        write_image(tmp_path / "a.png", smooth(), bit_depth=12)


def test_output_format():
    assert output_format("a.PNG", None) == "PNG"
    assert output_format("a.jpeg", None) == output_format("b.jpg", None) == "JPEG"
    assert output_format("a.tiff", None) == output_format("-", "tif") == "TIFF"
    assert output_format("a.tmp", "webp") == "WEBP"
    for path, fmt, match in [("a.bmp", None, "extension"), ("a.png", "gif", "unknown"),
                             ("a.png", "jpeg", "extension"), ("-", None, "format")]:
        with pytest.raises(InputError, match=match):
            output_format(path, fmt)
