"""SDXL and tile-ControlNet img2img in the tiled loop, against diffusers' own pipelines (tiny offline models)."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tiny_models import build_tiny_controlnet, build_tiny_sd, build_tiny_sdxl, load_components  # noqa: E402

from tiledsr.diffusion.conditioning import TileControl, TimeIds  # noqa: E402
from tiledsr.diffusion.img2img import img2img_latents  # noqa: E402
from tiledsr.diffusion.text import encode_sd_prompt, encode_sdxl_prompt  # noqa: E402
from tiledsr.errors import InputError  # noqa: E402
from tiledsr.tiling import Tile  # noqa: E402

PROMPT = "the cat and a dog"
SD_PIPE_KW = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    sd, xl = build_tiny_sd(root / "sd"), build_tiny_sdxl(root / "xl")
    return {"sd": sd, "xl": xl, "cn": build_tiny_controlnet(root / "cn", sd),
            "cnxl": build_tiny_controlnet(root / "cnxl", xl)}


@pytest.fixture(scope="module")
def xl(folders):
    return load_components(folders["xl"])


@pytest.fixture(scope="module")
def sd(folders):
    return load_components(folders["sd"])


def controlnet(folder):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(folder).eval()


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def smooth(h, w, seed=0, c=4):
    return F.interpolate(torch.randn(1, c, 3, 5, generator=gen(seed)), size=(h, w), mode="bicubic",
                         align_corners=True)


def xl_embeds(c, guidance, negative=None, zero=True):
    return encode_sdxl_prompt([c["tokenizer"], c["tokenizer_2"]], [c["text_encoder"], c["text_encoder_2"]],
                              PROMPT, negative, guidance=guidance, zero_negative=zero)


def control_image(h, w, seed=3):
    return smooth(h, w, seed, c=3).sigmoid()


# --- one tile equals diffusers -------------------------------------------------------------------


@pytest.mark.parametrize("guidance,negative", [(1.0, None), (5.0, None), (5.0, "blurry")])
def test_sdxl_img2img_one_tile_equals_diffusers(xl, guidance, negative):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline(**xl)
    pipe.set_progress_bar_config(disable=True)
    init = smooth(12, 20)
    ref = pipe(PROMPT, negative_prompt=negative, image=init, strength=0.6, num_inference_steps=5,
               guidance_scale=guidance, generator=gen(2), output_type="latent").images
    out = img2img_latents(xl["unet"], xl["scheduler"], init, xl_embeds(xl, guidance, negative), steps=5,
                          strength=0.6, guidance=guidance, seed=2, tile=64, overlap=8, time_ids=TimeIds(8))
    assert out.shape == ref.shape == (1, 4, 12, 20)
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("guidance,start,end,scale", [(1.0, 0.0, 1.0, 1.0), (7.5, 0.0, 1.0, 0.7),
                                                      (7.5, 0.25, 0.75, 1.0)])
def test_controlnet_img2img_one_tile_equals_diffusers(sd, folders, guidance, start, end, scale):
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    net = controlnet(folders["cn"])
    pipe = StableDiffusionControlNetImg2ImgPipeline(**sd, controlnet=net, **SD_PIPE_KW)
    pipe.set_progress_bar_config(disable=True)
    init, image = smooth(8, 12), control_image(64, 96)
    ref = pipe(PROMPT, image=init, control_image=image, strength=0.8, num_inference_steps=5,
               guidance_scale=guidance, controlnet_conditioning_scale=scale, control_guidance_start=start,
               control_guidance_end=end, generator=gen(4), output_type="latent").images
    embeds = encode_sd_prompt(sd["tokenizer"], sd["text_encoder"], PROMPT, guidance=guidance)
    out = img2img_latents(sd["unet"], sd["scheduler"], init, embeds, steps=5, strength=0.8, guidance=guidance,
                          seed=4, tile=64, overlap=8,
                          control=TileControl(net, image, factor=8, scale=scale, start=start, end=end))
    assert (out - ref).abs().max() <= 1e-5
    plain = img2img_latents(sd["unet"], sd["scheduler"], init, embeds, steps=5, strength=0.8, guidance=guidance,
                            seed=4, tile=64, overlap=8)
    assert (out - plain).abs().max() > 1e-3  # the ControlNet does act


def test_sdxl_controlnet_img2img_one_tile_equals_diffusers(xl, folders):
    from diffusers import StableDiffusionXLControlNetImg2ImgPipeline

    net = controlnet(folders["cnxl"])
    pipe = StableDiffusionXLControlNetImg2ImgPipeline(**xl, controlnet=net)
    pipe.set_progress_bar_config(disable=True)
    init, image = smooth(8, 12), control_image(64, 96)
    ref = pipe(PROMPT, image=init, control_image=image, strength=0.8, num_inference_steps=4, guidance_scale=5.0,
               controlnet_conditioning_scale=1.0,
               generator=gen(4), output_type="latent").images
    out = img2img_latents(xl["unet"], xl["scheduler"], init, xl_embeds(xl, 5.0), steps=4, strength=0.8,
                          guidance=5.0, seed=4, tile=64, overlap=8, time_ids=TimeIds(8),
                          control=TileControl(net, image, factor=8))
    assert (out - ref).abs().max() <= 1e-5


# --- tiles ---------------------------------------------------------------------------------------


def test_time_ids_say_where_each_tile_sits():
    tiles = [Tile(0, 0, 0, 8, 8), Tile(1, 0, 6, 8, 8)]
    ids = TimeIds(8).batch(tiles, (8, 14), guided=False, dtype=torch.float32, device="cpu")
    assert ids.tolist() == [[64, 112, 0, 0, 64, 64], [64, 112, 0, 48, 64, 64]]
    on_picture = TimeIds(8, original=(512, 512), offset=(128, 256)).batch(tiles[:1], (8, 8), True, torch.float32,
                                                                          "cpu")
    assert on_picture.tolist() == [[512, 512, 128, 256, 64, 64]] * 2
    refiner = TimeIds(8, aesthetic=(6.0, 2.5)).batch(tiles[:1], (8, 8), True, torch.float32, "cpu")
    assert refiner.tolist() == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]]


@pytest.mark.parametrize("kind", ["sdxl", "controlnet"])
def test_tiled_runs_are_deterministic_and_free_of_order_and_batch(xl, sd, folders, kind):
    if kind == "sdxl":
        c, extra = xl, {"time_ids": TimeIds(8)}
        embeds = xl_embeds(xl, 5.0)
    else:
        c, extra = sd, {"control": TileControl(controlnet(folders["cn"]), control_image(96, 128), factor=8)}
        embeds = encode_sd_prompt(sd["tokenizer"], sd["text_encoder"], PROMPT, guidance=5.0)
    init = smooth(12, 16)

    def run(**kw):
        return img2img_latents(c["unet"], c["scheduler"], init, embeds, steps=4, strength=0.75, guidance=5.0,
                               seed=9, tile=8, overlap=4, **extra, **kw)

    a, b = run(), run()
    assert torch.equal(a, b)
    shuffled = run(order=[5, 2, 0, 3, 1, 4])
    assert torch.equal(a, shuffled)  # predictions are summed in tile-index order
    batched = run(batch=3)
    assert (a - batched).abs().max() <= 1e-4  # BLAS may round a batch of 3 differently


def test_sdxl_tiles_differ_from_one_tile_only_by_the_tiling(xl):
    """Per-tile time ids: a tiled run stays close to the one-tile run (same picture, told where each
    crop sits), closer than one that tells every tile it is a whole picture of its own."""
    init = smooth(16, 16)
    embeds = xl_embeds(xl, 5.0)

    def run(tile, time_ids):
        return img2img_latents(xl["unet"], xl["scheduler"], init, embeds, steps=4, strength=0.5, guidance=5.0,
                               seed=1, tile=tile, overlap=4, time_ids=time_ids)

    whole = run(64, TimeIds(8))
    tiled = run(8, TimeIds(8))
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.5 * whole.abs().mean()


def test_mismatched_conditioning_is_an_input_error(xl, sd, folders):
    init = smooth(8, 8)
    sd_embeds = encode_sd_prompt(sd["tokenizer"], sd["text_encoder"], PROMPT, guidance=1.0)
    with pytest.raises(InputError, match="SDXL UNet needs"):
        img2img_latents(xl["unet"], xl["scheduler"], init, sd_embeds, steps=2, strength=1.0, guidance=1.0, seed=0,
                        tile=64, overlap=0)
    with pytest.raises(InputError, match="added conditioning|cross-attention"):
        img2img_latents(sd["unet"], sd["scheduler"], init, sd_embeds, steps=2, strength=1.0, guidance=1.0, seed=0,
                        tile=64, overlap=0, control=TileControl(controlnet(folders["cnxl"]), control_image(64, 64),
                                                                factor=8))
    with pytest.raises(InputError, match="control image must be 64x64"):
        img2img_latents(sd["unet"], sd["scheduler"], init, sd_embeds, steps=2, strength=1.0, guidance=1.0, seed=0,
                        tile=64, overlap=0, control=TileControl(controlnet(folders["cn"]), control_image(32, 64),
                                                                factor=8))
    with pytest.raises(InputError, match="takes .* numbers"):
        img2img_latents(xl["unet"], xl["scheduler"], init, xl_embeds(xl, 1.0), steps=2, strength=1.0, guidance=1.0,
                        seed=0, tile=64, overlap=0, time_ids=TimeIds(8, aesthetic=(6.0, 2.5)))
