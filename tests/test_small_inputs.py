"""Small and odd-sized inputs: every bundled preset plans, and runs or refuses with one line naming the
smallest size it accepts; the tile geometry behind it covers any length with tiles of the right multiple."""
import re

import numpy as np
import pytest
from PIL import Image

from tiledsr.cli import main
from tiledsr.diffusion.loop import latent_grid
from tiledsr.errors import InputError
from tiledsr.io import read_image
from tiledsr.pipeline import Pipeline
from tiledsr.presets import preset_names
from tiledsr.tiling import make_grid
from tiledsr.tiling.grid import axis_starts

SIZES = [(1, 1), (2, 3), (7, 5), (16, 200), (150, 100), (127, 131), (97, 89), (1000, 3)]  # (width, height)
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
REFUSAL = re.compile(r"needs an input of at least (\d+) px per side|needs an input of at least (\d+)x(\d+) px")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is faster, and immune to a busy machine (OpenMP spin-waits)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def image(tmp_path, w, h, channels=3):
    rng = np.random.default_rng(w * 1009 + h * 31 + channels)
    shape = (h, w) if channels == 1 else (h, w, channels)
    path = tmp_path / f"in-{w}x{h}-{channels}.png"
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), MODES[channels]).save(path)
    return path


# -- geometry ---------------------------------------------------------------------------------------------

def check_axis(length, tile, overlap, m):
    size, starts = axis_starts(length, tile, overlap, m)
    assert starts[0] == 0 and starts[-1] + size == length and list(starts) == sorted(set(starts))
    assert size == length if length < m else size % m == 0 and size <= max(m, tile)
    assert all(s % m == 0 for s in starts[:-1])
    biggest = length if tile >= length and length % m == 0 else max(m, min(tile, length - 1) // m * m)
    if len(starts) > 1 and overlap <= biggest - m:
        assert all(a + size - b >= overlap for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("length,tile,overlap,m", [
    (800, 768, 96, 64),  # poster-x8 img2img on 150x100: longer than the tile by less than the multiple
    (524, 512, 64, 32),  # sd-x4 on 127x131 (output pixels)
    (508, 512, 64, 32),  # shorter than the tile, not a multiple: two tiles of the largest multiple
    (101, 32, 8, 4), (3000, 1024, 64, 3), (2049, 1024, 64, 4), (65, 64, 0, 64), (63, 64, 0, 64), (17, 3, 1, 8),
])
def test_axis_covers_lengths_that_are_not_a_multiple(length, tile, overlap, m):
    check_axis(length, tile, overlap, m)


def test_axis_class_sweep():
    for m in (1, 2, 3, 8, 64):
        for length in range(1, 3 * m + 70, 3):
            for tile in (1, 2, m, m + 1, 2 * m, 2 * m + 5, 100):
                for overlap in sorted({0, tile // 4, tile // 2, tile - 1}):
                    check_axis(length, tile, overlap, m)


def test_make_grid_over_a_canvas_that_is_not_a_multiple():
    g = make_grid(800, 1200, 768, 96, 64)
    assert g.tile_h % 64 == 0 and g.tile_w % 64 == 0 and len(g) == 4
    cover = np.zeros((800, 1200), int)
    for t in g.tiles:
        cover[t.slices] += 1
    assert cover.min() >= 1


def test_latent_grid_tiles_stay_at_least_twice_the_multiple():
    for m in (2, 4, 8):
        for length in range(2 * m, 2 * m + 60):
            for tile in (1, 2 * m, 3 * m + 1, 40):
                for overlap in (0, m, 3 * m):
                    g = latent_grid(length, length + 3, tile, overlap, m)
                    assert 2 * m <= g.tile_h and g.tile_h % m == 0 and g.ys[-1] + g.tile_h == length
                    assert 2 * m <= g.tile_w and g.tile_w % m == 0 and g.xs[-1] + g.tile_w == length + 3


def test_pad_latents_mirrors_to_the_least_size_and_keeps_large_ones():
    import torch

    from tiledsr.diffusion.latent_upscale import pad_latents

    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    big, (h, w) = pad_latents(x, 5)
    assert (h, w) == (2, 3) and big.shape == (1, 1, 5, 5) and torch.equal(big[..., :2, :3], x)
    assert big[0, 0, :, 0].tolist() == [0, 3, 0, 3, 0] and big[0, 0, 0].tolist() == [0, 1, 2, 1, 0]
    one, _ = pad_latents(torch.ones(1, 4, 1, 1), 4)
    assert one.shape == (1, 4, 4, 4) and torch.equal(one, torch.ones(1, 4, 4, 4))
    same, size = pad_latents(x, 2)
    assert same is x and size == (2, 3)


def test_the_reported_crashes_plan():
    poster = Pipeline.from_preset("poster-x8").plan((150, 100), 3)
    assert poster.output_size == (800, 1200)
    assert Pipeline.from_preset("sd-x4").plan((127, 131), 1).output_size == (524, 508)


# -- plan: every bundled preset, every size ----------------------------------------------------------------

def least_of(message):
    m = REFUSAL.search(message)
    assert m, message
    return (int(m[1]), int(m[1])) if m[1] else (int(m[3]), int(m[2]))  # (h, w)


@pytest.mark.parametrize("name", [n for n in preset_names() if n != "txt2img-x4"])
def test_every_preset_plans_or_names_the_smallest_input(name):
    """Needs the lead's Pipeline.plan check (Stage.min_input_size) for the sd-x4 refusals."""
    pipe = Pipeline.from_preset(name)
    refused = {}
    for w, h in SIZES:
        for channels in (1, 2, 3, 4):
            try:
                plan = pipe.plan((w, h), channels)
            except InputError as exc:
                msg = str(exc)
                assert "\n" not in msg and msg.endswith(f"got {w}x{h}"), msg
                refused[w, h] = least_of(msg)
                continue
            oh, ow = plan.output_size
            assert oh >= h and ow >= w and len(plan.stages) == len(pipe.stages)
    if name == "sd-x4":  # its latents have the input's size: 2 x the UNet's multiple (8) per side
        assert set(refused) == {(1, 1), (2, 3), (7, 5), (1000, 3)}
        assert set(refused.values()) == {(16, 16)}
    else:  # the other diffusion stages pad small canvases; pixel stages take any size
        assert refused == {}
    for lh, lw in set(refused.values()):  # the size named is accepted, one pixel less is not
        pipe.plan((lw, lh), 3)
        for smaller in ((lw - 1, lh), (lw, lh - 1)):
            with pytest.raises(InputError, match=REFUSAL.pattern):
                pipe.plan(smaller, 3)


def test_the_smallest_input_is_found_through_earlier_stages():
    """Needs the lead's Pipeline.plan check: a later stage's minimum, traced back to the pipeline's input."""
    pipe = Pipeline([{"type": "resize", "scale": 0.5}, {"type": "sd-x4", "model": "not/here"}])
    with pytest.raises(InputError) as err:
        pipe.plan((40, 20), 3)
    msg = str(err.value)
    assert msg == ("this pipeline needs an input of at least 31 px per side (stage 2, sd-x4, needs 16 px per side), "
                   "got 40x20"), msg
    pipe.plan((31, 31), 3)
    pipe2 = Pipeline([{"type": "resize", "width": 64}, {"type": "sd-x4", "model": "not/here"}])
    with pytest.raises(InputError) as err:
        pipe2.plan((1000, 100), 3)  # 1000x100 -> 64x6: the height is too small, any width gives 64
    assert str(err.value) == ("this pipeline needs an input of at least 1x243 px (stage 2, sd-x4, needs 16 px per "
                              "side), got 1000x100")
    pipe2.plan((1000, 243), 3)


def test_cli_plan_exit_codes(tmp_path, capsys):
    code, out, err = run(capsys, "plan", image(tmp_path, 150, 100), "--preset", "poster-x8")
    assert code == 0 and "output 1200x800" in out, err
    code, out, err = run(capsys, "plan", image(tmp_path, 127, 131, 1), "--preset", "sd-x4")
    assert code == 0 and "output 508x524" in out, err
    code, out, err = run(capsys, "plan", image(tmp_path, 7, 5), "--preset", "sd-x4")  # needs the lead's check
    assert code == 2 and err.strip() == "tiledsr: error: sd-x4 needs an input of at least 16 px per side, got 7x5"


# -- upscale: the presets that run offline -----------------------------------------------------------------

def upscale(tmp_path, capsys, name, w, h, channels, *sets, out="out.png"):
    dst = tmp_path / out
    code, _, err = run(capsys, "upscale", image(tmp_path, w, h, channels), "-o", dst, "--preset", name,
                       "--progress", "none", "--overwrite", *sets)
    return code, err, (read_image(dst)[0] if code == 0 else None)


def check_ran(result, size, channels):
    code, err, out = result
    assert code == 0, err
    assert out.shape == (size[1], size[0], channels) and np.isfinite(out).all()


@pytest.mark.parametrize("w,h", SIZES)
def test_lanczos_runs_on_every_size(tmp_path, capsys, w, h):
    for channels in (1, 4):
        check_ran(upscale(tmp_path, capsys, "lanczos", w, h, channels), (4 * w, 4 * h), channels)


@pytest.mark.parametrize("w,h,channels", [(1, 1, 4), (2, 3, 1), (7, 5, 2), (1000, 3, 3), (97, 89, 1)])
def test_fast_x4_runs_on_small_and_odd_sizes(tmp_path, capsys, w, h, channels):
    check_ran(upscale(tmp_path, capsys, "fast-x4", w, h, channels), (4 * w, 4 * h), channels)


def test_photo_x4_real_weights_run_on_tiny_inputs(tmp_path, capsys):
    check_ran(upscale(tmp_path, capsys, "photo-x4", 1, 1, 4, "--set", "sr.backend=torch"), (4, 4), 4)
    pipe = Pipeline.from_preset("photo-x4", threads=1)  # the default backend (ncnn when installed)
    out = pipe(np.random.default_rng(0).integers(0, 256, (3, 2), dtype=np.uint8))
    assert out.shape == (12, 8) and out.dtype == np.uint8


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("diffusers")
    from tiny_models import build_tiny_latent_upscaler, build_tiny_sd, build_tiny_x4_upscaler

    root = tmp_path_factory.mktemp("tiny")
    return {"sd": build_tiny_sd(root / "sd"), "x2": build_tiny_latent_upscaler(root / "x2"),
            "x4": build_tiny_x4_upscaler(root / "x4")}


def test_sd_x4_runs_from_its_smallest_input_and_refuses_below(tmp_path, capsys, tiny):
    sets = ["--set", f"sd-x4.model={tiny['x4']}", "--set", "sd-x4.steps=2"]  # tiny UNet: multiple 4, least 8
    check_ran(upscale(tmp_path, capsys, "sd-x4", 8, 8, 4, *sets), (32, 32), 4)
    odd = upscale(tmp_path, capsys, "sd-x4", 9, 19, 1, *sets, "--tile", "64", "--overlap", "16")  # 2 tiles high
    check_ran(odd, (36, 76), 1)
    for w, h in ((7, 5), (1000, 3), (8, 7)):
        code, err, _ = upscale(tmp_path, capsys, "sd-x4", w, h, 3, *sets)
        assert code == 2, err
        assert err.strip() == f"tiledsr: error: sd-x4 needs an input of at least 8 px per side, got {w}x{h}"
        code, _, err = run(capsys, "plan", image(tmp_path, w, h), "--preset", "sd-x4", *sets)
        assert code == 2 and "at least 8 px per side" in err  # plan reads the UNet's config: no weights loaded


@pytest.mark.parametrize("w,h,channels", [(1, 1, 1), (2, 3, 4), (7, 5, 2), (1000, 3, 3)])
def test_latent_x2_pads_small_latents(tmp_path, capsys, tiny, w, h, channels):
    """Needs the lead's codec diff (at least 2x2 latents) for inputs of 8 px or less a side."""
    sets = ["--set", f"latent-x2.model={tiny['x2']}", "--set", "latent-x2.steps=2"]
    check_ran(upscale(tmp_path, capsys, "sd-latent-x2", w, h, channels, *sets), (2 * w, 2 * h), channels)


@pytest.mark.parametrize("w,h,channels", [(1, 1, 4), (7, 5, 1), (1000, 3, 3)])
def test_refine_pads_small_latents(tmp_path, capsys, tiny, w, h, channels):
    """Needs the lead's img2img and codec diffs."""
    sets = ["--set", f"img2img.model={tiny['sd']}", "--set", "img2img.steps=10"]
    check_ran(upscale(tmp_path, capsys, "refine", w, h, channels, *sets), (w, h), channels)


@pytest.mark.parametrize("w,h,channels", [(1, 1, 1), (2, 3, 4), (7, 5, 3)])
def test_poster_x8_runs_on_tiny_inputs(tmp_path, capsys, tiny, w, h, channels):
    """Needs the lead's img2img and codec diffs. The compact SR model stands in for x4plus (speed)."""
    sets = ["--set", f"latent-x2.model={tiny['x2']}", "--set", "latent-x2.steps=2", "--set",
            f"img2img.model={tiny['sd']}", "--set", "img2img.steps=10", "--set", "sr.model=animevideov3"]
    check_ran(upscale(tmp_path, capsys, "poster-x8", w, h, channels, *sets), (8 * w, 8 * h), channels)


def test_txt2img_refuses_a_canvas_below_the_unet_minimum(tmp_path, capsys, tiny):
    sets = ["--set", f"txt2img.model={tiny['sd']}", "--set", "txt2img.steps=2", "--set",
            f"latent-x2.model={tiny['x2']}", "--set", "latent-x2.steps=2", "--set", "sr.model=animevideov3"]
    size = ["--set", "txt2img.width=24", "--set", "txt2img.height=32"]  # tiny UNet: multiple 2 -> 2 x 2 x 8 px
    code, _, err = run(capsys, "plan", "--preset", "txt2img-x4", *sets, *size)
    assert code == 2 and err.strip() == ("tiledsr: error: stage 1 (txt2img): width and height must be at least "
                                         "32 px for this model's UNet, got 24x32")
    code, _, err = run(capsys, "upscale", "-o", tmp_path / "gen.png", "--preset", "txt2img-x4", *sets, *size)
    assert code == 2 and "at least 32 px" in err and not (tmp_path / "gen.png").exists()
    code, _, err = run(capsys, "upscale", "-o", tmp_path / "gen.png", "--preset", "txt2img-x4", "--progress", "none",
                       *sets, "--set", "txt2img.width=32", "--set", "txt2img.height=40")
    assert code == 0, err
    assert read_image(tmp_path / "gen.png")[0].shape == (160, 128, 3)  # 32x40 -> latent x2 -> sr x2
    code, _, err = run(capsys, "plan", "--preset", "txt2img-x4", "--set", "txt2img.width=64")  # SD 1.5: 128 px
    assert code == 2 and "at least 128 px for this model's UNet, got 64x512" in err
