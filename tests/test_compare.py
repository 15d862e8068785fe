"""tiledsr.compare: the picture to compare picks the detailed regions, shows the output 1:1 and
the input enlarged with Pillow's Lanczos at exactly the same place, for every kind of file, and
is written like every other output (atomically, never over the input, the output or an
existing file). Offline; images built in code."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiledsr import compare
from tiledsr.compare import (check_compare_path, choose_regions, compare_image, layout,
                             write_compare)
from tiledsr.errors import InputError
from tiledsr.io import write_image

LANCZOS = Image.Resampling.LANCZOS


# --- helpers -----------------------------------------------------------------------------------

def save(path: Path, pixels: np.ndarray) -> Path:
    """uint8 or uint16 (H, W[, C]) pixels written exactly at their depth."""
    peak = 255 if pixels.dtype == np.uint8 else 65535
    write_image(path, pixels.astype(np.float32) / peak, bit_depth=8 if peak == 255 else 16)
    return path


def noise(shape: tuple[int, ...], dtype=np.uint8, seed: int = 0) -> np.ndarray:
    """Smooth colour plus noise, so both Lanczos and the detail map have something to do."""
    rng = np.random.default_rng(seed)
    peak = np.iinfo(dtype).max
    h, w = shape[:2]
    ramp = np.add.outer(np.linspace(0, 0.5, h), np.linspace(0, 0.4, w))
    ramp = ramp.reshape(h, w, *([1] * (len(shape) - 2)))
    values = ramp + rng.uniform(0, 0.5, shape)
    if len(shape) == 3 and shape[2] in (2, 4):  # some transparent, some half, some opaque
        values[..., -1] = np.where(rng.uniform(size=(h, w)) < 0.3, 0.0, values[..., -1] + 0.3)
    return np.rint(np.clip(values, 0, 1) * peak).astype(dtype)


def to8(pixels: np.ndarray) -> np.ndarray:
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    if pixels.dtype == np.uint16:
        return np.rint(pixels / 257).astype(np.uint8)
    return pixels


def as_rgb(pixels8: np.ndarray) -> np.ndarray:
    """What the picture shows for 8-bit (h, w, C) pixels: grey as RGB, alpha over a checkerboard
    of 8-pixel squares (light 204 at the top-left, dark 153)."""
    c = pixels8.shape[2]
    colour = pixels8[..., :3] if c >= 3 else np.repeat(pixels8[..., :1], 3, axis=2)
    if c in (1, 3):
        return colour
    rows, cols = np.indices(pixels8.shape[:2]) // 8
    board = np.where((rows + cols) % 2, 153, 204)[..., None]
    a = pixels8[..., -1:].astype(np.int64)
    return np.floor((colour * a + board * (255 - a)) / 255 + 0.5).astype(np.uint8)


def lanczos_crop(inp: np.ndarray, region, out_size) -> np.ndarray:
    """Pillow's Lanczos enlargement of the whole input at ``region`` (output pixels), in float
    (mode "F"), colour premultiplied by alpha, shown over the checkerboard."""
    x, y, w, h = region
    (ih, iw), (oh, ow) = inp.shape[:2], out_size
    values = inp.reshape(ih, iw, -1) / (255 if inp.dtype == np.uint8 else 65535)
    c = values.shape[2]
    if c in (2, 4):
        values[..., :-1] *= values[..., -1:]
    box = (x * iw / ow, y * ih / oh, (x + w) * iw / ow, (y + h) * ih / oh)
    planes = np.stack([np.asarray(Image.fromarray(values[..., k].astype(np.float32)).resize(
        (w, h), LANCZOS, box=box)) for k in range(c)], axis=-1).astype(np.float64)
    colour = planes[..., :3] if c >= 3 else np.repeat(planes[..., :1], 3, axis=2)
    if c in (2, 4):
        rows, cols = np.indices((h, w)) // 8
        board = np.where((rows + cols) % 2, 153, 204)[..., None] / 255
        colour = colour + board * (1 - np.clip(planes[..., -1:], 0, 1))
    return np.rint(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def halves(picture: np.ndarray, regions) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each row's (input, output) crops as shown, the zoom checked and undone."""
    w, h = regions[0][2:]
    lay = layout((w, h), len(regions))
    assert picture.shape == (*lay.size, 3)
    found = []
    for row in range(len(regions)):
        pair = []
        for half in (0, 1):
            x0, y0 = lay.origin(row, half)
            shown = picture[y0: y0 + h * lay.zoom, x0: x0 + w * lay.zoom]
            crop = shown[:: lay.zoom, :: lay.zoom]
            assert np.array_equal(shown, crop.repeat(lay.zoom, 0).repeat(lay.zoom, 1))
            pair.append(crop)
        found.append(tuple(pair))
    return found


def overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def check_picture(picture, regions, inp, out) -> None:
    """The output half is the output's pixels 1:1; the input half is Pillow's Lanczos of the
    whole input at the same place (to float rounding: the picture resamples only a crop)."""
    out8 = to8(out)
    for (shown_in, shown_out), (x, y, w, h) in zip(halves(picture, regions), regions):
        assert np.array_equal(shown_out, as_rgb(out8[y: y + h, x: x + w]))
        diff = np.abs(shown_in.astype(int) - lanczos_crop(inp, (x, y, w, h), out.shape[:2]))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99


# --- regions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("size, scale", [((320, 320), 4), ((900, 1200), 1.5)])
def test_the_textured_patch_is_chosen(size, scale):
    h, w = size
    image = np.full((h, w, 3), (120, 140, 90), np.uint8)
    image[: h // 2] = (60, 70, 200)  # two flat areas with one straight edge between them
    py, px, side = int(h * 0.15), int(w * 0.7), 40
    image[py: py + side, px: px + side] = noise((side, side, 3), seed=3)
    out_size = (round(h * scale), round(w * scale))
    regions = choose_regions(image, out_size, regions=3, crop=256)
    assert len(regions) == 3
    patch = (px * out_size[1] / w, py * out_size[0] / h, side * scale, side * scale)
    x, y, cw, ch = regions[0]
    assert (cw, ch) == (256, 256)
    assert x <= patch[0] and patch[0] + patch[2] <= x + cw
    assert y <= patch[1] and patch[1] + patch[3] <= y + ch


def test_regions_do_not_overlap_and_repeat_exactly():
    image = noise((300, 420, 3), seed=1)
    first = choose_regions(image, (1000, 1400), regions=6, crop=200)
    assert first == choose_regions(image.copy(), (1000, 1400), regions=6, crop=200)
    assert len(first) == 6
    for i, a in enumerate(first):
        assert 0 <= a[0] <= 1400 - 200 and 0 <= a[1] <= 1000 - 200 and a[2:] == (200, 200)
        assert not any(overlap(a, b) for b in first[i + 1:])


def test_regions_are_spread_over_the_image():
    """Two textured patches side by side and a fainter one far away: the far one is shown, and the
    regions keep a quarter of the image apart."""
    image = np.full((400, 400, 3), 128, np.uint8)
    image[40:100, 40:100] = noise((60, 60, 3), seed=4)
    image[40:100, 110:170] = noise((60, 60, 3), seed=5)
    faint = noise((60, 60, 3), seed=6).astype(np.int16)
    image[300:360, 300:360] = (128 + (faint - 128) // 3).astype(np.uint8)
    regions = choose_regions(image, (1600, 1600), regions=3, crop=200)
    for i, (xa, ya, _, _) in enumerate(regions):
        assert all(max(abs(xa - xb), abs(ya - yb)) >= 400 for xb, yb, _, _ in regions[i + 1:])
    assert any(1000 <= x and 1000 <= y for x, y, _, _ in regions)  # the far patch is shown


def test_a_flat_image_is_shown_from_its_centre():
    regions = choose_regions(np.zeros((100, 100), np.uint8), (1000, 1000), regions=1, crop=200)
    assert regions == [(400, 400, 200, 200)]


def test_an_output_of_two_by_two_crops_shows_three_regions():
    regions = choose_regions(noise((128, 128, 3)), (512, 512), regions=3, crop=256)
    quadrants = {(0, 0), (0, 256), (256, 0), (256, 256)}
    assert len(regions) == 3 and {r[:2] for r in regions} <= quadrants


def test_an_output_smaller_than_the_crop_is_one_region_the_whole_image():
    assert choose_regions(noise((30, 50, 3)), (90, 150), regions=3) == [(0, 0, 150, 90)]


# --- the picture, file by file -----------------------------------------------------------------

CASES = {  # name: (input shape, input dtype, output (H, W), output dtype, crop)
    "rgb x4": ((64, 96, 3), np.uint8, (256, 384), np.uint8, 128),
    "rgb x3.3 by x3.25": ((77, 101, 3), np.uint8, (250, 333), np.uint8, 96),
    "grey": ((60, 80), np.uint8, (240, 320), np.uint8, 96),
    "grey+alpha": ((40, 50, 2), np.uint8, (160, 200), np.uint8, 64),
    "rgba": ((50, 40, 4), np.uint8, (200, 160), np.uint8, 64),
    "rgb 16-bit": ((48, 64, 3), np.uint16, (192, 256), np.uint16, 96),
    "grey 16-bit in, rgb out": ((33, 97), np.uint16, (99, 291), np.uint8, 64),
    "1x1": ((1, 1, 3), np.uint8, (4, 4), np.uint8, 256),
    "3 wide, 1000 high": ((1000, 3, 3), np.uint8, (4000, 12), np.uint8, 256),
    "1000 wide, 1 high": ((1, 1000), np.uint8, (2, 2000), np.uint8, 256),
    "shrunk": ((120, 160, 3), np.uint8, (60, 80), np.uint8, 32),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_picture_shows_the_files_at_the_regions(tmp_path, name):
    in_shape, in_dtype, out_size, out_dtype, crop = CASES[name]
    inp = noise(in_shape, in_dtype, seed=1)
    channels = in_shape[2] if len(in_shape) == 3 else 1
    out = noise((*out_size, 3 if name.endswith("rgb out") else channels), out_dtype, seed=2)
    save(tmp_path / "in.png", inp)
    save(tmp_path / "out.png", out)
    regions = write_compare(tmp_path / "in.png", tmp_path / "out.png", tmp_path / "cmp.png",
                            crop=crop, label="tiledsr test")
    with Image.open(tmp_path / "cmp.png") as im:
        assert im.mode == "RGB"
        picture = np.asarray(im)
    oh, ow = out_size
    assert 1 <= len(regions) <= 3
    assert all(r[2:] == (min(crop, ow), min(crop, oh)) for r in regions)
    assert not any(overlap(a, b) for i, a in enumerate(regions) for b in regions[i + 1:])
    check_picture(picture, regions, inp, out)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_tiny_crops_are_enlarged_by_a_whole_factor_and_narrow_ones_get_room_for_labels():
    assert layout((4, 4), 1).zoom == 16 and layout((4, 4), 1).size == (32 + 64, 2 * 160 + 2)
    assert layout((12, 256), 3).zoom == 2 and layout((12, 256), 3).cell == 160
    assert layout((256, 256), 3).zoom == 1 and layout((256, 256), 3).size == (3 * 288 + 4, 514)
    assert layout((512, 512), 1).size == (544, 1026)


def test_arrays_and_pil_images_give_the_file_picture(tmp_path):
    inp, out = noise((40, 60, 4), seed=5), noise((160, 240, 4), seed=6)
    regions = write_compare(save(tmp_path / "i.png", inp), save(tmp_path / "o.png", out),
                            tmp_path / "c.png", crop=64, label="x")
    picture, again = compare_image(Image.fromarray(inp), out, crop=64, label="x")
    assert again == regions
    assert np.array_equal(picture, np.asarray(Image.open(tmp_path / "c.png")))
    floats, _ = compare_image(inp / 255.0, out.astype(np.float32) / 255, crop=64, label="x")
    assert np.array_equal(floats, picture)


def test_labels_are_drawn_in_the_bands_only():
    inp, out = noise((30, 40, 3)), noise((90, 120, 3), seed=1)
    a, regions = compare_image(inp, out, crop=np.int64(32), label="tiledsr photo-x4")
    b, _ = compare_image(inp, out, crop=32, label="tiledsr anime-x4")
    lay = layout(regions[0][2:], len(regions))
    bands = np.zeros(lay.size, bool)
    for row in range(len(regions)):
        top = row * (lay.row_height + compare.SEP)
        bands[top: top + compare.BAND, lay.cell + compare.SEP:] = True
    differs = (a != b).any(-1)
    assert differs.any() and not (differs & ~bands).any()


def test_bad_images_in_memory():
    refused(lambda: compare_image(np.zeros((4, 4, 5), np.uint8), np.zeros((8, 8), np.uint8)),
            "the input", "C in 1..4")
    refused(lambda: compare_image(np.zeros((4, 4)), np.zeros((0, 8), np.int32)), "the output")


def test_the_output_is_read_a_crop_band_at_a_time_top_to_bottom(tmp_path, monkeypatch):
    inp, out = noise((200, 64, 3)), noise((800, 256, 3), seed=1)
    save(tmp_path / "i.png", inp)
    save(tmp_path / "o.png", out)
    reads, opened = [], compare.open_rows

    def recording(path, max_pixels):
        rows = opened(path, max_pixels)
        if Path(path).name == "o.png":
            assert rows.streamed
            read = rows.read
            rows.read = lambda y0, y1: reads.append((y0, y1)) or read(y0, y1)
        return rows

    monkeypatch.setattr(compare, "open_rows", recording)
    regions = write_compare(tmp_path / "i.png", tmp_path / "o.png", tmp_path / "c.png", crop=100)
    assert len(regions) == 3 and len(reads) == 3
    assert all(y1 - y0 == 100 for y0, y1 in reads) and reads == sorted(reads)


def test_an_astronaut_through_the_lanczos_preset(tmp_path):
    import tiledsr
    from skimage import data

    small = Image.fromarray(data.astronaut()).resize((128, 128), LANCZOS)
    small.save(tmp_path / "in.png")
    tiledsr.upscale(tmp_path / "in.png", tmp_path / "out.png", preset="lanczos")
    regions = write_compare(tmp_path / "in.png", tmp_path / "out.png", tmp_path / "cmp.png",
                            label="tiledsr lanczos")
    assert len(regions) == 3
    picture = np.asarray(Image.open(tmp_path / "cmp.png"))
    out = np.asarray(Image.open(tmp_path / "out.png"))
    check_picture(picture, regions, np.asarray(small), out)
    for shown_in, shown_out in halves(picture, regions):  # the same filter: nearly the same
        assert np.abs(shown_in.astype(int) - shown_out).mean() < 1.0


# --- refusals ----------------------------------------------------------------------------------

def refused(call, *words: str) -> str:
    with pytest.raises(InputError) as err:
        call()
    message = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in message
    assert all(w in message for w in words), message
    return message


@pytest.fixture
def pair(tmp_path):
    save(tmp_path / "in.png", noise((20, 30, 3)))
    save(tmp_path / "out.png", noise((80, 120, 3), seed=1))
    return tmp_path / "in.png", tmp_path / "out.png"


@pytest.mark.parametrize("overwrite", [False, True])
def test_never_over_the_input_or_the_output(pair, overwrite):
    inp, out = pair
    before = inp.read_bytes(), out.read_bytes()
    refused(lambda: write_compare(inp, out, inp, overwrite=overwrite), "input")
    refused(lambda: write_compare(inp, out, out, overwrite=overwrite), "output")
    refused(lambda: check_compare_path(out.parent / "later.png", inputs=[inp],
                                       outputs=[out.parent / "later.png"], overwrite=overwrite),
            "output")  # before the run: the output does not exist yet
    assert (inp.read_bytes(), out.read_bytes()) == before


def test_an_existing_file_is_kept_unless_overwrite(pair):
    inp, out = pair
    existing = inp.parent / "cmp.png"
    existing.write_bytes(b"mine")
    refused(lambda: write_compare(inp, out, existing), "already exists", "--overwrite")
    refused(lambda: check_compare_path(existing, inputs=[inp], outputs=[out]), "already exists")
    assert existing.read_bytes() == b"mine"
    write_compare(inp, out, existing, overwrite=True)
    assert Image.open(existing).size[0] > 0


@pytest.mark.parametrize("where, words", [("cmp.jpg", ("PNG",)), ("-", ("stdout",)),
                                          ("nowhere/cmp.png", ("does not exist",))])
def test_bad_compare_paths(pair, where, words):
    inp, out = pair
    target = where if where == "-" else inp.parent / where
    refused(lambda: check_compare_path(target, inputs=[inp], outputs=[out]), *words)


def test_stdin_or_stdout_cannot_be_compared(pair):
    refused(lambda: check_compare_path(pair[0].parent / "c.png", inputs=["-"], outputs=[pair[1]]),
            "not -")


@pytest.mark.parametrize("kwargs", [{"crop": 4}, {"crop": 513}, {"crop": 100.0}, {"regions": 0},
                                    {"regions": True}])
def test_bad_numbers(pair, kwargs):
    inp, out = pair
    refused(lambda: write_compare(inp, out, inp.parent / "c.png", **kwargs), "from")
    assert not (inp.parent / "c.png").exists()


def test_an_unreadable_output_leaves_nothing_behind(pair):
    inp, out = pair
    out.write_bytes(b"not an image")
    refused(lambda: write_compare(inp, out, out.parent / "c.png"), "out.png")
    assert sorted(os.listdir(out.parent)) == ["in.png", "out.png"]
