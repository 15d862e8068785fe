"""Python API input kinds: from_any / to_like read every kind right and give back the same kind.

Class covered (issue 7, defect 11): images passed to the Python API as numpy, torch or PIL
come back in the same kind, dtype, layout and device with the same pixel values; integer
input is scaled by its dtype's range, and float input outside [0, 1] is an InputError.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tiledsr
from tiledsr.errors import InputError
from tiledsr.imageconv import from_any, to_like

SIZES = [(7, 5), (1, 9), (13, 1)]
NUMPY_DTYPES = [np.bool_, np.uint8, np.uint16, np.uint32, np.float16, np.float32, np.float64]
TORCH_DTYPES = [torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.float16, torch.bfloat16,
                torch.float32, torch.float64]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random(shape: tuple[int, ...], dtype: np.dtype, seed: int = 0) -> np.ndarray:
    """Pixels covering the dtype's whole range: integers 0..max, floats in [0, 1], bool."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    if dtype.kind == "u":
        return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype, endpoint=True)
    return rng.random(shape).astype(dtype)


def _unit(a: np.ndarray) -> np.ndarray:
    """What from_any should read: the pixels as float64 in [0, 1]."""
    return a.astype(np.float64) / np.iinfo(a.dtype).max if a.dtype.kind == "u" else a.astype(np.float64)


def _levels(dtype: np.dtype) -> float:
    """Tolerance of a round trip in [0, 1] units: one level (uint32 and float64 keep float32's 24 bits)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u" and dtype.itemsize < 4:
        return 0.0  # exact
    return 2.0**-23 if dtype.itemsize >= 4 else 0.0


def _layouts(h: int, w: int) -> list[tuple[int, ...]]:
    return [(h, w), (h, w, 1), (h, w, 2), (h, w, 3), (h, w, 4)]


# --- round trips: identity, same kind -----------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_round_trip(dtype: np.dtype, size: tuple[int, int]) -> None:
    for shape in _layouts(*size):
        a = _random(shape, dtype)
        image = from_any(a)
        assert image.dtype == np.float32 and image.shape == (*size, shape[2] if len(shape) == 3 else 1)
        np.testing.assert_allclose(image.reshape(a.shape), _unit(a), atol=max(_levels(dtype), 1e-7), rtol=0)
        back = to_like(image, a)
        assert type(back) is np.ndarray and back.dtype == a.dtype and back.shape == a.shape
        np.testing.assert_allclose(_unit(back), _unit(a), atol=_levels(dtype), rtol=0)


def _torch_shapes(h: int, w: int) -> list[tuple[int, ...]]:
    return [(h, w)] + [(c, h, w) for c in range(1, 5)] + [(1, c, h, w) for c in range(1, 5)]


def _tensor(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    if dtype == torch.bfloat16:
        return torch.from_numpy(_random(shape, np.float32)).to(dtype).to(device)
    name = str(dtype).removeprefix("torch.")
    return torch.from_numpy(_random(shape, np.dtype(name))).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_torch_round_trip(dtype: torch.dtype, size: tuple[int, int], device: str) -> None:
    for shape in _torch_shapes(*size):
        t = _tensor(shape, dtype, device)
        image = from_any(t)
        channels = 1 if len(shape) == 2 else shape[-3]
        assert image.dtype == np.float32 and image.shape == (*size, channels)
        back = to_like(image, t)
        assert isinstance(back, torch.Tensor) and back.dtype == t.dtype and back.device == t.device
        assert back.shape == t.shape
        if t.dtype in (torch.uint32, torch.float64):  # the float32 image keeps 24 bits
            top = 4294967295 if t.dtype == torch.uint32 else 1
            assert (back.double() - t.double()).abs().max().item() / top <= 2.0**-23
        else:
            assert torch.equal(back, t), (shape, dtype)


def test_torch_channels_last_memory_format_is_kept() -> None:
    t = _tensor((1, 3, 6, 5), torch.float32, "cpu").contiguous(memory_format=torch.channels_last)
    back = to_like(from_any(t), t)
    assert torch.equal(back, t) and back.is_contiguous(memory_format=torch.channels_last)


def test_uint8_tensor_is_scaled_by_255() -> None:
    t = torch.full((3, 4, 5), 100, dtype=torch.uint8)
    np.testing.assert_allclose(from_any(t), 100 / 255, rtol=1e-6)
    u16 = torch.full((1, 1, 4, 5), 1000, dtype=torch.uint16)
    np.testing.assert_allclose(from_any(u16), 1000 / 65535, rtol=1e-6)


PIL_MODES = {"1": np.bool_, "L": np.uint8, "LA": np.uint8, "RGB": np.uint8, "RGBA": np.uint8,
             "I;16": np.uint16, "I;16B": ">u2", "I;16L": np.uint16, "I": np.uint16, "F": np.float32}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("mode", list(PIL_MODES))
def test_pil_round_trip(mode: str, size: tuple[int, int]) -> None:
    h, w = size
    bands = len(Image.new(mode, (1, 1)).getbands())
    a = _random((h, w, bands) if bands > 1 else (h, w), np.dtype(PIL_MODES[mode]).newbyteorder("="))
    if mode in ("I;16", "I;16B", "I;16L"):
        img = Image.frombytes(mode, (w, h), a.astype(PIL_MODES[mode]).tobytes())
    else:
        img = Image.fromarray(a.astype(np.int32) if mode == "I" else a, mode=None)
    assert img.mode == mode
    image = from_any(img)
    np.testing.assert_allclose(image.reshape(a.shape), _unit(a), atol=1e-7, rtol=0)
    back = to_like(image, img)
    assert back.mode == mode and back.size == img.size
    assert np.array_equal(np.asarray(back), np.asarray(img))


@pytest.mark.parametrize(("mode", "expected"), [
    ("P", "RGB"), ("PA", "RGBA"), ("CMYK", "CMYK"), ("YCbCr", "YCbCr"), ("RGBX", "RGBX"),
    ("RGBa", "RGBa"), ("La", "La"), ("HSV", "HSV"), ("LAB", "LAB"),
])
def test_pil_other_modes_come_back_in_their_mode(mode: str, expected: str) -> None:
    rgba = Image.fromarray(_random((5, 7, 4), np.uint8))
    img = rgba.convert("LA").convert(mode) if mode == "La" else rgba.convert(mode)
    back = to_like(from_any(img), img)
    assert back.mode == expected and back.size == img.size


# --- refusals ------------------------------------------------------------------------


FLOAT_CASES = [
    (2.0, "found min"), (255.0, "divide by 255"), (-0.5, "must be in \\[0, 1\\]"),
    (1.02, "max 1\\.0"), (float("nan"), "NaN"), (float("inf"), "infinity"), (-float("inf"), "infinity"),
]


@pytest.mark.parametrize(("value", "phrase"), FLOAT_CASES)
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_numpy_float_out_of_range_is_input_error(dtype: np.dtype, value: float, phrase: str) -> None:
    a = _random((6, 5, 3), dtype)
    a[2, 3, 1] = value
    with pytest.raises(InputError, match=phrase) as info:
        from_any(a)
    assert "\n" not in str(info.value) and np.dtype(dtype).name in str(info.value)


@pytest.mark.parametrize(("value", "phrase"), FLOAT_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_torch_float_out_of_range_is_input_error(dtype: torch.dtype, value: float, phrase: str) -> None:
    t = torch.rand(3, 6, 5).to(dtype)
    t[1, 2, 3] = value
    with pytest.raises(InputError, match=phrase):
        from_any(t)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_float_within_tolerance_is_clipped_and_input_untouched(dtype: np.dtype) -> None:
    a = np.full((4, 5), 0.5, dtype=dtype)
    a[0, 0], a[1, 1] = 1.0009, -0.0009
    before = a.copy()
    image = from_any(a)
    assert image[0, 0, 0] == 1.0 and image[1, 1, 0] == 0.0
    assert np.array_equal(a, before)


@pytest.mark.parametrize("value", [
    np.zeros((4, 4), np.int8), np.zeros((4, 4, 3), np.int16), np.zeros((4, 4), np.int32),
    np.zeros((4, 4), np.int64), np.zeros((4, 4), np.uint64), np.zeros((4, 4), np.complex64),
    np.zeros((4, 4), object), [[1, 2], [3, 4]],
    torch.zeros(3, 4, 4, dtype=torch.int8), torch.zeros(3, 4, 4, dtype=torch.int16),
    torch.zeros(3, 4, 4, dtype=torch.int32), torch.zeros(3, 4, 4, dtype=torch.int64),
    torch.zeros(3, 4, 4, dtype=torch.uint64), torch.zeros(3, 4, 4, dtype=torch.complex64),
], ids=lambda v: f"{type(v).__module__.split('.')[0]}-{getattr(v, 'dtype', 'list')}")
def test_signed_and_unsupported_dtypes_are_refused(value) -> None:
    with pytest.raises(InputError, match="unsupported pixel type|cannot read") as info:
        from_any(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "phrase"), [
    (np.zeros((3, 8, 9)), "looks like \\(C, H, W\\)"),
    (np.zeros((0, 5)), "no empty side"),
    (np.zeros((1, 4, 4, 3)), "must be \\(H, W\\)"),
    (np.zeros(7), "must be \\(H, W\\)"),
    (np.zeros((4, 4, 5)), "C in 1..4"),
    (torch.zeros(5, 6, 3), "channels-last"),
    (torch.zeros(1, 5, 6, 3), "channels-last"),
    (torch.zeros(2, 3, 4, 4), "batch of 2"),
    (torch.zeros(7), "must be \\(C, H, W\\)"),
    (torch.zeros(1, 1, 3, 4, 4), "must be \\(C, H, W\\)"),
    (torch.zeros(3, 0, 4), "no empty side"),
    ("photo.png", "got str"),
    (Path("photo.png"), "got PosixPath|got WindowsPath"),
    (None, "got NoneType"),
    ({"a": 1}, "unsupported pixel type|must be"),
    (Image.fromarray(np.full((3, 3), 70000, np.int32)), "0..65535"),
    (Image.fromarray(np.full((3, 3), 200.0, np.float32)), "PIL mode F float32 pixels must be in"),
])
def test_bad_shapes_and_objects_are_refused(value, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase) as info:
        from_any(value)
    assert "\n" not in str(info.value)


# --- the public path: Pipeline.__call__ returns the same kind ------------------------


def _cases() -> list[tuple[str, object]]:
    cases: list[tuple[str, object]] = [
        ("numpy-uint8-hwc", np.full((6, 5, 3), 100, np.uint8)),
        ("numpy-uint16-hw", np.full((6, 5), 30000, np.uint16)),
        ("numpy-float16-hw", np.full((6, 5), 0.25, np.float16)),
        ("numpy-float64-rgba", np.full((6, 5, 4), 0.75, np.float64)),
        ("pil-L", Image.new("L", (5, 6), 100)),
        ("pil-I;16", Image.frombytes("I;16", (5, 6), np.full((6, 5), 30000, "<u2").tobytes())),
        ("pil-RGBA", Image.new("RGBA", (5, 6), (10, 100, 200, 128))),
    ]
    for device in DEVICES:
        cases += [
            (f"torch-uint8-chw-{device}", torch.full((3, 6, 5), 100, dtype=torch.uint8, device=device)),
            (f"torch-float16-1chw-{device}", torch.full((1, 3, 6, 5), 0.25, dtype=torch.float16, device=device)),
            (f"torch-bfloat16-hw-{device}", torch.full((6, 5), 0.5, dtype=torch.bfloat16, device=device)),
            (f"torch-uint16-chw-{device}", torch.full((1, 6, 5), 30000, dtype=torch.uint16, device=device)),
        ]
    return cases


@pytest.fixture(scope="module")
def resize_x2() -> tiledsr.Pipeline:
    return tiledsr.Pipeline([{"type": "resize", "scale": 2}])


@pytest.mark.parametrize(("name", "image"), _cases(), ids=[n for n, _ in _cases()])
def test_pipeline_returns_the_same_kind(resize_x2: tiledsr.Pipeline, name: str, image) -> None:
    out = resize_x2(image)
    assert type(out) is type(image) or (isinstance(image, Image.Image) and isinstance(out, Image.Image))
    if isinstance(image, Image.Image):
        assert out.mode == image.mode and out.size == (image.width * 2, image.height * 2)
        before, after = np.asarray(image), np.asarray(out)
    elif isinstance(image, torch.Tensor):
        assert out.dtype == image.dtype and out.device == image.device
        assert out.shape[:-2] == image.shape[:-2] and out.shape[-2:] == (12, 10)
        before, after = image.cpu().float().numpy(), out.cpu().float().numpy()
    else:
        assert out.dtype == image.dtype
        assert out.shape == (12, 10, *image.shape[2:])
        before, after = image, out
    # a flat image stays flat at the same values (a uint8 tensor read as floats came back white)
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    level = 1.0 if before.max() > 1 else 2e-3
    np.testing.assert_allclose([after.min(), after.max()], [before.min(), before.max()], atol=level)
