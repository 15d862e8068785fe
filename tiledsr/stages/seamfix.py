"""Stage ``seamfix``: re-render only the tile seams of the previous tiled stage that score above a threshold.

The pipeline hands this stage the seams of its input with their scores (:mod:`tiledsr.seams`).
Each seam scoring above ``threshold`` is repaired in a strip ``width`` px wide centred on it (and
``width / 2`` px beyond the ends of its span); every other pixel is passed on bit for bit.

- **Pixel-space fix** (no ``model``): low-frequency tone matching. Per position along the seam,
  the jump is the signed step across it less the gradient on the 3 lines either side, shrunk by the
  step the stage's input has there (a natural edge is kept), smoothed along the seam (a gaussian
  of 2 px). Half the jump is added on one side and taken off the other, fading linearly to 0 at
  the strip's edge, so the step goes and the strip meets the untouched pixels without a crease.
- **Diffusion re-render** (``model``: an SD 1.x/2.x checkpoint): after the tone fix, a rectangle
  around the strip (sides rounded up to the model's multiple) is refined on its own by img2img at
  ``strength`` (noise keyed to the seed and the rectangle's position), and blended back with a
  feathered weight that is 1 on the seam and 0 at the strip's edge.

Band by band: memory follows the band and the strips it crosses, not the image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Stage
from .diffusion import Scheduler

__all__ = ["SeamfixConfig", "SeamfixStage"]

SMOOTH_SIGMA = 2.0  # px along the seam: the jump is matched in tone, not pixel by pixel
_TAPS = np.exp(-0.5 * (np.arange(-6, 7) / SMOOTH_SIGMA) ** 2)
_TAPS = (_TAPS / _TAPS.sum()).astype(np.float32)
_R = len(_TAPS) // 2
GRADIENT_LINES = (1, 2, 3)  # lines either side whose mean step is the gradient the seam should continue


@dataclass(frozen=True)
class SeamfixConfig:
    """``threshold``: seam score above which a seam is repaired (see :mod:`tiledsr.seams`);
    ``width``: strip width in px, centred on the seam; ``model``: a diffusers SD checkpoint (hub id
    or folder) to re-render the strips with at ``strength`` (empty: the pixel-space fix only);
    ``steps``, ``prompt``, ``negative_prompt``, ``guidance``, ``scheduler``: as for ``img2img``."""

    threshold: float = 2.0
    width: int = 32
    model: str = ""
    strength: float = 0.25
    steps: int = 20
    prompt: str = ""
    negative_prompt: str = ""
    guidance: float = 7.5
    scheduler: Scheduler = "default"

    def check(self) -> str | None:
        if self.threshold < 0:
            return f"threshold must be a seam score >= 0, got {self.threshold}"
        if not 4 <= self.width <= 1024 or self.width % 2:
            return f"width must be an even number of pixels in 4..1024, got {self.width}"
        if not 0 < self.strength <= 1:
            return f"strength must be in (0, 1], got {self.strength}"
        if not 1 <= self.steps <= 1000:
            return f"steps must be in 1..1000, got {self.steps}"
        if self.model and int(self.steps * self.strength) < 1:
            return (f"strength {self.strength:g} x steps {self.steps} runs no denoising step; "
                    f"use at least {int(1 / self.strength) + 1} steps")
        if self.guidance < 0:
            return f"guidance must be >= 0, got {self.guidance}"
        return None


class SeamfixStage(Stage):
    """Pixels -> pixels of the same size; only the strips of the seams it repairs change."""

    type = "seamfix"
    Config = SeamfixConfig
    repairs_seams = True  # the pipeline passes stream() a SeamJob (``seams=``)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def grid(self, height: int, width: int):
        return None

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        from ..memory import band_bytes

        strip = 4 * channels * self.config.width * max(height, width) * 4  # strips crossing a band, their renders
        tile = self._renderer().memory_estimate(self.config.width, self.tiling.tile, 3)["tile"] if \
            self.config.model else 0
        return {"tile": tile, "canvas": 4 * band_bytes(width, channels, height) + strip}

    def describe(self) -> str:
        c = self.config
        how = f"img2img {c.model} at strength {c.strength:g}" if c.model else "pixel tone matching"
        return f"seamfix (threshold {c.threshold:g}, {c.width} px strips, {how})"

    def _renderer(self):
        """The img2img stage the strips are re-rendered with (not loaded)."""
        if getattr(self, "_img2img", None) is None:
            from .img2img import Img2ImgConfig, Img2ImgStage

            c = self.config
            cfg = Img2ImgConfig(model=c.model, prompt=c.prompt, negative_prompt=c.negative_prompt, steps=c.steps,
                                guidance=c.guidance, strength=c.strength, scheduler=c.scheduler, mode="independent")
            self._img2img = Img2ImgStage(cfg, self.tiling, self.runtime)
        return self._img2img

    def missing_models(self) -> list[str]:
        return self._renderer().missing_models() if self.config.model else []

    def load(self) -> None:
        if self.config.model:
            r = self._renderer()
            r.runtime = self.runtime
            r.load()

    def stream(self, src, report, source=None, start: int = 0, seams: Any = None):
        """The bands of ``src`` from row ``start``, the strips of ``seams`` (a
        :class:`~tiledsr.seams.SeamJob`) scoring above the threshold repaired; ``seams.repaired``
        is set to their indices. Without seams the input is handed on unchanged."""
        from ..resample import band_rows

        h, w, c = src.shape
        todo = self.select(seams) if seams is not None else []
        if seams is not None:
            seams.repaired = tuple(todo)
        render = self._render if self.config.model and todo else None
        fix = _Repair(src, [seams.seams[i] for i in todo], seams.reference if todo else None,
                      self.config.width // 2, render, self.render_multiple() if render else 1)
        rows = band_rows(w, c)
        done = -(-start // rows)
        total = done + -(-(h - start) // rows)
        for i, y in enumerate(range(start, h, rows), done + 1):
            band = fix.band(y, min(h, y + rows))
            report(i, total)
            yield band

    def select(self, seams: Any) -> list[int]:
        """Indices of the seams of a :class:`~tiledsr.seams.SeamJob` this stage repairs."""
        return seams.above(self.config.threshold)

    def _render(self, crop: np.ndarray, at: tuple[int, int]) -> np.ndarray | None:
        """(h, w, C) float32 -> the same re-rendered by img2img at ``at`` (y, x); None when a side is
        not a multiple of the model's."""
        st = self._renderer()
        m = st.factor * st.unet_multiple
        if crop.shape[0] % m or crop.shape[1] % m:
            return None
        c = crop.shape[2]
        rgb = crop if c == 3 else np.repeat(crop[:, :, :1], 3, axis=2)
        out = st.independent_tiles(np.ascontiguousarray(rgb[None], dtype=np.float32), [at])[0]
        return out if c == 3 else out.mean(axis=2, keepdims=True)

    def render_multiple(self) -> int:
        """Pixels the sides of a re-rendered rectangle are multiples of (1 without a model)."""
        if not self.config.model:
            return 1
        st = self._renderer()
        return st.factor * st.unet_multiple


# --- the repair ----------------------------------------------------------------------------------

def _smooth(values: np.ndarray, lo: int, hi: int, first: int, n: int) -> np.ndarray:
    """The gaussian-smoothed rows ``first .. first + n`` of ``values`` (rows ``lo .. hi`` of a strip,
    clamped at its ends): a fixed sum of shifted slices, so the result for a row never depends on
    which rows were computed with it."""
    out = np.zeros((n, *values.shape[1:]), np.float32)
    idx = np.arange(first, first + n)
    for k, g in enumerate(_TAPS):
        out += g * values[np.clip(idx + k - _R, lo, hi - 1) - lo]
    return out


def _across(pos: int, q0: int, q1: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """For pixels ``q0 .. q1`` across a seam at ``pos``: the feather weight (1 - distance / half, in
    (0, 1]) and the side (+1 before the seam, -1 after)."""
    q = np.arange(q0, q1)
    k = np.where(q < pos, pos - 1 - q, q - pos)
    return np.maximum(0.0, (half - k - 0.5) / half).astype(np.float32), np.where(q < pos, 1.0, -1.0).astype(
        np.float32)


def _along(start: int, stop: int, u0: int, u1: int, half: int) -> np.ndarray:
    """Weight along a seam spanning ``start:stop`` for positions ``u0 .. u1``: 1 on the span, falling to
    0 ``half`` px beyond its ends."""
    u = np.arange(u0, u1)
    return np.clip(np.minimum(u - (start - half) + 0.5, (stop + half) - u - 0.5) / half, 0, 1).astype(np.float32)


def _jump(win: np.ndarray, at: int) -> np.ndarray:
    """Signed step across the line before row ``at`` of ``win`` (rows, L, C) less the mean step on the
    lines 1-3 rows either side (the gradient it should continue): (L, C)."""
    step = win[at] - win[at - 1]
    parts = [win[at + k] - win[at + k - 1] for k in GRADIENT_LINES if at + k < len(win)]
    parts += [win[at - k] - win[at - k - 1] for k in GRADIENT_LINES if at - k - 1 >= 0]
    return step - (np.mean(parts, axis=0, dtype=np.float32) if parts else 0)


def _shrunk(jump: np.ndarray, natural: np.ndarray | None) -> np.ndarray:
    """``jump`` with the input's natural step taken off its size (never changing its sign)."""
    if natural is None:
        return jump
    return np.sign(jump) * np.maximum(0, np.abs(jump) - natural)


class _Repair:
    """The repaired rows of ``src``: tone corrections (and renders) of ``seams``, in their order."""

    def __init__(self, src, seams, reference, half: int, render=None, multiple: int = 1):
        self.src, self.seams, self.reference, self.half, self.render = src, list(seams), reference, half, render
        self.multiple = multiple
        h, w, c = src.shape
        self.colour = c - 1 if c in (2, 4) else c
        self.strips = [s.strip(half, h, w) for s in self.seams]
        self._h_jumps: dict[int, np.ndarray] = {}  # horizontal seam -> its smoothed jump over the strip's columns
        self._renders: dict[int, tuple[tuple[int, int, int, int], np.ndarray | None]] = {}

    def band(self, y0: int, y1: int) -> np.ndarray:
        """Output rows ``y0:y1``: float32 (y1 - y0, W, C) in [0, 1]."""
        band = np.array(self.src.read(y0, y1), dtype=np.float32)
        live = [i for i, (a, b, _, _) in enumerate(self.strips) if a < y1 and b > y0]
        if not live:
            return band
        self._tone(band, y0, 0, live)
        if self.render is not None:
            for i in live:
                self._blend(band, y0, i)
        np.clip(band, 0.0, 1.0, out=band)
        for i in list(self._h_jumps):
            if self.strips[i][1] <= y1:
                del self._h_jumps[i]
        for i in list(self._renders):
            if self.strips[i][1] <= y1:
                del self._renders[i]
        return band

    def _tone(self, region: np.ndarray, y0: int, x0: int, which) -> None:
        """Add the tone corrections of seams ``which`` to ``region`` (its top-left pixel at (y0, x0))."""
        y1, x1 = y0 + region.shape[0], x0 + region.shape[1]
        cc, ext = self.colour, None
        for i in which:
            a, b, c, d = self.strips[i]
            ra, rb, ca, cb = max(a, y0), min(b, y1), max(c, x0), min(d, x1)
            if ra >= rb or ca >= cb:
                continue
            s = self.seams[i]
            if s.axis == "h":
                jump = self._h_jump(i)[ca - c:cb - c]  # (cols, C)
                f, side = _across(s.pos, ra, rb, self.half)
                wu = _along(s.start, s.stop, ca, cb, self.half)
                corr = (0.5 * f * side)[:, None, None] * (wu[:, None] * jump)[None]
            else:
                if ext is None:
                    ext = self._rows(y0, y1)
                jump = self._v_jump(i, ra, rb, ext)  # (rows, C)
                f, side = _across(s.pos, ca, cb, self.half)
                wu = _along(s.start, s.stop, ra, rb, self.half)
                corr = (wu[:, None] * jump)[:, None, :] * (0.5 * f * side)[None, :, None]
            region[ra - y0:rb - y0, ca - x0:cb - x0, :cc] += corr

    def _rows(self, y0: int, y1: int):
        """Source rows ``y0 - R - 1 .. y1 + R + 1`` (clipped), what the vertical jumps of rows y0:y1 read,
        with the reference rows under them."""
        h = self.src.shape[0]
        e0, e1 = max(0, y0 - _R - 1), min(h, y1 + _R + 1)
        ref = None
        if self.reference is not None:
            from ..seams import _under

            under = _under(e1 - e0, h, self.reference.shape[0], e0)
            ref = np.asarray(self.reference.read(int(under[0]), int(under[-1]) + 1), dtype=np.float32)
        return e0, np.asarray(self.src.read(e0, e1), dtype=np.float32), ref

    def _h_jump(self, i: int) -> np.ndarray:
        """Smoothed jump of horizontal seam ``i`` over its strip's columns: (cols, C)."""
        if i not in self._h_jumps:
            from ..seams import natural_rows

            s, (_, _, c, d) = self.seams[i], self.strips[i]
            h, w, _ = self.src.shape
            lo, hi = max(0, s.pos - GRADIENT_LINES[-1] - 1), min(h, s.pos + GRADIENT_LINES[-1])
            win = np.asarray(self.src.read(lo, hi, c, d), dtype=np.float32)[:, :, :self.colour]
            natural = natural_rows(self.reference, s.pos, h, w)
            jump = _shrunk(_jump(win, s.pos - lo), None if natural is None else natural[c:d, :self.colour])
            self._h_jumps[i] = _smooth(jump, 0, d - c, 0, d - c)
        return self._h_jumps[i]

    def _v_jump(self, i: int, ra: int, rb: int, ext) -> np.ndarray:
        """Smoothed jump of vertical seam ``i`` for rows ``ra:rb`` (from ``ext``, :meth:`_rows`): (rows, C)."""
        from ..seams import natural_cols

        e0, rows, ref = ext
        s, (a, b, _, _) = self.seams[i], self.strips[i]
        h, w, _ = self.src.shape
        lo, hi = max(0, s.pos - GRADIENT_LINES[-1] - 1), min(w, s.pos + GRADIENT_LINES[-1])
        g0, g1 = max(a, ra - _R), min(b, rb + _R)  # the strip's rows the smoothing reads
        win = rows[g0 - e0:g1 - e0, lo:hi, :self.colour].transpose(1, 0, 2)
        natural = None
        if ref is not None:
            from ..seams import _under

            first = int(_under(1, h, self.reference.shape[0], e0)[0])
            sub = ref[int(_under(1, h, self.reference.shape[0], g0)[0]) - first:]
            natural = natural_cols(self.reference, s.pos, g0, g1, h, w, sub)
        raw = _shrunk(_jump(win, s.pos - lo), None if natural is None else natural[:, :self.colour])
        return _smooth(raw, g0, g1, ra, rb - ra)

    def _blend(self, band: np.ndarray, y0: int, i: int) -> None:
        """Blend seam ``i``'s re-rendered rectangle into ``band`` over its strip."""
        box, out = self._rendered(i)
        if out is None:
            return
        a, b, c, d = self.strips[i]
        y1 = y0 + band.shape[0]
        ra, rb = max(a, y0), min(b, y1)
        if ra >= rb:
            return
        s, (ry, rx, _, _) = self.seams[i], box
        if s.axis == "h":
            f, _ = _across(s.pos, ra, rb, self.half)
            wgt = f[:, None] * _along(s.start, s.stop, c, d, self.half)[None]
        else:
            f, _ = _across(s.pos, c, d, self.half)
            wgt = _along(s.start, s.stop, ra, rb, self.half)[:, None] * f[None]
        part = band[ra - y0:rb - y0, c:d, :self.colour]
        part += wgt[:, :, None] * (out[ra - ry:rb - ry, c - rx:d - rx] - part)

    def _rendered(self, i: int):
        """((y, x, h, w) of seam ``i``'s render rectangle, its re-rendered pixels or None)."""
        if i in self._renders:
            return self._renders[i]
        a, b, c, d = self.strips[i]
        h, w, _ = self.src.shape
        m = self.multiple
        ry, rh = _fit(a, b, m, h)
        rx, rw = _fit(c, d, m, w)
        out = None
        if rh and rw:
            crop = np.array(self.src.read(ry, ry + rh, rx, rx + rw), dtype=np.float32)
            self._tone(crop, ry, rx, range(len(self.seams)))
            np.clip(crop, 0.0, 1.0, out=crop)
            out = self.render(crop[:, :, :self.colour], (ry, rx))
        self._renders[i] = ((ry, rx, rh, rw), out)
        return self._renders[i]


def _fit(a: int, b: int, m: int, length: int) -> tuple[int, int]:
    """(start, size) of the span ``a:b`` grown to a multiple of ``m`` around its centre and shifted
    inside ``0:length``; size 0 when ``length`` is shorter than one multiple."""
    size = -(-(b - a) // m) * m
    if size > length:
        size = length // m * m
        if size < b - a:
            return 0, 0
    start = min(max(0, (a + b - size) // 2), length - size)
    return start, size
