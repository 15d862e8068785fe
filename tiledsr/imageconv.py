"""Conversions between what users pass in (PIL, numpy, torch) and the internal float image.

The internal image is float32 numpy (H, W, C) on the CPU, C in 1..4, values in [0, 1].

How pixels are read (:func:`from_any`):

- unsigned integers (numpy or torch uint8, uint16, uint32) are divided by their dtype's
  maximum (255, 65535, 4294967295; uint32 keeps the 24 bits of float32); bool is 0 or 1;
- floats (float16, bfloat16, float32, float64, ...) must lie in [0, 1]: values at most
  max(1e-3, the dtype's epsilon) outside are clipped; anything further out, NaN or
  infinity is an InputError naming the range found;
- signed integers, uint64, complex, object and other dtypes are an InputError naming it;
- numpy is (H, W) or (H, W, C); torch is (C, H, W), (1, C, H, W) or (H, W) on any device.
  A numpy (C, H, W) or channels-last torch tensor is refused with the transpose to use;
- PIL modes 1, L, LA, RGB, RGBA, I;16 (B, L, N), I (values 0..65535) and F (values in
  [0, 1]) are read as they are; P, PA, La, RGBa, RGBX, CMYK, YCbCr, LAB and HSV via L(A)/RGB(A).

:func:`to_like` returns the same kind: numpy or torch with the input's dtype, layout,
device and memory format (integers rounded, bool as >= 0.5); PIL in the input's mode,
except P and PA, which come back as RGB / RGBA (not re-quantised).
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["from_any", "to_like", "to_pil"]

_UNSIGNED_MAX = {1: 255, 2: 65535, 4: 4294967295}  # by itemsize
_PIL_NATIVE = ("1", "L", "LA", "RGB", "RGBA", "I;16", "I;16B", "I;16L", "I;16N", "F")
_PIL_WORKING = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
                "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}
_PIL_I16 = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2"}
_FLOAT_TOLERANCE = 1e-3


def from_any(image: Any) -> np.ndarray:
    """PIL image, numpy (H, W[, C]) or torch (C, H, W) / (1, C, H, W) / (H, W) on any device
    -> float32 (H, W, C) in [0, 1] on the CPU, C in 1..4. InputError for anything else."""
    if hasattr(image, "getbands"):
        return _from_pil(image)
    if _is_tensor(image):
        return _from_torch(image)
    if isinstance(image, (str, bytes, os.PathLike)) or image is None:
        raise InputError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}; "
                         "open files with tiledsr.upscale(path) or PIL.Image.open")
    try:
        array = np.asarray(image)
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot read a {type(image).__name__} as an image ({exc})") from exc
    return _from_numpy(array, "numpy")


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _from_numpy(a: np.ndarray, kind: str, eps: float | None = None) -> np.ndarray:
    """numpy (H, W) or (H, W, C) -> float32 (H, W, C) in [0, 1]; ``kind`` names the source."""
    shape = a.shape
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or not 1 <= a.shape[2] <= 4 or a.size == 0:
        hint = ""
        if a.ndim == 3 and 1 <= a.shape[0] <= 4 < a.shape[2]:
            hint = "; it looks like (C, H, W): pass a.transpose(1, 2, 0)"
        raise InputError(f"a {kind} image must be (H, W) or (H, W, C) with C in 1..4 and no "
                         f"empty side, got shape {shape}{hint}")
    return _to_unit(a, f"{kind} {a.dtype}", eps)


def _to_unit(a: np.ndarray, what: str, eps: float | None = None) -> np.ndarray:
    """Pixels of any supported dtype -> float32 in [0, 1] (a new array)."""
    kind, size = a.dtype.kind, a.dtype.itemsize
    if kind == "b":
        return a.astype(np.float32)
    if kind == "u" and size in _UNSIGNED_MAX:
        out = a.astype(np.float64 if size == 4 else np.float32)
        out /= _UNSIGNED_MAX[size]
        return out.astype(np.float32, copy=False)
    if kind == "f":
        return _check_floats(a, what, np.finfo(a.dtype).eps if eps is None else eps)
    raise InputError(f"unsupported pixel type {what}; pass uint8, uint16 or float in [0, 1] "
                     "(signed integers are ambiguous: convert them first)")


def _check_floats(a: np.ndarray, what: str, eps: float) -> np.ndarray:
    """Float pixels -> float32 clipped to [0, 1]; InputError beyond the tolerance, NaN or inf."""
    tolerance = max(_FLOAT_TOLERANCE, float(eps))
    low, high = float(a.min()), float(a.max())
    if not (math.isfinite(low) and math.isfinite(high)):  # NaN propagates through min and max
        raise InputError(f"{what} pixels contain NaN or infinity (min {low}, max {high}); "
                         "pass finite values in [0, 1]")
    if low < -tolerance or high > 1 + tolerance:
        hint = "; 8-bit values? divide by 255 or pass uint8" if high > 1.5 else ""
        raise InputError(f"{what} pixels must be in [0, 1], found min {low:.6g}, max {high:.6g}; "
                         f"scale them to [0, 1]{hint}")
    out = a.astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def _from_torch(t: Any) -> np.ndarray:
    """torch (C, H, W), (1, C, H, W) or (H, W), any dtype and device -> float32 (H, W, C)."""
    import torch

    chw = _chw(t)
    name = str(t.dtype).removeprefix("torch.")
    eps = None
    try:
        host = chw.detach().cpu()
        if host.is_floating_point() and host.dtype not in (torch.float16, torch.float32, torch.float64):
            eps, host = torch.finfo(host.dtype).eps, host.float()  # bfloat16, float8: numpy has none
        array = host.numpy()
    except (TypeError, RuntimeError, NotImplementedError) as exc:
        raise InputError(f"cannot read a torch {name} tensor on {t.device}; pass uint8, uint16 "
                         "or float in [0, 1] on a real device") from exc
    return _to_unit(array.transpose(1, 2, 0), f"torch {name}", eps)


def _chw(t: Any) -> Any:
    """The (C, H, W) view of a torch image; InputError naming the shape otherwise."""
    shape = tuple(t.shape)
    if t.ndim == 2:
        return t[None]
    if t.ndim == 4 and shape[0] != 1:
        raise InputError(f"torch tensor of shape {shape} is a batch of {shape[0]} images; "
                         "pass one (C, H, W) image at a time")
    chw = t[0] if t.ndim == 4 else t
    if chw.ndim == 3 and 1 <= chw.shape[0] <= 4 and chw.numel() > 0:
        return chw
    hint = ""
    if chw.ndim == 3 and 1 <= chw.shape[2] <= 4:
        hint = "; it looks channels-last (H, W, C): pass t.permute(2, 0, 1)"
    raise InputError(f"a torch image must be (C, H, W) or (1, C, H, W) with C in 1..4, or (H, W), "
                     f"with no empty side; got shape {shape}{hint}")


def _from_pil(img: Any) -> np.ndarray:
    """PIL image in any mode -> float32 (H, W, C) in [0, 1] (see the module docstring)."""
    mode = img.mode
    try:
        if mode == "I":
            return _from_numpy(_pil_int32(np.asarray(img)), "PIL mode I")
        if mode not in _PIL_NATIVE:
            has_alpha = "A" in img.getbands() or "transparency" in img.info
            img = img.convert(_PIL_WORKING.get(mode, "RGBA" if has_alpha else "RGB"))
        array = np.asarray(img)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read a PIL image in mode {mode} ({exc}); convert it to RGB first") from exc
    return _from_numpy(array, f"PIL mode {mode}")


def _pil_int32(a: np.ndarray) -> np.ndarray:
    """PIL mode I pixels (int32 holding 16-bit values) -> uint16; InputError outside 0..65535."""
    low, high = int(a.min()), int(a.max())
    if low < 0 or high > 65535:
        raise InputError(f"PIL mode I pixels must be in 0..65535 (16-bit), found {low}..{high}; "
                         "scale them or pass a float image in [0, 1]")
    return a.astype(np.uint16)


def to_pil(image: np.ndarray, bit_depth: int = 8) -> Any:
    """float32 (H, W, C) in [0, 1] -> PIL L, LA, RGB or RGBA (I;16 for 16-bit, one channel only:
    Pillow keeps no 16-bit colour)."""
    from PIL import Image

    if bit_depth == 16 and image.shape[2] == 1:
        return Image.fromarray(_from_unit(image[:, :, 0], np.dtype(np.uint16)))
    a = _from_unit(image, np.dtype(np.uint8))
    return Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)


def _from_unit(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float in [0, 1] (clipped) -> ``dtype``: unsigned integers scaled by their maximum and
    rounded, bool as >= 0.5, floats as they are."""
    if dtype.kind == "b":
        return image >= 0.5
    if dtype.kind == "u":
        out = np.clip(image, 0.0, 1.0, dtype=np.float64 if dtype.itemsize == 4 else np.float32)
        out *= _UNSIGNED_MAX[dtype.itemsize]
        return np.rint(out, out=out).astype(dtype)
    return np.clip(image, 0.0, 1.0).astype(dtype, copy=False)


def to_like(image: np.ndarray, like: Any) -> Any:
    """float32 (H, W, C) in [0, 1] -> the kind of ``like`` (what :func:`from_any` was given):
    the same PIL mode, or the same numpy / torch dtype, layout and device."""
    if hasattr(like, "getbands"):
        return _pil_like(image, like.mode)
    if _is_tensor(like):
        return _torch_like(image, like)
    like = np.asarray(like)
    out = _from_unit(image, like.dtype)
    return out[:, :, 0] if like.ndim == 2 and out.shape[2] == 1 else out


def _torch_like(image: np.ndarray, like: Any) -> Any:
    """float32 (H, W, C) -> torch tensor with ``like``'s dtype, device, rank and memory format."""
    import torch

    host = np.dtype(np.float32) if like.is_floating_point() else np.dtype(str(like.dtype).removeprefix("torch."))
    chw = np.ascontiguousarray(_from_unit(image, host).transpose(2, 0, 1))
    t = torch.from_numpy(chw)
    if like.ndim == 2 and t.shape[0] == 1:
        t = t[0]
    elif like.ndim == 4:
        t = t[None]
        if not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
            t = t.contiguous(memory_format=torch.channels_last)
    return t.to(device=like.device, dtype=like.dtype)


def _pil_like(image: np.ndarray, mode: str) -> Any:
    """float32 (H, W, C) -> PIL image in ``mode`` as far as Pillow can (P and PA: RGB / RGBA)."""
    from PIL import Image

    h, w, c = image.shape
    if c == 1 and mode in _PIL_I16:
        return Image.frombytes(mode, (w, h), _from_unit(image[:, :, 0], np.dtype(_PIL_I16[mode])).tobytes())
    if c == 1 and mode in ("I", "F", "1"):
        target = {"I": np.uint16, "F": np.float32, "1": np.bool_}[mode]
        plane = _from_unit(image[:, :, 0], np.dtype(target))
        return Image.fromarray(plane.astype(np.int32) if mode == "I" else plane)
    out = to_pil(image)
    if mode in _PIL_WORKING and mode != "PA" and out.mode == _PIL_WORKING[mode]:
        out = out.convert(mode)
    return out
