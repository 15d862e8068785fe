"""Tiled VAE invariants on the tiny random-weight AutoencoderKL from FACTS.md (offline, CPU)."""
import numpy as np
import pytest
import torch
from torch import nn

from tiledsr.diffusion.groupnorm import count_group_norms, record_group_norm_stats
from tiledsr.diffusion.vae import _latent_grid, one_pass_bytes, tiled_decode, tiled_encode
from tiledsr.errors import Cancelled, InputError

from tiny_models import autoencoder

TILE, OVERLAP = 128, 32  # output pixels: a 256 x 256 image gets 3 x 3 tiles


def build_vae(folder, attention=True):
    from diffusers import AutoencoderKL

    autoencoder(attention=attention).save_pretrained(folder)
    return AutoencoderKL.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return build_vae(tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def vae_noattn(tmp_path_factory):
    """The same VAE without the mid-block attention: every layer is then local."""
    return build_vae(tmp_path_factory.mktemp("vae_noattn"), attention=False)


def photo(size):
    """skimage's astronaut, area-downscaled: (1, 3, size, size) float32 in [-1, 1]."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()


@pytest.fixture(scope="module")
def latents(vae):
    """Latents of a 256 x 256 photo, as vae.decode takes them: (1, 4, 32, 32)."""
    with torch.no_grad():
        return vae.encode(photo(256)).latent_dist.mode()


def psnr(a, b):
    return 10 * np.log10(4 / float(((a - b) ** 2).mean()))


def worst_tile_tone(tiled, ref, grid, f=8):
    """Largest |mean(tiled - ref)| over a tile's pixels and channels, in 8-bit levels of [-1, 1]."""
    diffs = [(tiled - ref)[0, :, t.y * f:(t.y + t.h) * f, t.x * f:(t.x + t.w) * f].mean((1, 2)).abs().max()
             for t in grid.tiles]
    return float(max(diffs)) * 127.5


def untiled_decode(vae, z):
    with torch.no_grad():
        return vae.decode(z).sample


def test_one_tile_decode_and_encode_equal_untiled(vae, latents):
    sf = vae.config.scaling_factor
    out = tiled_decode(vae, latents, tile=1024, overlap=32)  # tile larger than the image
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (1, 3, 256, 256)
    assert (out - untiled_decode(vae, latents)).abs().max() < 1e-5
    px = photo(256)
    with torch.no_grad():
        want = vae.encode(px).latent_dist.mode() * sf
    lat = tiled_encode(vae, px, tile=256, overlap=0)
    assert lat.shape == (1, 4, 32, 32) and (lat - want).abs().max() < 1e-5


def test_shared_norm_without_attention_reproduces_untiled(vae_noattn):
    """Every layer is local: exact whole-image GroupNorm statistics leave only float rounding."""
    with torch.no_grad():
        z = vae_noattn.encode(photo(256)).latent_dist.mode()
        with record_group_norm_stats(vae_noattn.decoder) as want:
            ref = vae_noattn.decode(z).sample
    shared = tiled_decode(vae_noattn, z, tile=TILE, overlap=OVERLAP)
    own = tiled_decode(vae_noattn, z, tile=TILE, overlap=OVERLAP, shared_norm=False)
    assert psnr(shared, ref) > 60  # measured 78 dB
    assert psnr(own, ref) < 40  # measured 33 dB: per-tile statistics
    assert len(want) == count_group_norms(vae_noattn.decoder)


def test_shared_norm_decode_is_close_to_untiled_and_beats_per_tile_stats(vae, latents):
    ref = untiled_decode(vae, latents)
    grid = _latent_grid(32, 32, TILE, OVERLAP, 8)
    assert len(grid) == 9
    shared = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP)
    own = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, shared_norm=False)
    assert psnr(shared, ref) > 40  # measured 46 dB; what is left is the attention seeing only its window
    assert psnr(own, ref) < psnr(shared, ref) - 10  # measured 31 dB
    assert worst_tile_tone(shared, ref, grid) < 1.0  # 8-bit levels; measured 0.38
    assert worst_tile_tone(own, ref, grid) > 3 * worst_tile_tone(shared, ref, grid)  # measured 1.76


def test_constant_latents_decode_without_seams(vae, latents):
    z = latents.mean((2, 3), keepdim=True).expand(1, 4, 32, 32).contiguous()
    ref = untiled_decode(vae, z)
    grid = _latent_grid(32, 32, TILE, OVERLAP, 8)
    shared = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP)
    inner = (slice(None), slice(None), slice(64, -64), slice(64, -64))  # away from the image border
    own = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, shared_norm=False)
    assert ref[inner].std((2, 3)).max() < 0.005  # the untiled decode is flat there (measured 0.002)
    assert (shared - ref)[inner].abs().max() < 0.003  # measured 0.0011
    assert worst_tile_tone(shared, ref, grid) < 0.3  # measured 0.11 levels
    assert worst_tile_tone(own, ref, grid) > 5 * worst_tile_tone(shared, ref, grid)  # measured 1.26


def test_tiled_encode_is_close_to_untiled(vae):
    px = photo(256)
    with torch.no_grad():
        want = vae.encode(px).latent_dist.mode() * vae.config.scaling_factor
    shared = tiled_encode(vae, px, tile=TILE, overlap=OVERLAP)
    own = tiled_encode(vae, px, tile=TILE, overlap=OVERLAP, shared_norm=False)
    rel = lambda a: float((a - want).pow(2).mean().sqrt() / want.std())  # noqa: E731
    assert rel(shared) < 0.1 and rel(shared) < rel(own) / 3  # measured 0.055 and 0.33


def test_odd_sizes(vae):
    torch.manual_seed(1)
    z = torch.randn(1, 4, 13, 21) * 0.5
    out = tiled_decode(vae, z, tile=64, overlap=16, context=2)  # windows smaller than the image
    assert out.shape == (1, 3, 104, 168)
    assert psnr(out, untiled_decode(vae, z)) > 23  # measured 26.0 dB (21.1 with per-tile statistics)
    lat = tiled_encode(vae, photo(176)[:, :, :100, :170], tile=64, overlap=16, context=2)
    assert lat.shape == (1, 4, 13, 22)  # padded up to multiples of 8
    assert torch.isfinite(lat).all()


@pytest.mark.parametrize("shared_norm", [True, False])
def test_progress_reports_every_tile_run(vae, shared_norm):
    z = torch.zeros(1, 4, 13, 21)
    calls = []
    tiled_decode(vae, z, tile=64, overlap=16, shared_norm=shared_norm, progress=lambda d, t: calls.append((d, t)))
    tiles = len(_latent_grid(13, 21, 64, 16, 8))
    runs = tiles * (count_group_norms(vae.decoder) + 1) if shared_norm else tiles
    assert tiles > 1 and calls == [(i, runs) for i in range(1, runs + 1)]


def test_one_pass_statistics_equal_the_sweeps(vae, latents):
    """Pausing every tile at each GroupNorm gives the sweeps' statistics, hence the very same output."""
    sweep = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, one_pass=False)
    assert torch.equal(tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, one_pass=True), sweep)
    assert torch.equal(tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP), sweep)  # auto: one pass fits
    px = photo(128)
    assert torch.equal(tiled_encode(vae, px, tile=64, overlap=16, one_pass=True),
                       tiled_encode(vae, px, tile=64, overlap=16, one_pass=False))


def test_one_pass_refuses_modules_it_cannot_pause_in_and_auto_falls_back(vae, monkeypatch):
    from tiledsr.diffusion import onepass

    block = nn.Sequential(nn.Conv2d(4, 32, 1), nn.GroupNorm(8, 32))
    with pytest.raises(onepass.Unsupported):
        onepass.one_pass(block, [(lambda: torch.zeros(1, 4, 8, 8), ((8, 8), (0, 8, 0, 8)))], lambda i, out: None)
    z = torch.randn(1, 4, 13, 21, generator=torch.Generator().manual_seed(0))
    sweep = tiled_decode(vae, z, tile=64, overlap=16, one_pass=False)

    def unsupported(m, x):
        raise onepass.Unsupported("test")
        yield

    monkeypatch.setattr(onepass, "program", unsupported)
    assert torch.equal(tiled_decode(vae, z, tile=64, overlap=16), sweep)
    with pytest.raises(onepass.Unsupported):
        tiled_decode(vae, z, tile=64, overlap=16, one_pass=True)


def test_one_pass_memory_estimate_for_planning():
    assert one_pass_bytes(512, 512, tile=1024, overlap=128) == 0  # one tile: a plain run, nothing paused
    small = one_pass_bytes(2048, 2048, tile=1024, overlap=128)
    big = one_pass_bytes(4096, 4096, tile=1024, overlap=128)
    assert 3.5 < big / small < 4.5  # grows with the area (windows add their context)
    assert small > 4 * 128 * 4 * 2048 * 2048  # at least four full-resolution activations, plus the context
    assert one_pass_bytes(2048, 2048, tile=1024, overlap=128, context=0) < small


@pytest.mark.parametrize("one_pass", [True, False])
def test_vae_is_left_unmodified_also_after_a_cancel(vae, one_pass):
    z = torch.zeros(1, 4, 13, 21)
    before = untiled_decode(vae, z)
    norms = [m for m in vae.modules() if isinstance(m, nn.GroupNorm)]
    tiled_encode(vae, torch.zeros(1, 3, 104, 168), tile=64, overlap=16)
    tiled_decode(vae, z, tile=64, overlap=16)

    def cancel(done, total):
        if done == 3 * len(_latent_grid(13, 21, 64, 16, 8)) + 1:  # inside the fourth GroupNorm's round or sweep
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        tiled_decode(vae, z, tile=64, overlap=16, one_pass=one_pass, progress=cancel)
    assert [m for m in vae.modules() if isinstance(m, nn.GroupNorm)] == norms
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in vae.modules())
    assert torch.equal(untiled_decode(vae, z), before)


@pytest.mark.parametrize("kwargs", [
    {"latents": torch.zeros(2, 4, 8, 8)},
    {"latents": torch.zeros(1, 3, 8, 8)},
    {"latents": torch.zeros(4, 8, 8)},
    {"tile": 4},
    {"overlap": -8},
    {"blend": "median"},
])
def test_bad_arguments_raise_input_error(vae, kwargs):
    args = {"latents": torch.zeros(1, 4, 8, 8), "tile": 32, "overlap": 8, **kwargs}
    with pytest.raises(InputError):
        tiled_decode(vae, args.pop("latents"), **args)
    with pytest.raises(InputError):
        tiled_encode(vae, torch.zeros(1, 4, 64, 64), tile=32, overlap=8)
