"""tiledsr.io.write_bands: images written from row bands pulled while encoding. Every format,
depth and channel count against write_image of the whole array; quantised bands; bands that
fail, do not fit or stall; PNG streamed to stdout; live temporary files; peak memory."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

import tiledsr.io as tio
from tiledsr.errors import InputError, TiledsrError
from tiledsr.io import png_stream
from tiledsr.io import write as write_module
from tiledsr.io.meta import png_chunks

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TEMP_NAME = re.compile(r"\.tiledsr-[0-9a-f]{4}-\d+-[a-z0-9]{6}\.tmp")
EXTS = ("png", "tif", "jpg", "webp")
HEIGHTS = (1, 7, 300)  # then the rest: irregular, aligned to nothing


def levels(shape: tuple[int, ...], depth: int, seed: int = 0) -> np.ndarray:
    """float32 image whose values are exactly k / (2**depth - 1), with a smooth part (so lossy
    codecs keep it close) and noise."""
    height, width, channels = shape
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [x / width, y / height, (x + y) / (width + height), 0.6 + 0.3 * np.sin(x / 5)]
    smooth = np.stack(planes[:channels], -1)
    noise = np.random.default_rng(seed).random(shape, dtype=np.float32)
    top = 2**depth - 1
    return (np.rint((0.85 * smooth + 0.15 * noise) * top) / top).astype(np.float32)


def split(image: np.ndarray, heights: tuple[int, ...] = HEIGHTS):
    """Bands of ``heights`` rows, then one band of the rest, as a generator."""
    top = 0
    for h in heights:
        yield image[top: top + h]
        top += h
    if top < len(image):
        yield image[top:]


def quantised(image: np.ndarray, depth: int) -> np.ndarray:
    return np.rint(image * (2**depth - 1)).astype(np.uint8 if depth == 8 else np.uint16)


def exif_blob() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09"}
    return exif.tobytes()


META = dict(icc_profile=SRGB, exif=exif_blob(), dpi=(300, 150))


def write(path: Path, bands, image: np.ndarray, depth: int, **kw) -> tuple[str, ...]:
    return tio.write_bands(path, bands, size=image.shape[:2], channels=image.shape[2],
                           bit_depth=depth, **kw)


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if TEMP_NAME.fullmatch(p.name)]


def same_info(a: tio.ImageInfo, b: tio.ImageInfo) -> bool:
    return {**vars(a), "path": None} == {**vars(b), "path": None}


@pytest.fixture
def small_pieces(monkeypatch):
    """PNG blocks and IDAT chunks of a few hundred bytes, TIFF strips of a few rows, so that
    small images cross every boundary many times."""
    monkeypatch.setattr(png_stream, "BLOCK_BYTES", 700)
    monkeypatch.setattr(png_stream, "IDAT_BYTES", 500)
    monkeypatch.setattr(write_module, "TIFF_STRIP_BYTES", 1000)


# --- 1. bands give what the whole array gives -------------------------------------------------

@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_irregular_bands_equal_the_whole_array(tmp_path, small_pieces, ext, depth, channels):
    image = levels((333, 37, channels), depth, seed=channels)
    whole, banded = tmp_path / f"whole.{ext}", tmp_path / f"banded.{ext}"
    notes = tio.write_image(whole, image, bit_depth=depth, **META)
    assert write(banded, split(image), image, depth, **META) == notes
    pixels, info = tio.read_image(banded)
    expected, whole_info = tio.read_image(whole)
    assert np.array_equal(pixels, expected) and same_info(info, whole_info)
    assert info.icc_profile == SRGB and info.dpi == (300.0, 150.0)
    assert tio.probe(banded).software == tio.software_name()
    if ext in ("png", "tif"):  # lossless: the very levels written
        assert np.array_equal(pixels, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([whole.name, banded.name])


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_quantised_bands_equal_float_bands(tmp_path, small_pieces, ext, depth, channels):
    image = levels((90, 41, channels), depth, seed=7)
    write(tmp_path / f"f.{ext}", split(image, (3, 50)), image, depth)
    write(tmp_path / f"u.{ext}", split(quantised(image, depth), (3, 50)), image, depth)
    a, b = tio.read_image(tmp_path / f"f.{ext}")[0], tio.read_image(tmp_path / f"u.{ext}")[0]
    if ext == "jpg" and channels in (2, 4):  # alpha flattened from a rounded alpha
        assert np.abs(a - b).max() <= 3 / 255
    else:
        assert np.array_equal(a, b)


@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_streamed_png_decodes_exactly_everywhere(tmp_path, small_pieces, depth, channels):
    image = levels((400, 257, channels), depth, seed=3)
    path = tmp_path / "a.png"
    write(path, split(image, (1, 1, 2, 60)), image, depth)
    data, want = path.read_bytes(), quantised(image, depth)
    want2d = want[..., 0] if channels == 1 else want
    assert np.array_equal(imagecodecs.png_decode(data), want2d)
    with Image.open(path) as im:
        if depth == 8 or channels == 1:  # Pillow has no 16-bit colour modes
            assert np.array_equal(np.asarray(im), want2d.astype(np.asarray(im).dtype))
        im.load()  # every chunk's CRC checked
    chunks = png_chunks(data)
    kinds = [kind for kind, _ in chunks]
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and kinds.count(b"IDAT") >= 3
    assert kinds.index(b"IDAT") > kinds.index(b"tEXt")  # metadata before the pixels
    assert data[24:26] == bytes([depth, png_stream.COLOR_TYPES[channels]])
    rows = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    row_bytes = 257 * channels * depth // 8 + 1
    assert set(rows[::row_bytes]) == {png_stream.PAETH}  # every row Paeth-filtered


def test_paeth_matches_the_definition_row_by_row():
    rng = np.random.default_rng(5)
    for bpp, n in [(1, 9), (3, 12), (8, 40)]:
        block, prev = rng.integers(0, 256, (4, n), np.uint8), rng.integers(0, 256, n, np.uint8)
        out = png_stream.PaethFilter(6, n, bpp)(block, prev)  # buffers for more rows than used
        above = prev
        for r, row in enumerate(block):
            for i in range(n):
                a = int(row[i - bpp]) if i >= bpp else 0
                b = int(above[i])
                c = int(above[i - bpp]) if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                assert out[r, i + 1] == (int(row[i]) - pred) % 256
            above = row
        assert (out[:, 0] == png_stream.PAETH).all()


@pytest.mark.parametrize("layout", ["strips", "tiles", "bigtiff"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_tiff_layouts_from_bands(tmp_path, monkeypatch, layout, channels):
    monkeypatch.setattr(write_module, "TIFF_TILE", 16)
    monkeypatch.setattr(write_module, "TIFF_STRIP_BYTES", 200)
    if layout != "strips":
        monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)
    if layout == "bigtiff":
        monkeypatch.setattr(write_module, "BIGTIFF_BYTES", 0)
    image = levels((75, 50, channels), 16, seed=channels)
    path = tmp_path / "a.tif"
    write(path, split(image, (1, 7, 20)), image, 16, **META)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        assert page.is_tiled == (layout != "strips") and tif.is_bigtiff == (layout == "bigtiff")
        assert page.predictor == 2 and page.compression == 8
        assert len(page.dataoffsets) > 3
        assert np.array_equal(page.asarray().reshape(image.shape), quantised(image, 16))
    pixels, info = tio.read_image(path)
    assert np.array_equal(pixels, image) and info.icc_profile == SRGB


def test_bands_of_every_shape_they_may_take(tmp_path):
    image = levels((20, 9, 1), 8)
    as_list = [image[:5, :, 0], image[5:5], image[5:]]  # 2-D for one channel, an empty band
    tio.write_bands(tmp_path / "a.png", as_list, size=(20, 9), channels=1)
    assert np.array_equal(tio.read_image(tmp_path / "a.png")[0], image)
    reused = np.empty((4, 9, 1), np.float32)  # one buffer refilled for every band

    def refilled():
        for top in range(0, 20, 4):
            reused[:] = image[top: top + 4]
            yield reused
    for ext in ("png", "tif", "jpg", "webp"):
        write(tmp_path / f"r.{ext}", refilled(), image, 8)
        write(tmp_path / f"w.{ext}", split(image, ()), image, 8)
        assert np.array_equal(tio.read_image(tmp_path / f"r.{ext}")[0],
                              tio.read_image(tmp_path / f"w.{ext}")[0])


@pytest.mark.parametrize("where", ["png", "tif", "tiled tif", "jpg", "webp", "png stdout",
                                   "tif stdout"])
def test_bands_are_computed_without_the_library_lock(tmp_path, monkeypatch, where):
    """The bands may be a whole pipeline that reports progress under ``quiet.LOCK`` from
    other threads: no encoder may hold that lock while it pulls a band."""
    from tiledsr import quiet

    if where == "tiled tif":
        monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)
        monkeypatch.setattr(write_module, "TIFF_TILE", 16)
    if where.endswith("stdout"):
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO()))
    image, free = levels((40, 30, 3), 8), []

    def lock_is_free() -> bool:
        got = []

        def take() -> None:
            got.append(quiet.LOCK.acquire(timeout=5))
            if got[0]:
                quiet.LOCK.release()
        other = threading.Thread(target=take)
        other.start()
        other.join()
        return got[0]

    def bands():
        for top in range(0, 40, 10):
            free.append(lock_is_free())
            yield image[top: top + 10]
    ext = where.split()[-2] if where.endswith("stdout") else where.split()[-1]
    dst = "-" if where.endswith("stdout") else tmp_path / f"a.{ext}"
    write(dst, bands(), image, 8, format=ext, **META)
    assert free == [True] * 4


# --- 2. bands that fail or do not fit -------------------------------------------------------

class Interrupted(BaseException):
    """What a CLI raises from its SIGTERM handler."""


def failing(image: np.ndarray, error: BaseException, log: list[str]):
    """Two bands, then ``error``; ``log`` says whether the generator was closed."""
    try:
        yield image[:7]
        yield image[7:20]
        raise error
    finally:
        log.append("closed")


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("error", [ValueError("model exploded"), KeyboardInterrupt(),
                                   Interrupted(), InputError("bad input")])
@pytest.mark.parametrize("existing", [False, True])
def test_bands_that_raise_leave_nothing_and_pass_through(tmp_path, monkeypatch, ext, error,
                                                          existing):
    monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)  # tiles: pulled inside tifffile
    monkeypatch.setattr(write_module, "TIFF_TILE", 16)
    dst = tmp_path / f"out.{ext}"
    if existing:
        dst.write_bytes(b"precious")
    image, log = levels((60, 40, 3), 8), []
    with pytest.raises(type(error)) as caught:
        write(dst, failing(image, error, log), image, 8, overwrite=existing)
    assert caught.value is error and log == ["closed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([dst.name] if existing else [])
    assert not existing or dst.read_bytes() == b"precious"


def misfits(image: np.ndarray) -> dict[str, tuple[list[np.ndarray], str]]:
    """name -> (bands, a phrase the ValueError must hold)."""
    u8 = quantised(image, 8)
    return {
        "too few rows": ([image[:10], image[10:-3]], "57 rows, not the image's 60"),
        "too many rows": ([image, image[:1]], "more than the image's 60 rows"),
        "too many in one band": ([image[:30], np.concatenate([image[30:], image[:5]])],
                                 "more than the image's 60 rows"),
        "wrong width": ([image[:10], image[10:, :-1]], "(50, 39, 3), not (rows, 40, 3)"),
        "wrong channels": ([image[..., :2]], "not (rows, 40, 3)"),
        "not an image": ([image[:10], image[10:, :, 0, None, None]], "not (rows, 40, 3)"),
        "wrong dtype": ([image[:10], u8[10:].astype(np.int32)], "int32, not float or uint8"),
        "uint16 at 8 bits": ([image[:10], u8[10:].astype(np.uint16)], "uint16, not float or uint8"),
        "nothing": ([], "0 rows, not the image's 60"),
    }


@pytest.mark.parametrize("ext", [*EXTS, "tiled tif"])
@pytest.mark.parametrize("case", list(misfits(np.zeros((60, 40, 3), np.float32))))
def test_bands_that_do_not_fit_are_value_errors_and_leave_nothing(tmp_path, monkeypatch, ext,
                                                                  case):
    if ext == "tiled tif":  # tiles pulled by tifffile's own loop
        monkeypatch.setattr(write_module, "TILED_TIFF_PIXELS", 0)
        monkeypatch.setattr(write_module, "TIFF_TILE", 16)
        ext = "tif"
    image = levels((60, 40, 3), 8)
    bands, phrase = misfits(image)[case]
    with pytest.raises(ValueError) as caught:
        write(tmp_path / f"out.{ext}", iter(bands), image, 8)
    message = str(caught.value)
    assert type(caught.value) is ValueError and "\n" not in message
    assert phrase in message and "out." in message
    assert list(tmp_path.iterdir()) == []


def test_a_bad_size_or_depth_is_refused_before_anything(tmp_path):
    pulled = []

    def bands():
        pulled.append(1)
        yield np.zeros((4, 4, 3), np.float32)
    for kw in (dict(size=(0, 4), channels=3), dict(size=(4, 4), channels=5),
               dict(size="4x4", channels=3)):
        with pytest.raises(ValueError, match="size"):
            tio.write_bands(tmp_path / "a.png", bands(), **kw)
    with pytest.raises(InputError, match="bit depth 12"):
        tio.write_bands(tmp_path / "a.png", bands(), size=(4, 4), channels=3, bit_depth=12)
    assert pulled == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext", EXTS)
def test_output_checks_come_before_the_first_band(tmp_path, ext):
    pulled = []

    def bands():
        pulled.append(1)
        yield np.zeros((4, 4, 3), np.float32)
    (tmp_path / f"a.{ext}").write_bytes(b"precious")
    for dst, kw, phrase in [(tmp_path / f"a.{ext}", {}, "--overwrite"),
                            (tmp_path / "nowhere" / f"a.{ext}", {}, "does not exist"),
                            ("-", {}, "needs a format")]:
        with pytest.raises(InputError, match=phrase):
            tio.write_bands(dst, bands(), size=(4, 4), channels=3, **kw)
    with pytest.raises(InputError, match="tiff"):
        tio.write_bands(tmp_path / "big.webp", bands(), size=(4, 20000), channels=3)
    assert pulled == [] and (tmp_path / f"a.{ext}").read_bytes() == b"precious"


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_own_errors_while_streaming_still_become_one_line_errors(tmp_path, monkeypatch, ext):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(png_stream, "PaethFilter", broken)
    monkeypatch.setattr(write_module.tifffile.TIFF, "COMPRESSORS", {8: broken})
    image = levels((30, 20, 3), 8)
    with pytest.raises(TiledsrError, match="encoder failed .disk on fire.") as caught:
        write(tmp_path / f"out.{ext}", split(image), image, 8)
    assert "\n" not in str(caught.value) and list(tmp_path.iterdir()) == []


# --- 3. stdout --------------------------------------------------------------------------------

STREAM_CHILD = """
import os, sys, numpy as np
from tiledsr.errors import TiledsrError
from tiledsr.io import write_bands
H, W = 1024, 1024
sizes = []

def bands():
    rng = np.random.default_rng(0)
    for top in range(0, H, 64):
        sizes.append(os.fstat(1).st_size if {probe} else 0)
        yield rng.integers(0, 256, (64, W, 3), np.uint8)  # noise: about 3 MB compressed
try:
    write_bands("-", bands(), size=(H, W), channels=3, format="png")
except TiledsrError as err:
    print(err, file=sys.stderr)
    sys.exit(err.exit_code)
print(sizes, file=sys.stderr)
"""


def test_png_streams_to_stdout_while_the_bands_come(tmp_path):
    target = tmp_path / "out.png"
    with open(target, "wb") as out:
        proc = subprocess.run([sys.executable, "-c", STREAM_CHILD.format(probe=True)], env=ENV,
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    sizes = [int(v) for v in re.findall(r"\d+", proc.stderr)]
    assert len(sizes) == 16 and sizes[0] < 1000  # header only before the first band
    assert sizes[-1] > 2**20  # most of the file out before the last band is made
    rng = np.random.default_rng(0)
    expected = np.concatenate([rng.integers(0, 256, (64, 1024, 3), np.uint8) for _ in range(16)])
    assert np.array_equal(imagecodecs.png_decode(target.read_bytes()), expected)


def test_png_through_a_pipe_and_a_reader_that_goes_away():
    proc = subprocess.run([sys.executable, "-c", STREAM_CHILD.format(probe=False)], env=ENV,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert imagecodecs.png_decode(proc.stdout).shape == (1024, 1024, 3)
    proc = subprocess.Popen([sys.executable, "-c", STREAM_CHILD.format(probe=False)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = proc.stdout.read(10)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and head == b"\x89PNG\r\n\x1a\n\x00\x00"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.fullmatch(r"stdout was closed after [\d,]+ bytes; the output is incomplete",
                        lines[0])


@pytest.mark.parametrize("ext", EXTS)
def test_every_format_from_bands_to_a_buffered_stdout(monkeypatch, ext):
    image = levels((40, 30, 4), 8)
    stdout = io.TextIOWrapper(io.BytesIO())
    monkeypatch.setattr(sys, "stdout", stdout)
    print("text first", end="")
    write(Path("-"), split(image), image, 8, format=ext)
    data = stdout.buffer.getvalue()
    assert data.startswith(b"text first")
    back = np.asarray(Image.open(io.BytesIO(data[10:])))
    assert back.shape[:2] == (40, 30)
    if ext in ("png", "tif"):
        assert np.array_equal(back, quantised(image, 8))


# --- 4. live temporary files ------------------------------------------------------------------

@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_discard_live_temps_removes_a_stalled_writers_temp(tmp_path, ext, overwrite):
    dst = tmp_path / f"out.{ext}"
    if overwrite:
        dst.write_bytes(b"precious")
    image = levels((40, 30, 3), 8)
    stalled, go, result = threading.Event(), threading.Event(), []

    def bands():
        yield image[:10]
        stalled.set()
        assert go.wait(30)
        yield image[10:]

    def work():
        try:
            write(dst, bands(), image, 8, overwrite=overwrite)
            result.append(None)
        except BaseException as err:  # noqa: BLE001 - reported below
            result.append(err)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    assert stalled.wait(30)
    assert len(temps(tmp_path)) == 1
    assert tio.discard_live_temps() == 1
    assert temps(tmp_path) == [] and tio.discard_live_temps() == 0
    go.set()
    worker.join(30)
    assert not worker.is_alive() and isinstance(result[0], TiledsrError)  # never published
    assert sorted(p.name for p in tmp_path.iterdir()) == ([dst.name] if overwrite else [])
    assert not overwrite or dst.read_bytes() == b"precious"
    write(dst, split(image), image, 8, overwrite=True)  # the next write is unaffected
    assert tio.discard_live_temps() == 0 and temps(tmp_path) == []


def test_only_live_temps_are_registered(tmp_path):
    from tiledsr.io import files as files_module

    image = levels((12, 10, 3), 8)
    for ext in EXTS:
        write(tmp_path / f"a.{ext}", split(image), image, 8)
    with pytest.raises(ValueError):
        write(tmp_path / "b.png", iter([image[:3]]), image, 8)
    assert files_module._LIVE == set() and tio.discard_live_temps() == 0


# --- 5. memory follows a band -----------------------------------------------------------------

MEMORY_CHILD = """
import resource, sys, numpy as np
from tiledsr.io import probe, write_bands
H = W = 8192

def gradient():
    x = np.linspace(0, 1, W, dtype=np.float32)
    for top in range(0, H, 256):
        y = (np.arange(top, top + 256, dtype=np.float32) / H)[:, None]
        yield np.stack([np.broadcast_to(x, (256, W)), np.broadcast_to(y, (256, W)),
                        (x * y * 7) % 1], -1)
write_bands(sys.argv[1], gradient(), size=(H, W), channels=3)
info = probe(sys.argv[1])
assert (info.width, info.height, info.channels) == (W, H, 3), info
try:  # VmHWM: the peak since exec (ru_maxrss can carry the forking parent's on Linux)
    with open("/proc/self/status") as fh:
        print(next(int(l.split()[1]) for l in fh if l.startswith("VmHWM:")) // 1024)
except OSError:
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_peak_memory_follows_a_band_not_the_image(tmp_path, ext):
    """8192 x 8192 RGB: 200 MB as uint8, 800 MB as float; the writer must stay far below."""
    out = tmp_path / f"poster.{ext}"
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(out)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split()[-1])
    assert peak_mb < 400, f"peak RSS {peak_mb} MB"
    assert out.stat().st_size > 10**5 and temps(tmp_path) == []
