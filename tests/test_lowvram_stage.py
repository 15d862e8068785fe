"""The low-VRAM switches as stage options: same output on the CPU, and what plan counts on a device."""
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from tiledsr.cli import main  # noqa: E402
from tiledsr.io import read_image, write_image  # noqa: E402

from tiny_models import build_tiny_controlnet, build_tiny_sd  # noqa: E402

SWITCHES = [
    ["img2img.attention_slicing=max"],
    ["img2img.attention_slicing=2", "img2img.vae_slicing=true"],
    ["img2img.offload=model", "img2img.vae_slicing=true"],
    ["img2img.offload=sequential", "img2img.attention_slicing=auto"],
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def photo(tmp_path):
    from skimage import data

    path = tmp_path / "in.png"
    write_image(path, data.astronaut()[100:172, 180:260].astype(np.float32) / 255)
    return path


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "+".join(x.split(".", 1)[1] for x in s))
def test_each_switch_gives_the_same_picture_on_the_cpu(tmp_path_factory, capsys, switches):
    # A model folder of its own per case: loaded components are shared per folder, and a module
    # set up with some switches cannot take others in the same process.
    root = tmp_path_factory.mktemp("lv")
    sd = build_tiny_sd(root / "sd")
    cn = build_tiny_controlnet(root / "cn", sd)
    src = photo(root)
    preset = root / "p.yaml"
    preset.write_text(f"tile: 48\noverlap: 16\nstages:\n  - type: img2img\n    model: {sd}\n    controlnet: {cn}\n"
                      "    steps: 3\n    strength: 0.6\n    guidance: 5\n")
    ref = tmp_path_factory.mktemp("ref") / "ref.png"
    plain_root = tmp_path_factory.mktemp("plain")
    plain_sd = build_tiny_sd(plain_root / "sd")
    plain_cn = build_tiny_controlnet(plain_root / "cn", plain_sd)
    plain = plain_root / "p.yaml"
    plain.write_text(preset.read_text().replace(str(sd), str(plain_sd)).replace(str(cn), str(plain_cn)))
    assert main(["upscale", str(src), "-o", str(ref), "--preset", str(plain), "--progress", "none"]) == 0
    out = root / "out.png"
    argv = ["upscale", str(src), "-o", str(out), "--preset", str(preset), "--progress", "none"]
    for s in switches:
        argv += ["--set", s]
    code = main(argv)
    assert code == 0, capsys.readouterr().err
    a, b = read_image(out)[0], read_image(ref)[0]
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6  # measured: identical


@pytest.mark.parametrize("key,value,words", [("attention_slicing", "on", "attention_slicing"),
                                             ("attention_slicing", 0, "attention_slicing"),
                                             ("offload", "gpu", "offload"), ("vae_slicing", "maybe", "vae_slicing")])
def test_bad_switches_exit_2_with_one_line(tmp_path, capsys, key, value, words):
    src = photo(tmp_path)
    code = main(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--preset", "refine",
                 "--set", f"img2img.{key}={value}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_plan_counts_the_weights_the_switches_leave_on_the_device():
    from tiledsr.stages.base import Runtime, Tiling
    from tiledsr.stages.img2img import Img2ImgConfig, Img2ImgStage

    def resident(device, **switches):
        cfg = Img2ImgConfig(model="stabilityai/stable-diffusion-xl-base-1.0",
                            controlnet="xinsir/controlnet-tile-sdxl-1.0", **switches)
        return Img2ImgStage(cfg, Tiling(), Runtime(device)).resident_weights()

    everything = resident("cuda")
    model = resident("cuda", offload="model")
    sequential = resident("cuda", offload="sequential")
    assert everything > model > sequential > 0
    assert 7.0e9 < model < 7.8e9  # fp16: the UNet and the ControlNet, the heaviest phase
    assert sequential < 0.5e9  # about one layer (the largest: a text encoder's token embedding)
    assert resident("cpu", offload="model") == resident("cpu")  # on the CPU the weights are in RAM anyway
    assert resident("cuda", attention_slicing="max") == everything
