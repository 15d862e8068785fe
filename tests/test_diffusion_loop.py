"""The tiled denoising core against diffusers' own pipelines, with tiny random-weight models, offline."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tiny_models import build_tiny_latent_upscaler, build_tiny_sd, load_components  # noqa: E402

from tiledsr.diffusion.img2img import img2img_latents, txt2img_latents  # noqa: E402
from tiledsr.diffusion.latent_upscale import upscale_latents  # noqa: E402
from tiledsr.diffusion.loop import latent_grid, unet_multiple  # noqa: E402
from tiledsr.diffusion.noise import canvas_noise  # noqa: E402
from tiledsr.diffusion.text import encode_sd_prompt, encode_upscaler_prompt  # noqa: E402
from tiledsr.errors import InputError  # noqa: E402
from tiledsr.tiling import BLENDS  # noqa: E402

PROMPT = "the cat and a dog"
SD_PIPE_KW = dict(safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False)


@pytest.fixture(scope="session")
def sd(tmp_path_factory):
    return load_components(build_tiny_sd(tmp_path_factory.mktemp("tiny-sd")))


@pytest.fixture(scope="session")
def up(tmp_path_factory):
    return load_components(build_tiny_latent_upscaler(tmp_path_factory.mktemp("tiny-x2")))


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def smooth(h, w, seed=0):
    """Smooth latents (1, 4, h, w): bicubic upsampling of a 3x5 random grid."""
    return F.interpolate(torch.randn(1, 4, 3, 5, generator=gen(seed)), size=(h, w), mode="bicubic",
                         align_corners=True)


def sd_embeds(c, guidance):
    return encode_sd_prompt(c["tokenizer"], c["text_encoder"], PROMPT, guidance=guidance)


def up_embeds(c, guidance):
    return encode_upscaler_prompt(c["tokenizer"], c["text_encoder"], PROMPT, guidance=guidance)


class PerSample:
    """A UNet run one sample at a time: batch-invariant by construction (stock CPU kernels round
    differently for different batch shapes, about 1e-6), so any difference left is the loop's."""

    def __init__(self, unet):
        self.unet, self.config, self.device, self.dtype = unet, unet.config, unet.device, unet.dtype

    def __call__(self, sample, timestep, encoder_hidden_states, timestep_cond=None, return_dict=True):
        out = torch.cat([self.unet(sample[i:i + 1], timestep, encoder_hidden_states=encoder_hidden_states[i:i + 1],
                                   timestep_cond=None if timestep_cond is None else timestep_cond[i:i + 1]).sample
                         for i in range(sample.shape[0])])
        return SimpleNamespace(sample=out) if return_dict else (out,)


# --- one tile equals diffusers -------------------------------------------------------------------


@pytest.mark.parametrize("guidance", [0.0, 4.0])
def test_upscale_one_tile_equals_diffusers(up, guidance):
    from diffusers import StableDiffusionLatentUpscalePipeline

    pipe = StableDiffusionLatentUpscalePipeline(**up)
    pipe.set_progress_bar_config(disable=True)
    low = torch.randn(1, 4, 12, 20, generator=gen(1))
    ref = pipe(PROMPT, image=low, num_inference_steps=3, guidance_scale=guidance, generator=gen(5),
               output_type="latent").images
    out = upscale_latents(up["unet"], up["scheduler"], low, up_embeds(up, guidance), steps=3, guidance=guidance,
                          seed=5, tile=64, overlap=8)
    assert out.shape == ref.shape == (1, 4, 24, 40)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_img2img_one_tile_equals_diffusers(sd, guidance):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**sd, **SD_PIPE_KW)
    pipe.set_progress_bar_config(disable=True)
    init = torch.randn(1, 4, 24, 40, generator=gen(2))
    ref = pipe(PROMPT, image=init, strength=0.6, num_inference_steps=5, guidance_scale=guidance, generator=gen(5),
               output_type="latent").images
    out = img2img_latents(sd["unet"], sd["scheduler"], init, sd_embeds(sd, guidance), steps=5, strength=0.6,
                          guidance=guidance, seed=5, tile=64, overlap=8)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_txt2img_one_tile_equals_diffusers(sd, guidance):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**sd, **SD_PIPE_KW)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, height=8 * 24, width=8 * 40, num_inference_steps=3, guidance_scale=guidance, generator=gen(5),
               output_type="latent").images
    out = txt2img_latents(sd["unet"], sd["scheduler"], 24, 40, sd_embeds(sd, guidance), steps=3, guidance=guidance,
                          seed=5, tile=64, overlap=8)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_other_schedulers_one_tile_equal_diffusers_and_tile(sd, name):
    """Ancestral noise comes from the same seeded generator; a multistep history stays one per canvas."""
    import diffusers

    scheduler = getattr(diffusers, name).from_config(sd["scheduler"].config)
    pipe = diffusers.StableDiffusionImg2ImgPipeline(**{**sd, "scheduler": scheduler}, **SD_PIPE_KW)
    pipe.set_progress_bar_config(disable=True)
    init = smooth(24, 40)
    ref = pipe(PROMPT, image=init, strength=0.5, num_inference_steps=6, guidance_scale=3.0, generator=gen(3),
               output_type="latent").images
    kw = dict(steps=6, strength=0.5, guidance=3.0, seed=3, overlap=8)
    one = img2img_latents(sd["unet"], scheduler, init, sd_embeds(sd, 3.0), tile=64, **kw)
    assert (one - ref).abs().max() <= 1e-5
    tiled = img2img_latents(sd["unet"], scheduler, init, sd_embeds(sd, 3.0), tile=16, **kw)
    assert torch.isfinite(tiled).all() and (tiled - one).abs().mean() < 0.5 * one.abs().mean()


def test_canvas_noise_is_diffusers_randn_tensor():
    from diffusers.utils.torch_utils import randn_tensor

    for dtype in (torch.float32, torch.float16):
        ref = randn_tensor((1, 4, 13, 7), generator=gen(9), device=torch.device("cpu"), dtype=dtype)
        assert torch.equal(canvas_noise((1, 4, 13, 7), 9, dtype), ref)


# --- several tiles -------------------------------------------------------------------------------


def run_up(c, **kw):
    args = dict(steps=3, guidance=4.0, seed=5, tile=16, overlap=8, blend="cosine", batch=2)
    args.update(kw)
    return upscale_latents(args.pop("unet", c["unet"]), c["scheduler"], args.pop("low", smooth(12, 20)),
                           up_embeds(c, args["guidance"]), **args)


def run_i2i(c, **kw):
    args = dict(steps=10, strength=0.3, guidance=7.5, seed=5, tile=16, overlap=8, blend="cosine", batch=2)
    args.update(kw)
    return img2img_latents(args.pop("unet", c["unet"]), c["scheduler"], args.pop("init", smooth(24, 40)),
                           sd_embeds(c, args["guidance"]), **args)


@pytest.mark.parametrize("run", [run_up, run_i2i], ids=["upscale", "img2img"])
def test_tiled_runs_are_bit_identical(sd, up, run):
    c = up if run is run_up else sd
    assert len(latent_grid(24, 40, 16, 8, unet_multiple(c["unet"]))) > 1
    assert torch.equal(run(c), run(c))  # the scheduler object is reused: runs work on copies


@pytest.mark.parametrize("run", [run_up, run_i2i], ids=["upscale", "img2img"])
def test_batch_size_and_order_do_not_change_the_fusion(sd, up, run):
    c = up if run is run_up else sd
    model = PerSample(c["unet"])
    n = len(latent_grid(24, 40, 16, 8, unet_multiple(c["unet"])))
    ref = run(c, unet=model, batch=1)
    perm = list(reversed(range(n)))
    perm[0], perm[n // 2] = perm[n // 2], perm[0]
    for kw in (dict(batch=3), dict(batch=n), dict(batch=3, order=perm)):
        assert torch.equal(run(c, unet=model, **kw), ref), kw
    # The batched stock UNet itself rounds differently per batch shape (measured <= 1e-5 here).
    for kw in (dict(batch=1), dict(batch=n), dict(batch=3, order=perm)):
        assert (run(c, **kw) - ref).abs().max() < 1e-4


@pytest.mark.parametrize("blend", BLENDS)
def test_every_blend_runs_and_stays_close_to_one_tile(sd, up, blend):
    """Tiled differs from untiled (the model sees less context) far less than another seed does.

    Measured with these tiny models: mean |tiled - one tile| / mean |other seed - one tile| is
    0.16 for the upscaler at guidance 0 and 0.14-0.15 for img2img at guidance 1 (3 steps, strength
    0.3); random-weight guidance amplifies it (0.47 at guidance 4, 0.31 at 7.5).
    """
    for run, c, kw in ((run_up, up, dict(guidance=0.0)), (run_i2i, sd, dict(guidance=1.0))):
        one, other = run(c, tile=64, **kw), run(c, tile=64, seed=6, **kw)
        tiled = run(c, blend=blend, **kw)
        assert torch.isfinite(tiled).all()
        assert (tiled - one).abs().mean() < 0.25 * (other - one).abs().mean()


def test_odd_and_prime_sizes(sd, up):
    """Tiles are multiples of the UNet's multiple; an axis that is not one gets overlapping tiles."""
    out = run_up(up, low=smooth(13, 19), tile=64)  # canvas 26x38, multiple 8: tiles 24x32
    assert out.shape == (1, 4, 26, 38) and torch.isfinite(out).all()
    out = run_up(up, low=smooth(8, 9), tile=8)  # the smallest canvas and tile: 16 = 2 x the multiple
    assert out.shape == (1, 4, 16, 18) and torch.isfinite(out).all()
    out = run_i2i(sd, init=smooth(23, 37), tile=16)  # multiple 2
    assert out.shape == (1, 4, 23, 37) and torch.isfinite(out).all()
    out = txt2img_latents(sd["unet"], sd["scheduler"], 11, 17, sd_embeds(sd, 1.0), steps=2, guidance=1.0, seed=0,
                          tile=64, overlap=4)
    assert out.shape == (1, 4, 11, 17)


@pytest.mark.parametrize("h,w,tile,overlap,m", [(26, 38, 64, 8, 8), (23, 37, 16, 8, 2), (24, 40, 16, 8, 2),
                                                 (97, 131, 40, 12, 8), (64, 64, 64, 8, 8), (16, 17, 3, 0, 8)])
def test_latent_grid_geometry(h, w, tile, overlap, m):
    grid = latent_grid(h, w, tile, overlap, m)
    assert grid.tile_h % m == 0 and grid.tile_w % m == 0
    assert 2 * m <= grid.tile_h <= max(2 * m, tile) and 2 * m <= grid.tile_w <= max(2 * m, tile)
    cover = torch.zeros(h, w, dtype=torch.int32)
    for t in grid.tiles:
        assert 0 <= t.y and t.y + t.h <= h and 0 <= t.x and t.x + t.w <= w
        cover[t.slices] += 1
    assert (cover > 0).all()
    for starts, size in ((grid.ys, grid.tile_h), (grid.xs, grid.tile_w)):
        for a, b in zip(starts, starts[1:]):
            assert a + size - b >= min(overlap, size - m)
    assert len(latent_grid(h, w, 10**6, overlap, m)) <= 4  # a big tile: one per axis, two if not a multiple


def test_too_small_canvas_and_bad_arguments(sd, up):
    with pytest.raises(InputError, match="at least 16x16"):
        run_up(up, low=smooth(7, 10))
    with pytest.raises(InputError, match="blend"):
        run_i2i(sd, blend="box")
    with pytest.raises(InputError, match="guidance"):
        img2img_latents(sd["unet"], sd["scheduler"], smooth(24, 40), sd_embeds(sd, 1.0), steps=2, strength=0.5,
                        guidance=7.5, seed=0, tile=16, overlap=8)
    with pytest.raises(InputError, match="strength"):
        run_i2i(sd, strength=0.0)


def test_progress_is_monotonic_and_can_cancel(sd):
    events = []
    run_i2i(sd, batch=2, progress=lambda *e: events.append(e))  # 10 steps at strength 0.3: 3 run
    tiles = len(latent_grid(24, 40, 16, 8, 2))
    assert events == sorted(events) and len(set(events)) == len(events)
    assert len(events) == 3 * -(-tiles // 2)
    assert events[-1] == (3, 3, tiles, tiles) and all(e[1] == 3 and e[3] == tiles for e in events)

    class Stop(Exception):
        pass

    def cancel(step, steps, tile, tiles):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        run_i2i(sd, progress=cancel)
