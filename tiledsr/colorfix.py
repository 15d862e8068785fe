"""Colour fix: give a generated image the colours of the pipeline's input.

Diffusion upscalers drift in tone and colour. Two corrections against the
reference (the input, resized to the output with Lanczos):

* ``wavelet``: keep the image's high frequencies, take the low frequencies
  from the reference. The low-pass is a cascade of ``levels`` 3x3 binomial
  blurs with dilations 1, 2, 4, ... (an "a trous" wavelet decomposition whose
  detail bands sum to ``image - lowpass(image)``), so
  ``out = image - lowpass(image) + lowpass(reference)``.
* ``adain``: match each channel's mean and standard deviation to the reference's.

Both work on colour channels only; alpha (2 or 4 channels) passes through.
Whole-image numpy: peak memory is the image, the output, the resized
reference and about three float32 planes. For tiling later: the wavelet
low-pass reaches ``2**levels - 1`` pixels (31 for 5 levels), so tiles with that
much context reproduce the whole-image result exactly; ``adain`` needs only
the per-channel mean/std of image and reference, two numbers per channel.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .resample import resize

__all__ = ["LEVELS", "METHODS", "colorfix"]

METHODS = ("wavelet", "adain")
LEVELS = 5


def _blur(plane: np.ndarray, d: int) -> np.ndarray:
    """[1, 2, 1] / 4 blur along both axes with dilation ``d``, mirrored at the edges: (H, W) float32."""
    p = np.pad(plane, ((d, d), (0, 0)), mode="reflect" if plane.shape[0] > 1 else "edge")
    plane = (p[:-2 * d] + 2 * p[d:-d] + p[2 * d:]) * np.float32(0.25)
    p = np.pad(plane, ((0, 0), (d, d)), mode="reflect" if plane.shape[1] > 1 else "edge")
    return (p[:, :-2 * d] + 2 * p[:, d:-d] + p[:, 2 * d:]) * np.float32(0.25)


def _lowpass(plane: np.ndarray, levels: int) -> np.ndarray:
    """Residual low-frequency band after ``levels`` wavelet levels: (H, W) float32."""
    for i in range(levels):
        plane = _blur(plane, 2 ** i)
    return plane


def _split(a: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W) / (H, W, C) -> colour (H, W, 1 or 3) float32 and alpha (H, W, 1) or None."""
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 2, 3, 4) or 0 in a.shape:
        raise InputError(f"{name} must be (H, W) or (H, W, C) with C in 1..4, got shape {a.shape}")
    a = a.astype(np.float32, copy=False)
    colour = 1 if a.shape[2] < 3 else 3
    return a[:, :, :colour], (a[:, :, colour:] if a.shape[2] in (2, 4) else None)


def _fix_plane(img: np.ndarray, ref: np.ndarray, method: str, levels: int) -> np.ndarray:
    """One channel (H, W) float32 corrected towards ``ref`` (H, W)."""
    if method == "wavelet":
        return img - _lowpass(img, levels) + _lowpass(ref, levels)
    scale = ref.std(dtype=np.float64) / max(img.std(dtype=np.float64), 1e-6)
    return ((img - img.mean(dtype=np.float64)) * scale + ref.mean(dtype=np.float64)).astype(np.float32)


def colorfix(image: np.ndarray, reference: np.ndarray, method: str = "wavelet", *,
             levels: int = LEVELS) -> np.ndarray:
    """Correct ``image``'s colours towards ``reference``: float32 (H, W[, C]) in [0, 1] -> same shape, [0, 1].

    ``reference`` is any size (resized to the image with Lanczos) with the same
    number of colour channels, or grey for a colour image. ``levels``: wavelet
    levels (low-pass radius ``2**levels - 1`` pixels). Alpha is kept as is.
    """
    # 1. Check inputs
    if method not in METHODS:
        raise InputError(f"colorfix method must be one of {METHODS}, got {method!r}")
    if levels < 1:
        raise InputError(f"colorfix levels must be >= 1, got {levels}")
    colour, alpha = _split(np.asarray(image), "image")
    ref, _ = _split(np.asarray(reference), "reference")
    if ref.shape[2] not in (1, colour.shape[2]):
        raise InputError(f"reference must have {colour.shape[2]} colour channel(s) or 1, got {ref.shape[2]}")
    # 2. Reference at the image's size
    ref = resize(np.ascontiguousarray(ref), colour.shape[:2], "lanczos")
    # 3. Channel by channel
    out = np.empty(colour.shape, dtype=np.float32)
    for c in range(colour.shape[2]):
        r = ref[:, :, min(c, ref.shape[2] - 1)]
        out[:, :, c] = _fix_plane(colour[:, :, c], r, method, levels)
    np.clip(out, 0.0, 1.0, out=out)
    # 4. Alpha back, original layout
    if alpha is not None:
        out = np.concatenate([out, alpha], axis=2)
    return out.reshape(np.shape(image))
