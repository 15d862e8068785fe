"""The sr stage and the Pipeline API on real photos with the real Real-ESRGAN weights."""
import numpy as np
import pytest
import torch
from PIL import Image

import tiledsr
from tiledsr import Pipeline
from tiledsr.errors import Cancelled


def photo(name="chelsea", box=None):
    from skimage import data

    a = getattr(data, name)()
    if box:
        y, x, h, w = box
        a = a[y:y + h, x:x + w]
    return a.astype(np.float32) / 255.0


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a - b) ** 2))


def sr(model, **tiling):
    return Pipeline([{"type": "sr", "model": model, **tiling}], device="cpu")


@pytest.mark.parametrize("backend", ["ncnn", "torch"])
def test_compact_tiled_equals_untiled(backend):
    img = photo(box=(60, 150, 96, 136))
    whole = sr("animevideov3", tile=4096, backend=backend).run_array(img)
    for tile, overlap, blend in [(128, 32, "cosine"), (96, 8, "linear"), (200, 40, "gaussian")]:
        tiled = sr("animevideov3", tile=tile, overlap=overlap, blend=blend, backend=backend).run_array(img)
        assert tiled.shape == whole.shape == (384, 544, 3)
        assert np.abs(tiled - whole).max() <= 1 / 255


@pytest.mark.slow
def test_x4plus_tiled_vs_untiled_psnr_at_default_settings():
    img = photo()  # 300 x 451: the default 1024 px tiles make a 2 x 2 grid
    tiled_pipe = Pipeline.from_preset("photo-x4", device="cpu")
    assert len(tiled_pipe.plan((451, 300)).stages[0].grid) == 4
    tiled = tiled_pipe.run_array(img)
    whole = Pipeline.from_preset("photo-x4", device="cpu", overrides={"tile": 4096}).run_array(img)
    assert psnr(tiled, whole) >= 45


def test_same_output_whatever_tile_batch():
    img = photo(box=(0, 0, 40, 56))
    a = sr("animevideov3", tile=64, overlap=16, batch=1, backend="torch").run_array(img)
    b = sr("animevideov3", tile=64, overlap=16, batch=5, backend="torch").run_array(img)
    assert np.abs(a - b).max() <= 1e-5


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_grey_and_alpha_channels(channels):
    rng = np.random.default_rng(channels)
    img = rng.random((40, 36, channels), dtype=np.float32)
    out = sr("animevideov3", tile=64, overlap=8).run_array(img)
    assert out.shape == (160, 144, channels)
    if channels in (2, 4):  # alpha is resized with Lanczos, not run through the network
        from tiledsr.resample import resize

        expect = np.clip(resize(img[:, :, -1:], (160, 144), "lanczos"), 0, 1)
        assert np.abs(out[:, :, -1:] - expect).max() < 1e-6


def test_alpha_through_network_option():
    img = np.random.default_rng(0).random((16, 16, 4), dtype=np.float32)
    out = Pipeline([{"type": "sr", "model": "animevideov3", "alpha": "sr"}], device="cpu").run_array(img)
    assert out.shape == (64, 64, 4)


def test_pipeline_accepts_pil_numpy_torch_and_returns_same_kind():
    pipe = sr("animevideov3")
    a8 = (photo(box=(0, 0, 16, 12)) * 255).round().astype(np.uint8)
    out = pipe(Image.fromarray(a8))
    assert isinstance(out, Image.Image) and out.size == (48, 64) and out.mode == "RGB"
    out = pipe(a8.astype(np.uint16) * 257)
    assert out.dtype == np.uint16 and out.shape == (64, 48, 3)
    t = torch.from_numpy(a8.transpose(2, 0, 1).astype(np.float32) / 255)
    out = pipe(t[None])
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 64, 48)
    grey = pipe(a8[:, :, 0])
    assert grey.shape == (64, 48) and grey.dtype == np.uint8


def test_progress_events_and_cancel():
    events = []
    pipe = sr("animevideov3", tile=64, overlap=8)
    pipe.run_array(photo(box=(0, 0, 40, 40)), progress=events.append)
    assert events[0].event == "start" and events[-1].event == "done"
    assert events[1].event == "stage" and events[1].tile == 0
    prog = [e for e in events if e.event == "progress"]
    assert [e.tile for e in prog] == list(range(1, prog[0].tiles + 1)) and prog[-1].eta == 0
    with pytest.raises(Cancelled):
        pipe.run_array(photo(box=(0, 0, 40, 40)), progress=lambda ev: ev.event != "progress")


def test_plan_loads_no_model():
    pipe = Pipeline.from_preset("photo-x4")
    plan = pipe.plan((1920, 1080))
    assert plan.output_size == (4320, 7680) and not hasattr(pipe.stages[0], "_runner")
    assert plan.stages[0].redundancy > 1 and plan.peak_memory > 0


def test_target_appends_exact_resize():
    pipe = Pipeline.from_preset("fast-x4", device="cpu", target=tiledsr.Target(width=50))
    out = pipe.run_array(photo(box=(0, 0, 20, 25)))
    assert out.shape == (40, 50, 3)


def test_upscale_api_writes_file(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray((photo(box=(0, 0, 20, 24)) * 255).astype(np.uint8)).save(src)
    img = tiledsr.upscale(src, tmp_path / "out.png", preset="fast-x4")
    assert img.size == (96, 80) and Image.open(tmp_path / "out.png").size == (96, 80)
