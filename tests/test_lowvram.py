"""Low-VRAM switches (tiledsr.diffusion.lowvram) with tiny random-weight models, offline, on the CPU.

Every switch must give the result of the default path within 1/255 (pixels on a [0, 1] scale,
latents and UNet outputs as they are); on the CPU the slices run the same SDPA kernel and the
offload switches move nothing, so the measured differences are 0. Device placement is checked
with stand-in modules that record where they were sent (no GPU here).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from tiny_models import build_tiny_latent_upscaler, build_tiny_sd, build_tiny_x4_upscaler, load_components  # noqa: E402

from tiledsr.diffusion import lowvram  # noqa: E402
from tiledsr.diffusion.img2img import img2img_latents  # noqa: E402
from tiledsr.diffusion.lowvram import LowVram, Offloader, apply, memory_effect  # noqa: E402
from tiledsr.diffusion.text import encode_sd_prompt  # noqa: E402
from tiledsr.diffusion.vae import tiled_decode, tiled_encode  # noqa: E402
from tiledsr.errors import InputError  # noqa: E402

TOLERANCE = 1 / 255


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd"))


@pytest.fixture
def sd(sd_dir):
    """Fresh components for every test: the switches change the modules."""
    return load_components(sd_dir)


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def smooth(h, w, seed=0):
    return F.interpolate(torch.randn(1, 4, 3, 5, generator=gen(seed)), size=(h, w), mode="bicubic",
                         align_corners=True)


@torch.no_grad()
def run_all(c, off: Offloader) -> dict[str, torch.Tensor]:
    """Every code path a diffusion stage runs, each in its phase; outputs on a common scale."""
    with off.phase("text"):
        embeds = encode_sd_prompt(c["tokenizer"], c["text_encoder"], "the cat and a dog", guidance=7.5)
    out = {"text": embeds.cond}
    with off.phase("denoise"):
        unet = c["unet"]
        x = torch.randn(2, 4, 16, 16, generator=gen(1)).to(unet.device)
        out["unet"] = unet(x, 500, encoder_hidden_states=embeds.hidden_batch(1, True)).sample
        out["img2img"] = img2img_latents(unet, c["scheduler"], smooth(12, 20), embeds, steps=4, strength=0.5,
                                         guidance=7.5, seed=3, tile=8, overlap=4)
    with off.phase("vae"):
        # shared GroupNorm statistics in one pass (6 tiles) and by sweeps (2 tiles); pixels on a [0, 1] scale
        out["decode"] = tiled_decode(c["vae"], smooth(24, 40, seed=2), tile=128, overlap=32, one_pass=True) / 2
        out["encode"] = tiled_encode(c["vae"], out["decode"].clamp(-0.5, 0.5) * 2, tile=128, overlap=32,
                                     one_pass=True)
        out["decode-sweeps"] = tiled_decode(c["vae"], smooth(12, 20, seed=5), tile=96, overlap=32, one_pass=False) / 2
        out["decode-whole"] = tiled_decode(c["vae"], smooth(40, 40, seed=4), tile=512, overlap=0) / 2  # 1600 queries
    return out


@pytest.fixture(scope="module")
def reference(sd_dir):
    c = load_components(sd_dir)
    return run_all(c, apply(c, LowVram(), "cpu"))


SWITCHES = [
    LowVram(attention_slicing="auto"),
    LowVram(attention_slicing="max"),
    LowVram(attention_slicing=3),
    LowVram(vae_slicing=True),
    LowVram(offload="model"),
    LowVram(offload="sequential"),
    LowVram(attention_slicing="max", vae_slicing=True, offload="model"),
    LowVram(attention_slicing="auto", vae_slicing=True, offload="sequential"),
]


@pytest.mark.parametrize("low", SWITCHES, ids=str)
def test_every_switch_gives_the_default_result(sd, reference, low):
    out = run_all(sd, apply(sd, low, "cpu"))
    assert out.keys() == reference.keys()
    for key, ref in reference.items():
        assert out[key].shape == ref.shape, key
        assert (out[key] - ref).abs().max() <= TOLERANCE, key


@pytest.mark.parametrize("build", [build_tiny_latent_upscaler, build_tiny_x4_upscaler], ids=["x2", "x4"])
def test_the_upscaler_unets_give_the_default_result(tmp_path, build):
    """The K-UNet of the x2 latent upscaler and the x4 upscaler's UNet (linear projections, class labels)."""
    c = load_components(build(tmp_path))
    unet = c["unet"]
    x = torch.randn(1, unet.config.in_channels, 16, 16, generator=gen(1))
    kwargs = {"encoder_hidden_states": torch.randn(1, 16, 32, generator=gen(2))}
    if unet.config.time_cond_proj_dim:
        kwargs["timestep_cond"] = torch.randn(1, unet.config.time_cond_proj_dim, generator=gen(3))
    if unet.config.num_class_embeds:
        kwargs["class_labels"] = torch.tensor([20])
    with torch.no_grad():
        want = unet(x, 10, **kwargs).sample
        apply(c, LowVram(attention_slicing="max", vae_slicing=True, offload="sequential"), "cpu")
        assert any(isinstance(p, lowvram.ChunkedAttnProcessor) for p in unet.attn_processors.values())
        got = unet(x, 10, **kwargs).sample
    assert (got - want).abs().max() <= TOLERANCE


@pytest.mark.parametrize("value", ["auto", "max", 1, 3, 64])
def test_attention_slices_call_sdpa_on_at_most_that_many_heads(sd, monkeypatch, value):
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        calls.append(tuple(q.shape))
        return sdpa(q, k, v, **kwargs)

    apply(sd, LowVram(attention_slicing=value), "cpu")
    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    unet = sd["unet"]
    with torch.no_grad():
        unet(torch.randn(2, 4, 16, 16, generator=gen(1)), 10, encoder_hidden_states=torch.randn(2, 16, 32))
    heads = unet.config.block_out_channels[1] // unet.config.attention_head_dim  # the tiny UNet's only level
    want = {"auto": heads // 2, "max": 1}[value] if isinstance(value, str) else min(value, heads)
    assert calls and all(b == 1 and h <= want for b, h, _, _ in calls)
    assert max(h for _, h, _, _ in calls) == want


def test_vae_slicing_runs_the_attention_in_query_chunks(sd, monkeypatch):
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, **kw: calls.append((q.shape[2], k.shape[2])) or sdpa(q, k, v, **kw))
    apply(sd, LowVram(vae_slicing=True), "cpu")
    tiled_decode(sd["vae"], smooth(40, 40), tile=512, overlap=0)  # one window of 40 x 40 latent pixels
    assert calls and all(k == 1600 and q <= lowvram.VAE_QUERY_CHUNK for q, k in calls)
    assert sum(q for q, _ in calls) == 1600


def test_chunked_processor_equals_sdpa_with_cross_attention_and_a_mask():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8).eval()
    x, ctx = torch.randn(2, 50, 32), torch.randn(2, 7, 24)
    mask = torch.ones(2, 7)
    mask[0, 5:] = 0
    mask = (1 - mask) * -10000.0
    with torch.no_grad():
        attn.set_processor(AttnProcessor2_0())
        want = attn(x, ctx, attention_mask=mask)
        attn.set_processor(lowvram.ChunkedAttnProcessor(heads=3, queries=16))
        got = attn(x, ctx, attention_mask=mask)
    assert (got - want).abs().max() < 1e-6


class Stand(torch.nn.Module):
    """A stand-in module that records the device it is sent to (without moving anything)."""

    def __init__(self):
        super().__init__()
        self.where = "cuda"

    def to(self, device):  # noqa: D102
        self.where = str(device)
        return self


def stands():
    return {n: Stand() for n in ("unet", "controlnet", "text_encoder", "text_encoder_2", "vae")}


def where(mods):
    return {n: m.where for n, m in mods.items()}


def test_model_offload_moves_each_phase_to_the_device_and_back():
    mods = stands()
    off = apply(mods, LowVram(offload="model"), "meta")  # "meta" stands for an accelerator
    assert set(where(mods).values()) == {"cpu"}
    with off.phase("text"):
        assert where(mods) == {"unet": "cpu", "controlnet": "cpu", "text_encoder": "meta", "text_encoder_2": "meta",
                               "vae": "cpu"}
    assert set(where(mods).values()) == {"cpu"}
    with off.phase("denoise"):
        with off.phase("vae"):  # e.g. a live preview decoding while denoising
            assert {n for n, w in where(mods).items() if w == "meta"} == {"unet", "controlnet", "vae"}
        assert {n for n, w in where(mods).items() if w == "meta"} == {"unet", "controlnet"}
        with apply(mods, LowVram(offload="model"), "meta").phase("denoise"):  # same switches: shared state
            pass
        assert mods["unet"].where == "meta"
    assert set(where(mods).values()) == {"cpu"}
    with pytest.raises(RuntimeError, match="boom"), off.phase("vae"):
        raise RuntimeError("boom")
    assert mods["vae"].where == "cpu"
    with pytest.raises(InputError, match="phase must be one of"), off.phase("decode"):
        pass


@pytest.mark.parametrize("low", [LowVram(), LowVram(attention_slicing="max", vae_slicing=True)], ids=str)
def test_phases_move_nothing_without_model_offload(low):
    mods = stands()
    off = apply(mods, low, "meta")
    for phase in lowvram.PHASES:
        with off.phase(phase):
            assert set(where(mods).values()) == {"cuda"}


def test_model_offload_on_the_cpu_copies_nothing(sd):
    ptrs = {n: [p.data_ptr() for p in sd[n].parameters()] for n in ("unet", "vae", "text_encoder")}
    off = apply(sd, LowVram(offload="model"), "cpu")
    assert not off.moves
    for phase in lowvram.PHASES:
        with off.phase(phase):
            assert {n: [p.data_ptr() for p in sd[n].parameters()] for n in ptrs} == ptrs
    assert all(sd[n].device.type == "cpu" for n in ptrs)


def test_sequential_offload_keeps_layers_on_the_cpu_and_reports_the_device(sd, monkeypatch):
    """Layout only ("meta" stands for an accelerator; nothing is run): convolutions and linear layers
    stored on the CPU, hooked; GroupNorms on the device; ``module.device`` the execution device."""
    from diffusers.hooks import group_offloading

    monkeypatch.setattr(group_offloading, "TorchDeviceBackend", lambda device: None)  # used only with streams
    apply(sd, LowVram(offload="sequential"), "meta")
    for name in ("unet", "vae"):
        assert sd[name].device.type == "meta", name
    for name in ("unet", "vae", "text_encoder"):
        for m in sd[name].modules():
            hooked = "group_offloading" in getattr(getattr(m, "_diffusers_hook", None), "hooks", {})
            if isinstance(m, torch.nn.GroupNorm):
                assert m.weight.device.type == "meta" and not hooked
            elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)):
                assert m.weight.device.type == "cpu" and hooked


def test_remove_restores_the_default_modules(sd, reference):
    from diffusers.models.attention_processor import AttnProcessor2_0

    off = apply(sd, LowVram(attention_slicing="max", vae_slicing=True, offload="sequential"), "cpu")
    with pytest.raises(InputError, match="already set up"):
        apply(sd, LowVram(offload="model"), "cpu")
    apply(sd, LowVram(attention_slicing="max", vae_slicing=True, offload="sequential"), "cpu")  # the same: fine
    off.remove()
    for name in ("unet", "vae"):
        assert all(type(p) is AttnProcessor2_0 for p in sd[name].attn_processors.values())
        assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in sd[name].modules())
    off = apply(sd, LowVram(offload="model"), "cpu")  # other switches after remove(): fine
    out = run_all(sd, off)
    assert all((out[k] - reference[k]).abs().max() <= TOLERANCE for k in reference)


@pytest.mark.parametrize("kwargs, field", [
    ({"attention_slicing": "on"}, "attention_slicing"),
    ({"attention_slicing": 0}, "attention_slicing"),
    ({"attention_slicing": True}, "attention_slicing"),
    ({"attention_slicing": 2.5}, "attention_slicing"),
    ({"vae_slicing": "yes"}, "vae_slicing"),
    ({"offload": "cpu"}, "offload"),
])
def test_bad_values_are_refused(sd, kwargs, field):
    low = LowVram(**kwargs)
    problem = low.check()
    assert problem and problem.startswith(field) and repr(next(iter(kwargs.values()))) in problem
    with pytest.raises(InputError, match=field):
        apply(sd, low, "cpu")


@pytest.mark.parametrize("low", [LowVram(), LowVram(attention_slicing="auto"), LowVram(attention_slicing=8),
                                 LowVram(vae_slicing=True, offload="model"), LowVram(offload="sequential")], ids=str)
def test_good_values_pass_check(low):
    assert low.check() is None


def test_the_config_layer_reads_the_switches():
    from tiledsr.config import from_mapping
    from tiledsr.errors import PresetError

    low = from_mapping(LowVram, {"attention_slicing": 4, "vae_slicing": True, "offload": "model"}, "stage")
    assert low == LowVram(4, True, "model")
    assert from_mapping(LowVram, {"attention_slicing": "max"}, "stage").attention_slicing == "max"
    with pytest.raises(PresetError, match="offload"):
        from_mapping(LowVram, {"offload": "gpu"}, "stage")


def test_apply_takes_components_mappings_and_pairs(sd):
    from tiledsr.diffusion.components import Components

    comp = Components("tiny", sd["unet"], sd["vae"], sd["text_encoder"], sd["tokenizer"], sd["scheduler"],
                      torch.device("cpu"), torch.float32)
    assert set(apply(comp, LowVram(), "cpu").modules) == {"unet", "vae", "text_encoder"}
    assert set(apply(sd, LowVram(), "cpu").modules) == {"unet", "vae", "text_encoder"}  # tokenizer etc. skipped
    assert set(apply([("unet", sd["unet"])], LowVram(), "cpu").modules) == {"unet"}


def test_unknown_modules_and_foreign_attention_processors_are_refused(sd):
    from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor

    with pytest.raises(InputError, match="refiner"):
        apply({"unet": sd["unet"], "refiner": sd["vae"]}, LowVram(), "cpu")
    sd["unet"].set_attn_processor(SlicedAttnProcessor(1))
    with pytest.raises(InputError, match="SlicedAttnProcessor"):
        apply(sd, LowVram(attention_slicing="auto", vae_slicing=True), "cpu")
    assert all(type(p) is AttnProcessor2_0 for p in sd["vae"].attn_processors.values())  # nothing changed
    apply(sd, LowVram(offload="model"), "cpu")  # no slicing: any processor will do


def test_memory_effect():
    mib = 1 << 20
    est = {"tile": 500 * mib, "canvas": 40 * mib}
    w = {"unet": 1640 * mib, "controlnet": 700 * mib, "vae": 320 * mib, "text_encoder": 235 * mib}
    total = sum(w.values())
    for low in (LowVram(), LowVram(attention_slicing="max", vae_slicing=True)):
        assert memory_effect(low, est, w) == {**est, "weights": total}
    assert memory_effect(LowVram(offload="model"), est, w)["weights"] == (1640 + 700) * mib  # the denoise phase
    assert memory_effect(LowVram(offload="sequential"), est, w, layer=56 * mib)["weights"] == 56 * mib
    seq = memory_effect(LowVram(offload="sequential"), est, w)["weights"]
    assert seq == int(max(0.035 * w["unet"], 0.035 * w["controlnet"], 0.03 * w["vae"], 0.31 * w["text_encoder"]))
    for low in (LowVram(offload="model"), LowVram(offload="sequential")):  # the CPU stores them anyway
        assert memory_effect(low, est, w, device="cpu")["weights"] == total
        assert memory_effect(low, est, w, device=torch.device("cpu"))["weights"] == total


def test_weight_and_layer_bytes_on_the_meta_device():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8)
    assert lowvram.weight_bytes(unet) == 4 * sum(t.numel() for t in [*unet.parameters(), *unet.buffers()])
    conv = unet.up_blocks[0].resnets[0].conv1  # 128 -> 64 channels, 3 x 3: the largest layer here
    assert lowvram.largest_layer_bytes(unet) >= 4 * (conv.weight.numel() + conv.bias.numel())
    assert lowvram.largest_layer_bytes(torch.nn.GroupNorm(8, 64)) == 0
