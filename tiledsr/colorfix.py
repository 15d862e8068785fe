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
:func:`colorfix` works on whole arrays; :func:`colorfix_bands` on stores, band by band: the
wavelet low-pass reaches ``2**levels - 1`` pixels (31 for 5 levels), so bands read with that
much context reproduce the whole-image result exactly (the reference is resized band by band,
equal up to float rounding); ``adain`` needs only the per-channel mean/std of image and
reference, gathered in a first pass.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .resample import resize

__all__ = ["LEVELS", "METHODS", "colorfix", "colorfix_bands"]

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


def colorfix_bands(src, reference, method: str = "wavelet", *, levels: int = LEVELS, start: int = 0,
                   rows: int | None = None):
    """:func:`colorfix` of the store ``src`` (H, W, C) towards the store ``reference`` (any size,
    resized with Lanczos), as consecutive float32 bands in [0, 1] from row ``start`` on."""
    from .resample import band_rows, resize_bands
    from .tiling.store import MappedStore, StreamStore

    if method not in METHODS:
        raise InputError(f"colorfix method must be one of {METHODS}, got {method!r}")
    if levels < 1:
        raise InputError(f"colorfix levels must be >= 1, got {levels}")
    h, w, c = src.shape
    colours = 1 if c < 3 else 3
    rc = reference.shape[2]
    ref_colours = 1 if rc < 3 else 3
    if ref_colours not in (1, colours):
        raise InputError(f"reference must have {colours} colour channel(s) or 1, got {ref_colours}")
    ref_planes = MappedStore(reference, lambda a: a[:, :, :ref_colours], ref_colours)
    step = rows or band_rows(w, c)
    reach = 2 ** levels - 1 if method == "wavelet" else 0

    def resized_ref(first: int):
        return StreamStore(resize_bands(ref_planes, (h, w), "lanczos", start=first), (h, w, ref_colours), first)

    stats = _adain_stats(src, resized_ref(0), colours, step) if method == "adain" else None
    ref = resized_ref(max(0, start - reach))
    for y0 in range(start, h, step):
        y1 = min(h, y0 + step)
        a, b = max(0, y0 - reach), min(h, y1 + reach)
        block, ref_block = src.read(a, b), ref.read(a, b)
        out = np.empty((b - a, w, colours), np.float32)
        for k in range(colours):
            r = ref_block[:, :, min(k, ref_colours - 1)]
            if stats is None:
                out[:, :, k] = _fix_plane(block[:, :, k], r, method, levels)
            else:
                (m, sd), (rm, rsd) = stats[k]
                out[:, :, k] = ((block[:, :, k] - m) * (rsd / max(sd, 1e-6)) + rm).astype(np.float32)
        np.clip(out, 0.0, 1.0, out=out)
        band = out[y0 - a:y1 - a]
        if c in (2, 4):
            band = np.concatenate([band, block[y0 - a:y1 - a, :, colours:]], axis=2)
        yield np.ascontiguousarray(band)


def _adain_stats(src, ref, colours: int, step: int) -> list:
    """Per colour channel ((mean, std) of ``src``, (mean, std) of the resized ``ref``), float64."""
    h = src.shape[0]
    sums = np.zeros((2, colours, 3))  # [image|ref][channel][count, sum, sum of squares]
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        for which, block in enumerate((src.read(y0, y1), ref.read(y0, y1))):
            for k in range(colours):
                p = block[:, :, min(k, block.shape[2] - 1)].astype(np.float64)
                sums[which, k] += (p.size, p.sum(), np.square(p).sum())
    out = []
    for k in range(colours):
        pair = []
        for which in (0, 1):
            n, s1, s2 = sums[which, k]
            mean = s1 / n
            pair.append((mean, float(np.sqrt(max(0.0, s2 / n - mean * mean)))))
        out.append(tuple(pair))
    return out
