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
CONTEXT = 8  # latent pixels, as auto_context gives tiles of 1024 px (these small tiles would get 2)


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
    shared = tiled_decode(vae_noattn, z, tile=TILE, overlap=OVERLAP, context=CONTEXT)
    own = tiled_decode(vae_noattn, z, tile=TILE, overlap=OVERLAP, shared_norm=False, context=CONTEXT)
    assert psnr(shared, ref) > 60  # measured 78 dB
    assert psnr(own, ref) < 40  # measured 33 dB: per-tile statistics
    assert len(want) == count_group_norms(vae_noattn.decoder)


def test_shared_norm_decode_is_close_to_untiled_and_beats_per_tile_stats(vae, latents):
    ref = untiled_decode(vae, latents)
    grid = _latent_grid(32, 32, TILE, OVERLAP, 8)
    assert len(grid) == 9
    shared = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, context=CONTEXT)
    own = tiled_decode(vae, latents, tile=TILE, overlap=OVERLAP, shared_norm=False, context=CONTEXT)
    assert psnr(shared, ref) > 27  # measured 29.9 dB; what is left is the attention seeing only its window
    assert psnr(own, ref) < psnr(shared, ref) - 6  # measured 20.7 dB
    assert worst_tile_tone(shared, ref, grid) < 2.0  # 8-bit levels; measured 1.51
    assert worst_tile_tone(own, ref, grid) > 3 * worst_tile_tone(shared, ref, grid)  # measured 8.83


def test_constant_latents_decode_without_seams(vae, latents):
    z = latents.mean((2, 3), keepdim=True).expand(1, 4, 32, 32).contiguous()
    ref = untiled_decode(vae, z)
    grid = _latent_grid(32, 32, TILE, OVERLAP, 8)
    shared = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, context=CONTEXT)
    inner = (slice(None), slice(None), slice(64, -64), slice(64, -64))  # away from the image border
    own = tiled_decode(vae, z, tile=TILE, overlap=OVERLAP, shared_norm=False, context=CONTEXT)
    assert ref[inner].std((2, 3)).max() < 0.005  # the untiled decode is flat there (measured 0.002)
    assert (shared - ref)[inner].abs().max() < 0.015  # measured 0.0091
    assert worst_tile_tone(shared, ref, grid) < 0.8  # measured 0.50 levels
    assert worst_tile_tone(own, ref, grid) > 5 * worst_tile_tone(shared, ref, grid)  # measured 5.80


def test_tiled_encode_is_close_to_untiled(vae):
    px = photo(256)
    with torch.no_grad():
        want = vae.encode(px).latent_dist.mode() * vae.config.scaling_factor
    shared = tiled_encode(vae, px, tile=TILE, overlap=OVERLAP, context=CONTEXT)
    own = tiled_encode(vae, px, tile=TILE, overlap=OVERLAP, shared_norm=False, context=CONTEXT)
    rel = lambda a: float((a - want).pow(2).mean().sqrt() / want.std())  # noqa: E731
    assert rel(shared) < 0.1 and rel(shared) < rel(own) / 3  # measured 0.055 and 0.33


def test_odd_sizes(vae):
    torch.manual_seed(1)
    z = torch.randn(1, 4, 13, 21) * 0.5
    out = tiled_decode(vae, z, tile=64, overlap=16, context=2)  # windows smaller than the image
    assert out.shape == (1, 3, 104, 168)
    assert psnr(out, untiled_decode(vae, z)) > 21.5  # measured 22.9 dB (18.9 with per-tile statistics)
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


def test_windows_take_context_only_where_the_image_has_it():
    """Edge tiles get none beyond the image and no more than ``context`` inside: the work stays near the area."""
    from tiledsr.diffusion.vae import _windows

    grid = _latent_grid(40, 56, 128, 16, 8)  # latent 40 x 56, tiles of 16
    for t, (wy0, wh, oy), (wx0, ww, ox), _ in _windows(grid, 4):
        assert wy0 == max(0, t.y - 4) and wy0 + wh == min(40, t.y + t.h + 4) and oy == t.y - wy0
        assert wx0 == max(0, t.x - 4) and wx0 + ww == min(56, t.x + t.w + 4) and ox == t.x - wx0


def test_auto_context_keeps_the_windows_near_the_image_area():
    """auto_context: 8 latent pixels for 1024 px tiles, a sixteenth of smaller ones; the windows of the presets'
    tile sizes (512, 768, 1024 px, VAE overlap 16 px) hold at most 1.4x the area of a 2048 or 4096 px image."""
    from tiledsr.diffusion.vae import OVERLAP, _windows, auto_context

    assert [auto_context(t) for t in (16, 32, 64, 96, 128, 256)] == [2, 2, 4, 6, 8, 8]
    for size in (2048, 4096):
        for tile in (512, 768, 1024):
            grid = _latent_grid(size // 8, size // 8, tile, OVERLAP, 8)
            c = auto_context(tile // 8)
            area = sum(wh * ww for _, (_, wh, _), (_, ww, _), _ in _windows(grid, c))
            assert area / (grid.height * grid.width) < 1.4, (size, tile)


def test_the_codec_tiles_with_a_short_overlap(vae):
    """The pipeline's VAE overlaps its tiles by at most OVERLAP pixels whatever the stage's overlap; its grid
    (the progress count) is the one tiled_decode runs."""
    from tiledsr.diffusion.codec import LatentCodec
    from tiledsr.diffusion.vae import OVERLAP
    from tiledsr.stages.base import Tiling

    codec = LatentCodec(vae, Tiling(tile=128, overlap=64))
    assert codec.overlap == OVERLAP == 16 and LatentCodec(vae, Tiling(tile=128, overlap=8)).overlap == 8
    calls = []
    img = (photo(256)[0].permute(1, 2, 0).numpy() + 1) / 2
    lat = codec.encode(img, lambda d, t: calls.append(t))
    assert calls[-1] == len(codec.grid(256, 256)) * (count_group_norms(vae.encoder) + 1)
    out = codec.decode(lat, lambda *a: None)
    assert out.shape == (256, 256, 3) and 0 <= out.min() and out.max() <= 1
