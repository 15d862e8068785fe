"""Shifted fusion: non-overlapping latent tiles on a grid that moves every step (tiny offline models)."""
import json
import os
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("diffusers")

from tiny_models import (build_tiny_controlnet, build_tiny_latent_upscaler, build_tiny_sd,  # noqa: E402
                         build_tiny_sdxl, build_tiny_x4_upscaler, load_components)

from tiledsr import faults  # noqa: E402
from tiledsr.cli import main  # noqa: E402
from tiledsr.diffusion import loop  # noqa: E402
from tiledsr.diffusion.conditioning import TileControl, TimeIds  # noqa: E402
from tiledsr.diffusion.img2img import img2img_latents, txt2img_latents  # noqa: E402
from tiledsr.diffusion.latent_upscale import upscale_latents  # noqa: E402
from tiledsr.diffusion.loop import Shift, fused_grid, shifted_grid, shifted_redundancy, unet_multiple  # noqa: E402
from tiledsr.diffusion.text import encode_sd_prompt, encode_sdxl_prompt, encode_upscaler_prompt  # noqa: E402
from tiledsr.diffusion.x4_upscale import upscale_x4_latents  # noqa: E402
from tiledsr.errors import InputError  # noqa: E402
from tiledsr.io import read_image, write_image  # noqa: E402

PROMPT = "the cat and a dog"

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"sd": build_tiny_sd(root / "sd"), "x2": build_tiny_latent_upscaler(root / "x2"),
            "x4": build_tiny_x4_upscaler(root / "x4")}


@pytest.fixture(scope="module")
def sd(folders):
    return load_components(folders["sd"])


@pytest.fixture(scope="module")
def up(folders):
    return load_components(folders["x2"])


@pytest.fixture(scope="module")
def x4(folders):
    return load_components(folders["x4"])


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def smooth(h, w, seed=0, c=4):
    """Smooth latents (1, c, h, w): bicubic upsampling of a 3x5 random grid."""
    return F.interpolate(torch.randn(1, c, 3, 5, generator=gen(seed)), size=(h, w), mode="bicubic",
                         align_corners=True)


class PerSample:
    """A UNet run one sample at a time, so batching cannot change its rounding: any difference left
    between batch sizes is the loop's. Tensor arguments with the batch's length are split with it."""

    def __init__(self, unet):
        self.unet, self.config, self.device, self.dtype = unet, unet.config, unet.device, unet.dtype

    def __call__(self, sample, timestep, return_dict=True, **kw):
        n = sample.shape[0]

        def part(v, i):
            return v[i:i + 1] if torch.is_tensor(v) and v.ndim and v.shape[0] == n else v

        out = torch.cat([self.unet(sample[i:i + 1], timestep, return_dict=False,
                                   **{k: part(v, i) for k, v in kw.items()})[0] for i in range(n)])
        return SimpleNamespace(sample=out) if return_dict else (out,)


@pytest.fixture
def grids(monkeypatch):
    """The grid every step ran on: a list of (step, TileGrid), in call order."""
    seen = []
    real = loop.predict_canvas

    def spy(latents, t, predict, grid, blender, **kw):
        seen.append((kw.get("step", 0), grid))
        return real(latents, t, predict, grid, blender, **kw)

    monkeypatch.setattr(loop, "predict_canvas", spy)
    return seen


def i2i(c, **kw):
    args = dict(steps=10, strength=0.6, guidance=3.0, seed=5, tile=16, overlap=8, blend="cosine", batch=2,
                fusion="shifted")
    args.update(kw)
    embeds = encode_sd_prompt(c["tokenizer"], c["text_encoder"], PROMPT, guidance=args["guidance"])
    return img2img_latents(args.pop("unet", c["unet"]), c["scheduler"], args.pop("init", smooth(24, 40)), embeds,
                           **args)


def x2(c, **kw):
    args = dict(steps=4, guidance=4.0, seed=5, tile=16, overlap=8, blend="cosine", batch=2, fusion="shifted")
    args.update(kw)
    embeds = encode_upscaler_prompt(c["tokenizer"], c["text_encoder"], PROMPT, guidance=args["guidance"])
    return upscale_latents(args.pop("unet", c["unet"]), c["scheduler"], args.pop("low", smooth(16, 20)), embeds,
                           **args)


def hard_borders(starts, sizes):
    """Positions where one tile ends and the next begins (no overlap, so no feathering across them);
    where the last tile overlaps its neighbour, the blend weights ramp over the overlap."""
    return {b for a, n, b in zip(starts, sizes, starts[1:]) if a + n == b}


# --- geometry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w,tile,m", [(24, 40, 16, 2), (23, 37, 16, 2), (40, 56, 16, 8), (97, 131, 40, 8),
                                         (64, 64, 64, 8), (16, 17, 3, 8), (130, 70, 32, 4), (125, 96, 48, 8)])
def test_tiles_partition_the_canvas_and_nothing_wraps_around(h, w, tile, m):
    """Every step's tiles lie inside the canvas and cover each pixel once (but for less than a multiple
    at the far edge of an axis whose length is not one); sides and starts are multiples, there are as
    many tiles as on the unmoved grid (or one more), none is larger than largest_side and none is
    smaller than half the asked size or two multiples, but for an axis too short for that."""
    base = shifted_grid(h, w, tile, m)
    want = max(2 * m, tile - tile % m)
    for step in range(12):
        g = Shift(seed=3, multiple=m).grid(base, step)
        assert (g.tile_h, g.tile_w) == (base.tile_h, base.tile_w)
        cover = torch.zeros(h, w, dtype=torch.int32)
        for t in g.tiles:
            assert 0 <= t.y and t.y + t.h <= h and 0 <= t.x and t.x + t.w <= w  # nothing wraps
            cover[t.slices] += 1
        assert (cover > 0).all()
        for starts, sizes, side, length in ((g.ys, g.row_heights, g.tile_h, h), (g.xs, g.col_widths, g.tile_w, w)):
            assert side == (want if length > want else side) and side <= length
            assert starts[0] == 0 and starts[-1] + sizes[-1] == length
            assert all(v % m == 0 for v in sizes) and all(v % m == 0 for v in starts[:-1])
            assert all(v <= loop.largest_side(side, m) for v in sizes)
            assert len(starts) <= len(getattr(base, "ys" if side == g.tile_h and length == h else "xs")) + 1
            assert all(v >= min(side / 2, 2 * m) for v in sizes) or len(sizes) == 1
            if length - side >= m:  # else no offset moves the axis: one tile, or two overlapping ones
                for a, b, n in zip(starts, sizes, starts[1:]):
                    assert 0 <= a + b - n < (m if n == starts[-1] and length % m else 1)  # abut; the last may overlap
        assert (cover <= 4).all()


@pytest.mark.parametrize("h,w,tile,m", [(96, 96, 32, 2), (64, 64, 32, 2), (128, 128, 48, 8), (125, 96, 48, 8)])
def test_shifted_fusion_computes_each_pixel_about_once(h, w, tile, m):
    """The cost of shifted fusion: the tiles of every offset add up to the canvas (a multiple of the
    UNet's size), or to less than a multiple more per axis."""
    r = shifted_redundancy(h, w, tile, m)
    assert r == 1.0 if h % m == 0 and w % m == 0 else 1.0 < r < (1 + m / h) * (1 + m / w)


def test_one_tile_canvas_is_one_tile_every_step():
    base = shifted_grid(24, 40, 64, 8)
    assert len(base) == 1 and (base.tile_h, base.tile_w) == (24, 40)
    assert all(Shift(1, 8).grid(base, i) == base for i in range(20))
    assert shifted_redundancy(24, 40, 64, 8) == 1.0


def test_offsets_depend_only_on_seed_and_step_and_move_the_borders():
    base = shifted_grid(48, 64, 16, 2)
    a, b = Shift(7, 2), Shift(7, 2)
    offs = [a.offset(base, i) for i in range(30)]
    assert offs == [b.offset(base, i) for i in range(30)]  # a pure function of (seed, step)
    assert offs == [a.offset(base, i) for i in range(30)]  # asking again changes nothing
    assert list(reversed(offs)) == [a.offset(base, i) for i in reversed(range(30))]  # nor the order asked in
    assert offs != [Shift(8, 2).offset(base, i) for i in range(30)]  # another seed, other offsets
    assert all(0 <= dy < 16 and 0 <= dx < 16 and dy % 2 == dx % 2 == 0 for dy, dx in offs)
    assert len({dy for dy, _ in offs}) >= 4 and len({dx for _, dx in offs}) >= 4
    # Hard tile borders (where tiles abut, unblended) move: none of them is there at every step.
    borders = [hard_borders(g.xs, g.col_widths) for g in (Shift(7, 2).grid(base, i) for i in range(30))]
    assert len({frozenset(s) for s in borders}) > 1 and not set.intersection(*borders)


def test_fused_grid_kinds_and_bad_fusion():
    g, shift, regrid = fused_grid(24, 40, tile=16, overlap=8, multiple=2)
    assert shift is None and g == loop.latent_grid(24, 40, 16, 8, 2) and regrid(8) == loop.latent_grid(24, 40, 8, 4, 2)
    g, shift, regrid = fused_grid(24, 40, tile=16, overlap=8, multiple=2, fusion="shifted", seed=4)
    assert shift == Shift(4, 2) and g == shifted_grid(24, 40, 16, 2) and regrid(8) == shifted_grid(24, 40, 8, 2)
    with pytest.raises(InputError, match="fusion must be one of"):
        fused_grid(24, 40, tile=16, overlap=8, multiple=2, fusion="spiral")


# --- the loop ----------------------------------------------------------------------------------------


def test_one_tile_equals_overlap_fusion_exactly(sd, up, x4, grids):
    """A canvas that fits in one tile runs the diffusers-equal path whatever the fusion."""
    for fusion_runs in (
        lambda f: i2i(sd, tile=64, fusion=f),
        lambda f: x2(up, tile=64, fusion=f),
        lambda f: txt2img_latents(sd["unet"], sd["scheduler"], 24, 40,
                                  encode_sd_prompt(sd["tokenizer"], sd["text_encoder"], PROMPT, guidance=3.0),
                                  steps=3, guidance=3.0, seed=2, tile=64, overlap=8, fusion=f),
        lambda f: upscale_x4_latents(x4["unet"], x4["scheduler"], x4["low_res_scheduler"],
                                     smooth(16, 24, c=3).tanh(),
                                     encode_sd_prompt(x4["tokenizer"], x4["text_encoder"], PROMPT, guidance=4.0),
                                     steps=2, guidance=4.0, seed=2, tile=64, overlap=8, fusion=f),
    ):
        assert torch.equal(fusion_runs("shifted"), fusion_runs("overlap"))
    assert grids and all(len(g) == 1 for _, g in grids)


@pytest.mark.parametrize("run", [i2i, x2], ids=["img2img", "latent-x2"])
def test_same_seed_same_output_for_any_order_and_batch(sd, up, run):
    c = sd if run is i2i else up
    model = PerSample(c["unet"])
    ref = run(c, unet=model, batch=1)
    assert torch.equal(run(c, unet=model, batch=1), ref)
    shuffle = lambda n: torch.randperm(n, generator=gen(n)).tolist()  # noqa: E731
    for kw in (dict(batch=3), dict(batch=64), dict(batch=1, order=lambda n: list(reversed(range(n)))),
               dict(batch=3, order=shuffle)):
        assert torch.equal(run(c, unet=model, **kw), ref), kw
    assert not torch.equal(run(c, unet=model, seed=6), ref)
    assert (run(c, batch=3, order=shuffle) - ref).abs().max() < 1e-4  # the stock UNet's batch rounding only


def test_steps_run_on_moving_grids(sd, grids):
    out = i2i(sd, steps=10, strength=1.0)
    assert torch.isfinite(out).all()
    base = shifted_grid(24, 40, 16, unet_multiple(sd["unet"]))
    assert [s for s, _ in grids] == list(range(10))
    assert [g for _, g in grids] == [Shift(5, 2).grid(base, i) for i in range(10)]  # the seed's offsets, step by step
    assert len({(g.ys, g.xs) for _, g in grids}) > 3
    for starts, sizes in (("ys", "row_heights"), ("xs", "col_widths")):  # no hard border is there at every step
        assert not set.intersection(*[hard_borders(getattr(g, starts), getattr(g, sizes)) for _, g in grids])
    assert not torch.equal(out, i2i(sd, steps=10, strength=1.0, fusion="overlap"))


def test_progress_counts_each_steps_own_tiles(sd, grids):
    events = []
    i2i(sd, batch=2, progress=lambda *e: events.append(e))  # 10 steps at strength 0.6: 6 run
    assert events == sorted(events)
    per_step = {i + 1: len(g) for i, g in grids}
    assert {e[0] for e in events} == set(range(1, 7))
    assert all(e[3] == per_step[e[0]] for e in events)
    assert all((step, n, n) in {(e[0], e[2], e[3]) for e in events} for step, n in per_step.items())


def test_out_of_memory_halves_the_shifted_tile(sd, grids, monkeypatch):
    monkeypatch.setenv("TILEDSR_FAIL_OOM", "1")
    faults.reset()
    said = []
    out = i2i(sd, batch=1, tile=32, init=smooth(40, 64), on_backoff=said.append)
    faults.reset()
    assert torch.isfinite(out).all() and said and "going on with 16" in said[0]
    ran = [g for _, g in grids]
    assert ran[0].tile_h == 32 and all(g.tile_h == g.tile_w == 16 for g in ran[1:])
    base = shifted_grid(40, 64, 16, 2)
    assert ran[1:] == [Shift(5, 2).grid(base, i) for i in range(len(ran) - 1)]


def test_resume_after_a_cancel_half_way_is_bit_identical(sd, tmp_path):
    from tiledsr.checkpoint import StepState

    for scheduler in ("DDIMScheduler", "EulerAncestralDiscreteScheduler"):  # the second draws noise each step
        import diffusers

        c = dict(sd, scheduler=getattr(diffusers, scheduler).from_config(sd["scheduler"].config))
        whole = i2i(c, steps=8, strength=1.0)

        class Stop(Exception):
            pass

        def cancel(step, steps, tile, tiles):
            if step == 5:
                raise Stop

        state = StepState(tmp_path / f"{scheduler}.steps")
        with pytest.raises(Stop):
            i2i(c, steps=8, strength=1.0, progress=cancel, checkpoint=state)
        assert int(state.load()["step"]) == 4
        steps = []
        resumed = i2i(c, steps=8, strength=1.0, checkpoint=state, progress=lambda *e: steps.append(e[0]))
        assert min(steps) == 5  # it continued, it did not start again
        assert torch.equal(resumed, whole), scheduler


def test_conditioning_sees_the_shifted_tiles_true_positions(tmp_path, grids, monkeypatch):
    """SDXL's crop coordinates and the ControlNet's crops come from each step's shifted tiles."""
    xl = load_components(build_tiny_sdxl(tmp_path / "xl"))
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(build_tiny_controlnet(tmp_path / "cn", tmp_path / "xl")).eval()
    seen = {"ids": [], "control": []}
    real_ids, real_control = TimeIds.batch, TileControl.residuals

    def ids(self, tiles, canvas, guided, dtype, device):
        out = real_ids(self, tiles, canvas, guided, dtype, device)
        seen["ids"].append((tuple(tiles), out))
        return out

    def control(self, x_in, t, tiles, **kw):
        seen["control"].append(tuple(tiles))
        return real_control(self, x_in, t, tiles, **kw)

    monkeypatch.setattr(TimeIds, "batch", ids)
    monkeypatch.setattr(TileControl, "residuals", control)
    embeds = encode_sdxl_prompt([xl["tokenizer"], xl["tokenizer_2"]], [xl["text_encoder"], xl["text_encoder_2"]],
                                PROMPT, guidance=1.0)
    out = img2img_latents(xl["unet"], xl["scheduler"], smooth(20, 28), embeds, steps=4, strength=1.0, guidance=1.0,
                          seed=3, tile=8, overlap=4, fusion="shifted", batch=3, time_ids=TimeIds(8),
                          control=TileControl(net, smooth(160, 224, c=3).sigmoid(), factor=8))
    assert torch.isfinite(out).all()
    def key(t):
        return t.index, t.y, t.x, t.h, t.w

    ran = sorted((t for _, g in grids for t in g.tiles), key=key)
    assert sorted((t for ts, _ in seen["ids"] for t in ts), key=key) == ran
    assert sorted((t for ts in seen["control"] for t in ts), key=key) == ran
    for tiles, rows in seen["ids"]:
        for t, r in zip(tiles, rows.tolist()):
            assert r == [160, 224, 8 * t.y, 8 * t.x, 8 * t.h, 8 * t.w]  # crop = where the shifted tile sits
    moved = {(g.ys, g.xs) for _, g in grids}
    assert len(moved) > 1


def test_bad_fusion_in_the_python_api(sd):
    with pytest.raises(InputError, match="fusion must be one of"):
        i2i(sd, fusion="roll")


# --- stages ------------------------------------------------------------------------------------------


def photo(path, h, w):
    from skimage import data

    write_image(path, data.chelsea()[60:60 + h, 150:150 + w].astype(np.float32) / 255)
    return path


def preset(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


STAGES = {  # model, options, input (h, w) or None, tile (output px), output (h, w)
    "img2img": ("sd", "    steps: 4\n    strength: 0.75\n", (48, 64), 32, (48, 64)),
    "latent-x2": ("x2", "    steps: 2\n", (96, 128), 128, (192, 256)),
    "sd-x4": ("x4", "    steps: 2\n", (24, 32), 32, (96, 128)),
    "txt2img": ("sd", "    steps: 3\n    width: 128\n    height: 64\n", None, 64, (64, 128)),
}


@pytest.mark.parametrize("kind", list(STAGES))
def test_stage_with_shifted_fusion_runs_from_the_cli(tmp_path, capsys, folders, kind):
    model, options, size, tile, want = STAGES[kind]
    src = [] if size is None else [photo(tmp_path / "in.png", *size)]
    outs = {}
    for fusion in ("shifted", "shifted", "overlap"):
        p = preset(tmp_path, f"tile: {tile}\noverlap: 16\nstages:\n  - type: {kind}\n"
                             f"    model: {folders[model]}\n    fusion: {fusion}\n{options}", f"{fusion}.yaml")
        code, _, err = cli(capsys, "upscale", *src, "-o", tmp_path / "o.png", "--preset", p, "--seed", "4",
                           "--progress", "json", "--overwrite")
        assert code == 0, err
        events = [json.loads(line) for line in err.splitlines()]
        tiles = [e["tiles"] for e in events if e["event"] == "progress" and e.get("stage") == kind]
        assert tiles and max(tiles) > 1  # really tiled
        img = read_image(tmp_path / "o.png")[0]
        assert img.shape[:2] == want
        if fusion in outs:
            assert np.array_equal(img, outs[fusion])  # deterministic for a seed
        outs[fusion] = img
    assert not np.array_equal(outs["shifted"], outs["overlap"])
    code, out, err = cli(capsys, "plan", *src, "--preset", tmp_path / "shifted.yaml")
    assert code == 0, err
    assert "shifted fusion" in out


def test_bad_fusion_value_exits_2(tmp_path, capsys, folders):
    src = photo(tmp_path / "in.png", 48, 64)
    p = preset(tmp_path, f"stages:\n  - type: latent-x2\n    model: {folders['x2']}\n    fusion: rolled\n")
    code, _, err = cli(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 2 and "fusion" in err and "'overlap', 'shifted'" in err and len(err.strip().splitlines()) == 1
    p = preset(tmp_path, f"stages:\n  - type: img2img\n    model: {folders['sd']}\n", "ok.yaml")
    code, _, err = cli(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p, "--set",
                       "img2img.fusion=spiral")
    assert code == 2 and "fusion" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p, "--set",
                       "img2img.fusion=shifted", "--set", "img2img.mode=independent")
    assert code == 2 and "fusion: shifted needs mode: fused" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_cli_run_interrupted_half_way_resumes_bit_identically(tmp_path, capsys, folders, monkeypatch):
    """As tests/test_resume.py does for overlapped fusion, in this process: Ctrl-C (exit 130) once
    step 4 is under way, then --resume; the output's bytes equal an uninterrupted run's."""
    monkeypatch.setenv("TILEDSR_CHECKPOINT_EVERY", "0")  # keep the state after every step
    monkeypatch.delenv("TILEDSR_FAIL_OOM", raising=False)
    src = photo(tmp_path / "in.png", 64, 96)
    args = ["upscale", src, "--preset", "refine", "--set", f"img2img.model={folders['sd']}", "--set",
            "img2img.steps=10", "--set", "img2img.strength=1", "--set", "img2img.fusion=shifted", "--tile", "32",
            "--seed", "3", "--progress", "json"]
    code, _, err = cli(capsys, *args, "-o", tmp_path / "whole.png")
    assert code == 0, err
    real = loop.predict_canvas

    def interrupted(latents, t, predict, grid, blender, **kw):
        if kw.get("step", 0) == 4:
            raise KeyboardInterrupt
        return real(latents, t, predict, grid, blender, **kw)

    out = tmp_path / "out.png"
    monkeypatch.setattr(loop, "predict_canvas", interrupted)
    code, _, err = cli(capsys, *args, "-o", out)
    assert code == 130 and "--resume" in err and not out.exists()
    monkeypatch.setattr(loop, "predict_canvas", real)
    code, _, err = cli(capsys, *args, "-o", out, "--resume")
    assert code == 0, err
    steps = [json.loads(line).get("step") for line in err.splitlines()]
    assert min(s for s in steps if s) == 5  # it continued after the 4 steps kept, it did not start again
    assert out.read_bytes() == (tmp_path / "whole.png").read_bytes()
