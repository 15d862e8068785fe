"""colorfix invariants: tone re-anchored to the reference, detail kept, alpha and grey handled."""
import numpy as np
import pytest

from tiledsr.colorfix import LEVELS, colorfix
from tiledsr.errors import InputError
from tiledsr.resample import resize

METHODS = ["wavelet", "adain"]


def smooth(h, w, c=3, seed=0):
    """A smooth float32 (h, w, c) image in [0.2, 0.8]."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    phase = np.random.default_rng(seed).uniform(0, 6, c)
    img = 0.5 + 0.3 * np.sin(3 * x[..., None] + 2 * y[..., None] + phase)
    return img.astype(np.float32)


def checkerboard(h, w, amp=0.2):
    return (amp * (np.indices((h, w)).sum(0) % 2 * 2 - 1)).astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_constant_offset_is_removed(method):
    ref = smooth(64, 80)
    out = colorfix(np.clip(ref + 0.1, 0, 1), ref, method)
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_high_frequencies_survive_a_reference_of_another_size(method):
    img = np.clip(0.6 + checkerboard(96, 120)[..., None] + np.zeros(3, np.float32), 0, 1)
    ref = np.full((37, 53, 3), 0.3, np.float32)
    out = colorfix(img, ref, method)
    assert out.shape == img.shape
    assert np.abs(out.mean(axis=(0, 1)) - 0.3).max() < 0.01  # tone of the reference
    detail = out - out.mean(axis=(0, 1))
    if method == "wavelet":  # the checkerboard is all high frequency: kept exactly
        assert np.abs(detail - checkerboard(96, 120)[..., None]).max() < 1e-4
    else:  # adain matches the reference's spread, which is zero here
        assert detail.std() < 1e-5


def test_wavelet_keeps_image_detail_and_takes_reference_low_frequencies():
    ref = smooth(128, 128, seed=1)
    img = np.clip(smooth(128, 128, seed=2) + checkerboard(128, 128, 0.1)[..., None], 0, 1)
    out = colorfix(img, ref, "wavelet")
    blocks = lambda a: resize(a, (4, 4), "area")  # noqa: E731  (32 x 32 block means)
    assert np.abs(blocks(img) - blocks(ref)).max() > 0.5
    assert np.abs(blocks(out) - blocks(ref)).max() < 0.08  # the low-pass (sigma ~13 px) leaves some mid frequencies
    detail = lambda a: a[1:-1, 1:-1] - 0.25 * (a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:])  # noqa: E731
    assert np.abs(detail(out) - detail(img)).max() < 0.01


def test_adain_matches_channel_mean_and_std():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.3, 0.5, (50, 70, 3)).astype(np.float32)
    ref = smooth(50, 70)
    out = colorfix(img, ref, "adain")
    assert np.allclose(out.mean(axis=(0, 1)), ref.mean(axis=(0, 1)), atol=1e-4)
    assert np.allclose(out.std(axis=(0, 1)), ref.std(axis=(0, 1)), atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_passes_through(method, channels):
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (40, 30, channels)).astype(np.float32)
    ref = smooth(20, 15, channels)
    out = colorfix(img, ref, method)
    assert out.shape == img.shape
    assert np.array_equal(out[:, :, -1], img[:, :, -1])


@pytest.mark.parametrize("method", METHODS)
def test_grey_images_and_grey_reference(method):
    ref = smooth(30, 40, 1)
    out2d = colorfix(np.clip(ref[:, :, 0] + 0.1, 0, 1), ref[:, :, 0], method)
    assert out2d.shape == (30, 40) and np.abs(out2d - ref[:, :, 0]).max() < 1e-5
    out1 = colorfix(np.clip(ref + 0.1, 0, 1), ref, method)
    assert out1.shape == (30, 40, 1)
    rgb = colorfix(np.repeat(np.clip(ref + 0.1, 0, 1), 3, axis=2), ref, method)  # grey reference, colour image
    assert np.abs(rgb - ref).max() < 1e-5


def test_output_is_clipped_to_unit_range():
    img = np.clip(smooth(32, 32) + checkerboard(32, 32, 0.4)[..., None], 0, 1)
    out = colorfix(img, np.full((32, 32, 3), 0.95, np.float32), "wavelet")
    assert out.min() >= 0 and out.max() <= 1


def test_wavelet_is_local_within_its_radius():
    """A crop with 2**LEVELS - 1 pixels of context gives the whole-image result (tile-friendly)."""
    r = 2 ** LEVELS - 1
    rng = np.random.default_rng(2)
    img = rng.uniform(0, 1, (150, 170, 3)).astype(np.float32)
    ref = smooth(150, 170)
    whole = colorfix(img, ref, "wavelet")
    y0, y1, x0, x1 = 50, 90, 60, 110
    crop = colorfix(img[y0 - r:y1 + r, x0 - r:x1 + r], ref[y0 - r:y1 + r, x0 - r:x1 + r], "wavelet")
    assert np.abs(crop[r:-r, r:-r] - whole[y0:y1, x0:x1]).max() < 1e-5


@pytest.mark.parametrize("kwargs,image,reference", [
    ({"method": "median"}, (8, 8, 3), (8, 8, 3)),
    ({"levels": 0}, (8, 8, 3), (8, 8, 3)),
    ({}, (8, 8, 5), (8, 8, 3)),
    ({}, (8, 8), (8, 8, 3)),
    ({}, (8, 8, 3), (8, 8, 2, 2)),
    ({}, (0, 8, 3), (8, 8, 3)),
])
def test_bad_inputs_raise_input_error(kwargs, image, reference):
    with pytest.raises(InputError):
        colorfix(np.zeros(image, np.float32), np.zeros(reference, np.float32), **kwargs)
