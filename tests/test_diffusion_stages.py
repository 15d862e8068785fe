"""Diffusion stages end to end through the CLI with tiny offline models, checked against diffusers."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tiledsr.cli import main  # noqa: E402
from tiledsr.io import read_image, write_image  # noqa: E402

from tiny_models import build_tiny_latent_upscaler, build_tiny_sd, build_tiny_x4_upscaler, as_8bit, load_components, mode_latents  # noqa: E402


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture(scope="module")
def x2(tmp_path_factory):
    return build_tiny_latent_upscaler(tmp_path_factory.mktemp("tiny-x2"))


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    return build_tiny_x4_upscaler(tmp_path_factory.mktemp("tiny-x4"))


def photo(tmp_path, h=64, w=64, name="in.png"):
    from skimage import data

    img = data.chelsea()[60:60 + h, 150:150 + w].astype(np.float32) / 255
    path = tmp_path / name
    write_image(path, img)
    return path, read_image(path)[0]


def preset(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_latent_x2_one_tile_equals_diffusers(tmp_path, capsys, x2):
    from diffusers import StableDiffusionLatentUpscalePipeline

    src, img = photo(tmp_path)
    p = preset(tmp_path, f"tile: 4096\noverlap: 64\nstages:\n  - type: latent-x2\n    model: {x2}\n"
                         "    prompt: a cat\n    steps: 3\n    guidance: 0\n")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "out.png", "--preset", p, "--seed", "0",
                    "--progress", "none")
    assert code == 0, err
    ours = read_image(tmp_path / "out.png")[0] * 255
    c = load_components(x2)
    pipe = StableDiffusionLatentUpscalePipeline(**c)
    ref = pipe("a cat", image=mode_latents(c["vae"], img), num_inference_steps=3, guidance_scale=0,
               generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    assert ours.shape == (128, 128, 3)
    assert np.abs(ours - as_8bit(ref)).max() <= 1


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_img2img_one_tile_equals_diffusers(tmp_path, capsys, sd, guidance):
    from diffusers import StableDiffusionImg2ImgPipeline

    src, img = photo(tmp_path)
    p = preset(tmp_path, f"tile: 4096\noverlap: 64\nstages:\n  - type: img2img\n    model: {sd}\n"
                         f"    prompt: a cat\n    steps: 4\n    strength: 0.5\n    guidance: {guidance}\n")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "out.png", "--preset", p, "--seed", "3",
                    "--progress", "none")
    assert code == 0, err
    ours = read_image(tmp_path / "out.png")[0] * 255
    c = load_components(sd)
    pipe = StableDiffusionImg2ImgPipeline(**c, safety_checker=None, feature_extractor=None, image_encoder=None,
                                          requires_safety_checker=False)
    ref = pipe("a cat", image=mode_latents(c["vae"], img), strength=0.5, num_inference_steps=4,
               guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert np.abs(ours - as_8bit(ref)).max() <= 1


def test_sd_x4_one_tile_equals_diffusers(tmp_path, capsys, x4):
    from diffusers import StableDiffusionUpscalePipeline
    from PIL import Image

    src, _ = photo(tmp_path, 48, 40)
    p = preset(tmp_path, f"tile: 4096\noverlap: 64\nstages:\n  - type: sd-x4\n    model: {x4}\n"
                         "    prompt: a cat\n    steps: 3\n    guidance: 9\n    noise_level: 30\n")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "out.png", "--preset", p, "--seed", "2",
                    "--progress", "none")
    assert code == 0, err
    ours = read_image(tmp_path / "out.png")[0] * 255
    pipe = StableDiffusionUpscalePipeline(**load_components(x4), max_noise_level=350)
    ref = pipe("a cat", image=Image.open(src), num_inference_steps=3, guidance_scale=9, noise_level=30,
               generator=torch.Generator("cpu").manual_seed(2), output_type="np").images[0]
    assert ours.shape == (192, 160, 3)
    assert np.abs(ours - as_8bit(ref)).max() <= 1


def test_tiled_sd_x4_from_the_cli_keeps_alpha_and_reports_tiles(tmp_path, capsys, x4):
    _, img = photo(tmp_path, 24, 36)
    rgba = np.concatenate([img, np.linspace(0, 1, 24 * 36, dtype=np.float32).reshape(24, 36, 1)], axis=2)
    write_image(tmp_path / "rgba.png", rgba)
    p = preset(tmp_path, f"tile: 64\noverlap: 16\nstages:\n  - type: sd-x4\n    model: {x4}\n    steps: 2\n")
    code, err = run(capsys, "upscale", tmp_path / "rgba.png", "-o", tmp_path / "o.png", "--preset", p,
                    "--progress", "json")
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    assert [e["stage"] for e in events if e["event"] == "stage"] == ["sd-x4", "decode"]
    steps = {(e["step"], e["tiles"]) for e in events if e["event"] == "progress" and e.get("stage") == "sd-x4"}
    assert steps == {(1, 6), (2, 6)}  # 24 x 36 latents (= input px) in 16-px tiles (64 output px / 4): 2 x 3
    out = read_image(tmp_path / "o.png")[0]
    assert out.shape == (96, 144, 4)
    assert np.abs(out[..., 3].mean() - 0.5) < 0.01  # alpha resized on its own, not diffused
    write_image(tmp_path / "small.png", img[:5, :7])
    code, err = run(capsys, "upscale", tmp_path / "small.png", "-o", tmp_path / "s.png", "--preset", p)
    assert code == 2 and "sd-x4 needs an input of at least 8 px per side, got 7x5" in err
    assert not (tmp_path / "s.png").exists()


def test_tiled_sd_x4_is_deterministic_and_order_and_batch_free(x4):
    from tiledsr.diffusion.text import encode_sd_prompt
    from tiledsr.diffusion.x4_upscale import upscale_x4_latents

    c = load_components(x4)
    embeds = encode_sd_prompt(c["tokenizer"], c["text_encoder"], "a cat", guidance=4)
    image = torch.rand(1, 3, 28, 40, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def up(**kw):
        return upscale_x4_latents(c["unet"], c["scheduler"], c["low_res_scheduler"], image, embeds, steps=2,
                                  guidance=4, noise_level=20, seed=7, tile=16, overlap=4, **kw)

    ref = up()
    assert ref.shape == (1, 4, 28, 40)
    assert torch.equal(ref, up())  # two runs: bit-identical
    assert torch.equal(ref, up(order=[5, 2, 0, 4, 3, 1]))  # 2 x 3 tiles in another order: bit-identical
    assert (ref - up(batch=4)).abs().max() <= 1e-4  # batch shape: the UNet's own float rounding only


def test_txt2img_source_equals_diffusers(tmp_path, capsys, sd):
    from diffusers import StableDiffusionPipeline

    p = preset(tmp_path, f"tile: 4096\nstages:\n  - type: txt2img\n    model: {sd}\n    prompt: a cat\n"
                         "    width: 64\n    height: 48\n    steps: 3\n")
    code, err = run(capsys, "upscale", "-o", tmp_path / "gen.png", "--preset", p, "--seed", "5", "--progress", "none")
    assert code == 0, err
    ours = read_image(tmp_path / "gen.png")[0] * 255
    c = load_components(sd)
    pipe = StableDiffusionPipeline(**c, safety_checker=None, feature_extractor=None, image_encoder=None,
                                   requires_safety_checker=False)
    ref = pipe("a cat", height=48, width=64, num_inference_steps=3, guidance_scale=7.5,
               generator=torch.Generator("cpu").manual_seed(5), output_type="np").images[0]
    assert ours.shape == (48, 64, 3) and np.abs(ours - as_8bit(ref)).max() <= 1


def test_tiled_latent_x2_is_deterministic_and_batch_independent(tmp_path, capsys, x2):
    src, _ = photo(tmp_path, 96, 128)
    outs = []
    for i, batch in enumerate([1, 1, 3]):
        p = preset(tmp_path, f"tile: 128\noverlap: 32\nbatch: {batch}\nstages:\n  - type: latent-x2\n"
                             f"    model: {x2}\n    steps: 2\n", f"p{i}.yaml")
        code, err = run(capsys, "upscale", src, "-o", tmp_path / f"o{i}.png", "--preset", p, "--progress", "json")
        assert code == 0, err
        events = [json.loads(line) for line in err.splitlines()]
        steps = {e["step"] for e in events if e["event"] == "progress" and e.get("stage") == "latent-x2"}
        assert steps == {1, 2}
        outs.append(read_image(tmp_path / f"o{i}.png")[0])
    assert outs[0].shape == (192, 256, 3)
    assert np.array_equal(outs[0], outs[1])  # two runs: bit-identical
    assert np.abs(outs[0] - outs[2]).max() <= 1 / 255 + 1e-6  # batch 3: BLAS may round differently


def test_img2img_independent_mode_and_colorfix(tmp_path, capsys, sd):
    src, img = photo(tmp_path, 80, 96)
    p = preset(tmp_path, f"tile: 48\noverlap: 16\nstages:\n  - type: img2img\n    model: {sd}\n    mode: independent\n"
                         "    steps: 4\n    strength: 0.5\n  - type: colorfix\n    method: adain\n")
    for name in ("a.png", "b.png"):
        code, err = run(capsys, "upscale", src, "-o", tmp_path / name, "--preset", p, "--progress", "none")
        assert code == 0, err
    a, b = read_image(tmp_path / "a.png")[0], read_image(tmp_path / "b.png")[0]
    assert a.shape == img.shape and np.array_equal(a, b)
    assert np.abs(a.mean(axis=(0, 1)) - img.mean(axis=(0, 1))).max() < 2 / 255  # colorfix re-anchors tone


def test_latents_pass_between_diffusion_stages_and_pixels_force_decode(tmp_path, capsys, sd, x2):
    p = preset(tmp_path, f"tile: 4096\nstages:\n  - type: txt2img\n    model: {sd}\n    width: 64\n    height: 64\n"
                         f"    steps: 2\n  - type: latent-x2\n    model: {x2}\n    steps: 2\n"
                         "  - type: resize\n    scale: 0.5\n  - type: latent-x2\n"
                         f"    model: {x2}\n    steps: 2\n")
    code, err = run(capsys, "upscale", "-o", tmp_path / "o.png", "--preset", p, "--progress", "json")
    assert code == 0, err
    stages = [e["stage"] for e in map(json.loads, err.splitlines()) if e["event"] == "stage"]
    assert stages == ["txt2img", "latent-x2", "decode", "resize", "encode", "latent-x2", "decode"]
    assert read_image(tmp_path / "o.png")[1].width == 128


def test_missing_diffusion_model_exits_3(tmp_path, capsys):
    src, _ = photo(tmp_path)
    p = preset(tmp_path, f"stages:\n  - type: latent-x2\n    model: {tmp_path / 'nope'}\n")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 3 and "not available" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", "sd-latent-x2")
    assert code == 3 and "tiledsr models fetch stabilityai/sd-x2-latent-upscaler" in err


@pytest.mark.parametrize("name", ["sd-latent-x2", "sd-x4", "refine", "txt2img-x4", "poster-x8"])
def test_diffusion_presets_plan_offline(capsys, name):
    sample = str(Path(__file__).resolve().parents[1] / "examples" / "sample.png")
    argv = ["plan", "--preset", name] + ([] if name == "txt2img-x4" else [sample])
    code, out, err = main(argv), *capsys.readouterr()
    assert code == 0, err
    assert "output" in out
