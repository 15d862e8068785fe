"""img2img with SDXL and a tile ControlNet through the CLI, with tiny offline models, against diffusers."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tiledsr.cli import main  # noqa: E402
from tiledsr.io import read_image, write_image  # noqa: E402

from tiny_models import build_tiny_controlnet, build_tiny_sd, build_tiny_sdxl, as_8bit, load_components, mode_latents  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    sd, xl = build_tiny_sd(root / "sd"), build_tiny_sdxl(root / "xl")
    return {"sd": sd, "xl": xl, "cn": build_tiny_controlnet(root / "cn", sd),
            "cnxl": build_tiny_controlnet(root / "cnxl", xl)}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def photo(tmp_path, h=64, w=64, name="in.png", alpha=False):
    from skimage import data

    img = data.chelsea()[60:60 + h, 150:150 + w].astype(np.float32) / 255
    if alpha:
        img = np.concatenate([img, np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w, 1)], axis=2)
    path = tmp_path / name
    write_image(path, img)
    return path, read_image(path)[0]


def preset(tmp_path, stage: str, tile=4096, overlap=64, name="p.yaml"):
    p = tmp_path / name
    p.write_text(f"tile: {tile}\noverlap: {overlap}\nstages:\n  - type: img2img\n" +
                 "".join(f"    {line}\n" for line in stage.strip().splitlines()))
    return p


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def upscale(capsys, tmp_path, src, p, name="out.png", *extra):
    out = tmp_path / name
    code, err = run(capsys, "upscale", src, "-o", out, "--preset", p, "--seed", "3", "--progress", "none", *extra)
    assert code == 0, err
    return read_image(out)[0]


# --- one tile equals diffusers -------------------------------------------------------------------


@pytest.mark.parametrize("guidance", [1.0, 5.0])
def test_sdxl_img2img_one_tile_equals_diffusers(tmp_path, capsys, models, guidance):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    src, img = photo(tmp_path, 64, 80)
    p = preset(tmp_path, f"model: {models['xl']}\nprompt: a cat\nsteps: 5\nstrength: 0.6\nguidance: {guidance}")
    ours = upscale(capsys, tmp_path, src, p) * 255
    c = load_components(models["xl"])
    pipe = StableDiffusionXLImg2ImgPipeline(**c)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", image=mode_latents(c["vae"], img), strength=0.6, num_inference_steps=5,
               guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert ours.shape == (64, 80, 3)
    assert np.abs(ours - as_8bit(ref)).max() <= 1


@pytest.mark.parametrize("guidance", [1.0, 7.5])
def test_controlnet_img2img_one_tile_equals_diffusers(tmp_path, capsys, models, guidance):
    from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

    src, img = photo(tmp_path)
    p = preset(tmp_path, f"model: {models['sd']}\ncontrolnet: {models['cn']}\ncontrolnet_scale: 0.8\n"
                         f"control_end: 0.75\nprompt: a cat\nsteps: 4\nstrength: 1.0\nguidance: {guidance}")
    ours = upscale(capsys, tmp_path, src, p) * 255
    c = load_components(models["sd"])
    net = ControlNetModel.from_pretrained(models["cn"]).eval()
    pipe = StableDiffusionControlNetImg2ImgPipeline(**c, controlnet=net, safety_checker=None, feature_extractor=None,
                                                    requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", image=mode_latents(c["vae"], img), control_image=img[None], strength=1.0, num_inference_steps=4,
               guidance_scale=guidance, controlnet_conditioning_scale=0.8, control_guidance_end=0.75,
               generator=torch.Generator("cpu").manual_seed(3), output_type="np").images[0]
    assert np.abs(ours - as_8bit(ref)).max() <= 1
    plain = upscale(capsys, tmp_path, src, preset(tmp_path, f"model: {models['sd']}\nprompt: a cat\nsteps: 4\n"
                                                            f"strength: 1.0\nguidance: {guidance}", name="q.yaml"),
                    "plain.png") * 255
    assert np.abs(plain - ours).max() > 2  # the ControlNet acts


# --- tiles ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fused", "independent"])
def test_tiled_sdxl_with_controlnet_is_bit_identical_run_to_run(tmp_path, capsys, models, mode):
    src, img = photo(tmp_path, 72, 88, alpha=True)
    p = preset(tmp_path, f"model: {models['xl']}\ncontrolnet: {models['cnxl']}\nmode: {mode}\nprompt: a cat\n"
                         "steps: 4\nstrength: 0.5\nguidance: 5", tile=48, overlap=16)
    a = upscale(capsys, tmp_path, src, p, "a.png")
    b = upscale(capsys, tmp_path, src, p, "b.png")
    assert a.shape == img.shape and np.array_equal(a, b)
    assert np.array_equal(a[..., 3], img[..., 3])  # alpha goes around the model
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "j.png", "--preset", p, "--progress", "json")
    assert code == 0, err
    tiles = [e for e in map(json.loads, err.splitlines()) if e["event"] == "stage" and e["stage"] == "img2img"]
    assert tiles[0]["tiles"] > 1


def test_independent_sdxl_tiles_are_told_their_place_on_the_picture(models):
    from tiledsr.pipeline import Pipeline

    pipe = Pipeline([{"type": "img2img", "model": str(models["xl"]), "mode": "independent", "steps": 2,
                      "strength": 0.5, "tile": 32, "overlap": 8}])
    pipe.load()
    st = pipe.stages[0]
    calls = []
    real = st._denoise

    def spy(*args, **kw):
        calls.append(kw["time_ids"])
        return real(*args, **kw)

    st._denoise = spy
    pipe.run_array(np.full((48, 64, 3), 0.5, np.float32))
    assert {t.original for t in calls} == {(48, 64)}
    assert len({t.offset for t in calls}) == len(calls) > 1  # each tile at its own place


# --- bad input -----------------------------------------------------------------------------------


def test_missing_controlnet_exits_3_naming_it(tmp_path, capsys, models):
    src, _ = photo(tmp_path)
    for name in ("nobody/no-such-controlnet", tmp_path / "no-folder"):
        p = preset(tmp_path, f"model: {models['sd']}\ncontrolnet: {name}")
        code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
        assert code == 3, err
        assert "ControlNet" in err and str(name) in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("option,value,words", [("controlnet_scale", -1, "controlnet_scale"),
                                                ("control_start", 0.9, "control_start"),
                                                ("control_end", 1.5, "control_end"),
                                                ("controlnet_scale", "lots", "controlnet_scale")])
def test_bad_controlnet_options_exit_2(tmp_path, capsys, models, option, value, words):
    src, _ = photo(tmp_path)
    p = preset(tmp_path, f"model: {models['sd']}\ncontrolnet: {models['cn']}\ncontrol_end: 0.5\n"
                         f"{option}: {value}" if option != "control_end" else
               f"model: {models['sd']}\ncontrolnet: {models['cn']}\n{option}: {value}")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 2, err
    assert words in err and "Traceback" not in err


def test_controlnet_for_another_base_model_exits_2(tmp_path, capsys, models):
    src, _ = photo(tmp_path)
    p = preset(tmp_path, f"model: {models['sd']}\ncontrolnet: {models['cnxl']}")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 2, err
    assert "ControlNet" in err and len(err.strip().splitlines()) == 1


def test_sdxl_model_in_a_stage_that_cannot_run_it_exits_2(tmp_path, capsys, models):
    src, _ = photo(tmp_path)
    p = tmp_path / "x.yaml"
    p.write_text(f"stages:\n  - type: latent-x2\n    model: {models['xl']}\n")
    code, err = run(capsys, "upscale", src, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 2, err
    assert "SDXL" in err


@pytest.mark.parametrize("name", ["refine-xl", "poster-x8-xl"])
def test_sdxl_presets_plan_offline(capsys, name):
    from pathlib import Path

    sample = str(Path(__file__).resolve().parents[1] / "examples" / "sample.png")
    code = main(["plan", "--preset", name, sample])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ControlNet xinsir/controlnet-tile-sdxl-1.0" in out and "stable-diffusion-xl-base-1.0" in out


def test_fetch_takes_the_diffusers_weights_and_not_the_variants_beside_them():
    from fnmatch import fnmatch

    from tiledsr.cli import FETCH_PATTERNS

    def taken(name):
        return any(fnmatch(name, p) for p in FETCH_PATTERNS)

    for name in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "text_encoder_2/model.safetensors", "tokenizer/merges.txt", "diffusion_pytorch_model.safetensors",
                 "unet/diffusion_pytorch_model-00001-of-00002.safetensors", "tokenizer/spiece.model"):
        assert taken(name), name
    for name in ("sd_xl_base_1.0.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                 "sd_xl_offset_example-lora_1.0.safetensors", "unet/openvino_model.bin", "vae_decoder/model.onnx"):
        assert not taken(name), name


def test_plan_counts_the_weights_from_the_files_without_loading_them(models):
    from tiledsr.diffusion.footprint import PUBLISHED, model_kind, parameter_counts

    c = load_components(models["xl"])
    counts = parameter_counts(str(models["xl"]), str(models["cnxl"]))
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        assert counts[name] == sum(p.numel() for p in c[name].parameters()), name
    from diffusers import ControlNetModel

    net = ControlNetModel.from_pretrained(models["cnxl"])
    assert counts["controlnet"] == sum(p.numel() for p in net.parameters())
    assert model_kind(str(models["xl"])) == "sdxl" and model_kind(str(models["sd"])) == "sd"
    assert "text_encoder_2" not in parameter_counts(str(models["sd"]))
    absent = parameter_counts("stabilityai/stable-diffusion-xl-base-1.0", "xinsir/controlnet-tile-sdxl-1.0")
    assert absent == PUBLISHED["sdxl"]  # not here: the published model's


def test_plan_memory_grows_with_sdxl_and_the_controlnet():
    from tiledsr.pipeline import Pipeline

    def model_bytes(**stage):
        pipe = Pipeline([{"type": "img2img", **stage}], device="cpu", memory_budget="200GB")
        return pipe.plan((1024, 1024)).stages[0].tile_memory

    sd = model_bytes(model="stable-diffusion-v1-5/stable-diffusion-v1-5")
    sd_cn = model_bytes(model="stable-diffusion-v1-5/stable-diffusion-v1-5",
                        controlnet="lllyasviel/control_v11f1e_sd15_tile")
    xl = model_bytes(model="stabilityai/stable-diffusion-xl-base-1.0")
    assert 3.5e9 < sd < sd_cn < xl  # fp32 weights on the CPU: 4.3 GB, + 1.4 GB, 14 GB
    assert xl > 13e9
