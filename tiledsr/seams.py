"""Seam scores: how visible each tile boundary of a tiled stage is, measured as its rows pass.

A *seam* is one interior edge of the stage's tile grid (:func:`seam_lines`): a horizontal line
between rows ``pos - 1`` and ``pos`` (or a vertical one between columns), over the span of one
tile along it. With overlap every neighbour pair has two such lines, the start of one tile and
the end of the other.

The score of a seam, per channel, over its span (for a horizontal seam at row Y, column x; a
vertical one is the same with rows and columns swapped):

- ``step(x) = |o[Y, x] - o[Y-1, x]|``, the step across the seam in the stage's output ``o``;
- ``texture(x)``: the median step across the parallel lines 3, 4, 5 and 6 px away on either side
  (for a stage with a whole scale s >= 2, the lines s, 2s, ... px away up to 8 px, which sit where
  the seam sits relative to the input's pixels: :func:`offsets`);
- ``beside(x)``: the larger step on the two lines next to the seam (content that runs along it);
- the input's evidence (:func:`_evidence`), on the input line nearest ``Y / scale``: positions
  where the input has an edge of its own (a step on that line or the ones either side, or across
  all three, above 2 x the input's texture + 2 levels) are left out, since the edge explains the
  output's step; and ``ratio``, how much the input's line stands out from its own texture lines
  (median over median, at least 1);
- ``score = max(0, median(step - max(texture * ratio, beside))) / (median(texture) + 1/255)`` over
  the positions kept, the largest over the channels; 0 when fewer than a quarter are kept.

Units: a multiple of the local texture step (the step beyond what the content explains, in pixel
values of [0, 1], over the typical step beside the seam plus one 8-bit level); dimensionless. 0
means no seam; on a flat area a seam that adds n 8-bit levels scores about n. Calibration
(docs/seams.md, ``tests/benchmarks/bench_seams.py``): exactly 0 on a constant image; at most 0.85
on 5856 lines of untiled x4 outputs of six photo crops (99th percentile 0.08); tiles computed
without context worst 1.7-4.2, median 0.4-0.9; tiles shifted by +-0.01 in tone (2.5 levels)
worst 2.9-3.5. Without an input (a source stage) nothing is left out and ``ratio`` is 1.

:class:`SeamMeter` measures the seams of an image handed on as consecutive row bands, keeping only
the 14 rows around each horizontal seam line while they pass and, for vertical lines, one value
a few values per row and channel of each seam not yet complete: memory follows the tile, not the
image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Optional, Sequence

import numpy as np

__all__ = ["FLOOR", "Seam", "SeamJob", "SeamMeter", "SeamReport", "SeamScore", "as_dicts", "measure_store",
           "natural_cols", "natural_rows", "report_line", "rescaled", "seam_lines"]

OFFSETS = (3, 4, 5, 6)  # output px either side of a seam: the parallel lines its texture is measured on
FLOOR = 1 / 255  # added to the texture: one 8-bit level


@dataclass(frozen=True)
class Seam:
    """One interior tile edge of an image: ``axis`` "h" (the line between rows ``pos - 1`` and
    ``pos``, over columns ``start:stop``) or "v" (between columns ``pos - 1`` and ``pos``, over rows
    ``start:stop``); in pixels of the image measured."""

    axis: Literal["h", "v"]
    pos: int
    start: int
    stop: int

    def strip(self, half: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1): the pixels less than ``half`` px from the seam (L-infinity), clipped."""
        a, b = max(0, self.pos - half), self.pos + half
        c, d = max(0, self.start - half), self.stop + half
        if self.axis == "h":
            return a, min(height, b), c, min(width, d)
        return c, min(height, d), a, min(width, b)


@dataclass(frozen=True)
class SeamScore:
    """A seam and its score (see the module's docstring; None when it could not be measured)."""

    seam: Seam
    score: Optional[float]


def _edges(starts: Sequence[int], sizes: Sequence[int], length: int) -> list[int]:
    """Interior tile edges along one axis: every tile start and end that is not the canvas border."""
    return sorted({e for s, n in zip(starts, sizes) for e in (s, s + n) if 0 < e < length})


def _spans(starts: Sequence[int], sizes: Sequence[int], length: int) -> list[tuple[int, int]]:
    """Each tile's share of the axis: cut at the middle of every overlap."""
    cuts = [0] + [(starts[j - 1] + sizes[j - 1] + starts[j]) // 2 for j in range(1, len(starts))] + [length]
    return [(cuts[j], cuts[j + 1]) for j in range(len(starts)) if cuts[j] < cuts[j + 1]]


def seam_lines(grid: Any, height: int, width: int) -> tuple[Seam, ...]:
    """The seams of a :class:`~tiledsr.tiling.TileGrid` over an image of (height, width): horizontal
    ones first, top to bottom, then vertical ones, left to right. A grid laid over a canvas of another
    size (an sr stage resized after its network) is scaled to the image; None has no seams."""
    if grid is None:
        return ()
    fy, fx = height / grid.height, width / grid.width

    def scaled(values, f, limit):
        return [min(limit, round(v * f)) for v in values]

    hs, ws = grid.row_heights, grid.col_widths
    rows = [p for p in scaled(_edges(grid.ys, hs, grid.height), fy, height) if 0 < p < height]
    cols = [p for p in scaled(_edges(grid.xs, ws, grid.width), fx, width) if 0 < p < width]
    xspans = [tuple(scaled(s, fx, width)) for s in _spans(grid.xs, ws, grid.width)]
    yspans = [tuple(scaled(s, fy, height)) for s in _spans(grid.ys, hs, grid.height)]
    out = [Seam("h", y, a, b) for y in dict.fromkeys(rows) for a, b in xspans if a < b]
    out += [Seam("v", x, a, b) for x in dict.fromkeys(cols) for a, b in yspans if a < b]
    return tuple(out)


def rescaled(seams: Sequence[Seam], size: tuple[int, int], to: tuple[int, int]) -> tuple[Seam, ...]:
    """``seams`` of an image of ``size`` (H, W) moved to an image of ``to`` (a stage resized it);
    seams that fall on the border are dropped."""
    fy, fx = to[0] / size[0], to[1] / size[1]
    out = []
    for s in seams:
        fp, fa = (fy, fx) if s.axis == "h" else (fx, fy)
        limit, along = (to[0], to[1]) if s.axis == "h" else (to[1], to[0])
        pos, a, b = round(s.pos * fp), min(along, round(s.start * fa)), min(along, round(s.stop * fa))
        if 0 < pos < limit and a < b:
            out.append(Seam(s.axis, pos, a, b))
    return tuple(out)


# --- the statistic -------------------------------------------------------------------------------

def offsets(scale: float | None) -> tuple[int, ...]:
    """Output px from a seam of the parallel lines its texture is measured on: 3-6, or for a stage
    with a whole scale s >= 2 the multiples of s from 3 to max(8, s) px (lines in the same place
    relative to the input's pixels, whose boundaries an upscaler may leave a faint step on)."""
    if scale is None or scale < 2 or abs(scale - round(scale)) > 1e-6:
        return OFFSETS
    s = int(round(scale))
    return tuple(k for k in range(s, max(8, s) + 1, s) if k >= 3)


def _steps(win: np.ndarray, at: int, offs: Sequence[int] = OFFSETS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, texture, beside) of the line before row ``at`` of ``win`` (rows, L, C): (L, C) float32
    each; ``beside``: the larger step on the two lines next to it (content running along the line)."""
    step = np.abs(win[at] - win[at - 1])
    near = [np.abs(win[j] - win[j - 1]) for j in (at - 1, at + 1) if 1 <= j < len(win)]
    beside = np.max(np.stack(near), axis=0) if near else np.zeros_like(step)
    texture = np.median(_texture_steps(win, at, offs), axis=0).astype(np.float32)
    return step, texture, beside


def _texture_steps(win: np.ndarray, at: int, offs: Sequence[int] = OFFSETS) -> np.ndarray:
    """The steps across the lines ``offs`` rows either side of the line before row ``at`` of ``win``
    (rows, L, C): (lines, L, C); one line of zeros when none fits."""
    parts = []
    for k in offs:
        if at + k < len(win):
            parts.append(np.abs(win[at + k] - win[at + k - 1]))
        if at - k - 1 >= 0:
            parts.append(np.abs(win[at - k] - win[at - k - 1]))
    return np.stack(parts) if parts else np.zeros((1, *win.shape[1:]), np.float32)


def _natural(win: np.ndarray, at: int, scale: float) -> np.ndarray:
    """The input's own edge at the line before row ``at`` of ``win`` (rows, L, C): the largest step on
    that line and the ones either side of it (an upscaler may sharpen an edge a pixel off the line
    onto it), less the input's texture in output units (its median step on the lines 3-6 px either
    side, over the scale), clamped at 0: (L, C). What ``seamfix`` keeps of a jump."""
    near = [np.abs(win[j] - win[j - 1]) for j in (at - 1, at, at + 1) if 1 <= j < len(win)]
    edge = np.max(np.stack(near), axis=0)
    texture = np.median(_texture_steps(win, at), axis=0).astype(np.float32)
    return np.maximum(edge - texture / np.float32(max(1.0, scale)), 0, dtype=np.float32)


EDGE = 2.0  # an input step above EDGE x the input's texture (+ 2 levels) is an edge of its own
MIN_KEPT = 0.25  # a seam with fewer positions free of input edges is not scored (0)


def _evidence(win: np.ndarray, at: int, scale: float = 1.0) -> np.ndarray:
    """What the input says about the line before row ``at`` of ``win`` (rows, L, C): (L, 2C + 1)
    float32, per position its step on the line (C), its texture (the median step on the lines 3-6
    px either side, C) and 1 where it has an edge of its own there (a step on the line or the
    lines either side of it, or across all three, above ``EDGE`` x its texture + 2 levels), else 0."""
    n = len(win)
    texture = np.median(_texture_steps(win, at), axis=0).astype(np.float32)
    line = np.abs(win[at] - win[at - 1])
    near = np.max(np.stack([np.abs(win[j] - win[j - 1]) for j in (at - 1, at, at + 1) if 1 <= j < n]), axis=0)
    across = np.abs(win[min(n - 1, at + 1)] - win[max(0, at - 2)])
    bar = EDGE * texture + 2 * FLOOR
    edge = ((near > bar) | (across > bar)).any(axis=-1)
    return np.concatenate([line, texture, edge[:, None].astype(np.float32)], axis=-1)


def _input_line(pos: int, out_len: int, in_len: int) -> int:
    """The input line (between input pixels ``Yi - 1`` and ``Yi``) nearest output line ``pos``."""
    return int(round(pos * in_len / out_len))


def _under(n: int, out_len: int, in_len: int, first: int = 0) -> np.ndarray:
    """Input index under each of output pixels ``first .. first + n - 1``."""
    idx = (np.arange(first, first + n) + 0.5) * (in_len / out_len)
    return np.minimum(idx.astype(np.int64), in_len - 1)


def _along_rows(reference: Any, pos: int, height: int, width: int, term) -> np.ndarray | None:
    """``term(window, at, scale)`` of the input line nearest the horizontal output line ``pos`` of an
    image of (height, width), per output column: (width, ...); None without a reference or where
    the line falls outside it."""
    if reference is None:
        return None
    h, w, _ = reference.shape
    yi = _input_line(pos, height, h)
    if not 0 < yi < h:
        return None
    reach = OFFSETS[-1] + 1
    y0, y1 = max(0, yi - reach), min(h, yi + reach)
    win = np.asarray(reference.read(y0, y1), dtype=np.float32)
    return term(win, yi - y0, height / h)[_under(width, width, w)]


def _along_cols(reference: Any, pos: int, y0: int, y1: int, height: int, width: int, rows, term):
    """``term`` of the input line nearest the vertical output line ``pos``, for output rows ``y0:y1``:
    (y1 - y0, ...). ``rows``: the reference rows under them already read (from ``_under(...)[0]``)."""
    if reference is None:
        return None
    h, w, _ = reference.shape
    xi = _input_line(pos, width, w)
    if not 0 < xi < w:
        return None
    under = _under(y1 - y0, height, h, y0)
    if rows is None:
        rows = np.asarray(reference.read(int(under[0]), int(under[-1]) + 1), dtype=np.float32)
    reach = OFFSETS[-1] + 1
    x0, x1 = max(0, xi - reach), min(w, xi + reach)
    per_row = term(rows[:, x0:x1].transpose(1, 0, 2), xi - x0, width / w)  # columns as rows
    return per_row[under - under[0]]


def natural_rows(reference: Any, pos: int, height: int, width: int) -> np.ndarray | None:
    """``seamfix``'s natural edge (:func:`_natural`) of the horizontal line ``pos`` of an image of
    (height, width), from the input store ``reference``: (width, C) float32, or None."""
    return _along_rows(reference, pos, height, width, _natural)


def natural_cols(reference: Any, pos: int, y0: int, y1: int, height: int, width: int,
                 rows: np.ndarray | None = None) -> np.ndarray | None:
    """The natural edge of the vertical line ``pos`` for output rows ``y0:y1``: (y1 - y0, C) float32.
    ``rows``: the reference rows under them already read (input rows from ``_under(...)[0]`` on)."""
    return _along_cols(reference, pos, y0, y1, height, width, rows, _natural)


def _score(step: np.ndarray, texture: np.ndarray, beside: np.ndarray, evidence: np.ndarray | None) -> float:
    """The score of one seam from its (L, C) ``step``, ``texture`` and ``beside`` (:func:`_steps`) and
    the input's (L, 2C + 1) ``evidence`` (:func:`_evidence`; None without an input)."""
    ratio = np.float32(1)
    if evidence is not None:
        c = step.shape[1]
        keep = evidence[:, 2 * c] == 0
        if not keep.any() or keep.mean() < MIN_KEPT:
            return 0.0
        step, texture, beside, evidence = step[keep], texture[keep], beside[keep], evidence[keep]
        line = np.median(evidence[:, :c], axis=0)
        around = np.maximum(np.median(evidence[:, c:2 * c], axis=0), np.float32(FLOOR / 4))
        ratio = np.maximum(np.float32(1), line / around)  # the input's line stands out by this much
    num = np.median(step - np.maximum(texture * ratio, beside), axis=0)
    den = np.median(texture, axis=0) + np.float32(FLOOR)
    return float(max(0.0, float(np.max(num / den))))


# --- the meter -----------------------------------------------------------------------------------

def _as_float(band: np.ndarray) -> np.ndarray:
    if band.dtype == np.uint8:
        return band.astype(np.float32) / np.float32(255)
    if band.dtype == np.uint16:
        return band.astype(np.float32) / np.float32(65535)
    return np.asarray(band, dtype=np.float32)


class SeamMeter:
    """Scores ``seams`` of an image of ``shape`` (H, W, C) whose rows arrive as consecutive bands
    from row 0 (:meth:`feed`, or :meth:`watch` on a band iterator); ``reference``: the stage's input
    as a store (``read(y0, y1)``), or None; ``scale`` (y, x): the stage's scale, which sets the
    texture lines (:func:`offsets`; default: the output's size over the reference's, else unknown).
    Bands may be float in [0, 1] or uint8/uint16."""

    def __init__(self, seams: Sequence[Seam], shape: tuple[int, int, int], reference: Any = None,
                 scale: tuple[float, float] | None = None):
        self.seams, self.shape = tuple(seams), tuple(shape)
        if reference is not None and scale is None:
            scale = (shape[0] / reference.shape[0], shape[1] / reference.shape[1])
        if reference is not None and tuple(reference.shape[2:]) != self.shape[2:]:
            reference = None  # another channel count: no natural edges to compare with
        self.reference = reference
        self._offs = (offsets(scale[0]), offsets(scale[1])) if scale is not None else (OFFSETS, OFFSETS)
        self.scores: list[Optional[float]] = [None] * len(self.seams)
        self.y = 0
        h_at: dict[int, list[int]] = {}
        v_at: dict[int, list[int]] = {}
        for i, s in enumerate(self.seams):
            (h_at if s.axis == "h" else v_at).setdefault(s.pos, []).append(i)
        self._h = h_at  # line -> its seams
        self._v = v_at
        self._rows: dict[int, list[np.ndarray]] = {}  # horizontal line -> rows of its window so far
        self._cols: dict[int, list[tuple]] = {}  # vertical seam -> its (step, texture, beside, evidence) parts

    def watch(self, bands: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """``bands``, unchanged, each measured as it passes."""
        for band in bands:
            self.feed(band)
            yield band

    def feed(self, band: np.ndarray) -> None:
        """The next rows of the image."""
        if not len(band):
            return
        band = _as_float(band)
        a, b = self.y, self.y + len(band)
        self._feed_rows(band, a, b)
        if self._v:
            self._feed_cols(band, a, b)
        self.y = b

    def _feed_rows(self, band: np.ndarray, a: int, b: int) -> None:
        height, width, _ = self.shape
        for pos, members in self._h.items():
            reach = self._offs[0][-1] + 1
            lo, hi = max(0, pos - reach), min(height, pos + reach)
            if b <= lo or a >= hi or self.scores[members[0]] is not None:
                continue
            self._rows.setdefault(pos, []).append(band[max(lo, a) - a: min(hi, b) - a].copy())
            if b >= hi:
                win = np.concatenate(self._rows.pop(pos), axis=0)
                step, texture, beside = _steps(win, pos - lo, self._offs[0])
                evidence = _along_rows(self.reference, pos, height, width, _evidence)
                for i in members:
                    s = self.seams[i]
                    self.scores[i] = _score(step[s.start:s.stop], texture[s.start:s.stop], beside[s.start:s.stop],
                                            None if evidence is None else evidence[s.start:s.stop])

    def _feed_cols(self, band: np.ndarray, a: int, b: int) -> None:
        height, width, _ = self.shape
        rows = None
        if self.reference is not None:
            h = self.reference.shape[0]
            under = _under(b - a, height, h, a)
            rows = np.asarray(self.reference.read(int(under[0]), int(under[-1]) + 1), dtype=np.float32)
        for pos, members in self._v.items():
            live = [i for i in members if self.seams[i].start < b and self.seams[i].stop > a]
            if not live:
                continue
            reach = self._offs[1][-1] + 1
            lo, hi = max(0, pos - reach), min(width, pos + reach)
            win = band[:, lo:hi].transpose(1, 0, 2)  # columns as rows: (cols, band rows, C)
            step, texture, beside = _steps(win, pos - lo, self._offs[1])
            evidence = _along_cols(self.reference, pos, a, b, height, width, rows, _evidence)
            for i in live:
                s = self.seams[i]
                c0, c1 = max(s.start, a) - a, min(s.stop, b) - a
                self._cols.setdefault(i, []).append(
                    (step[c0:c1], texture[c0:c1], beside[c0:c1], None if evidence is None else evidence[c0:c1]))
                if b >= s.stop:
                    *parts, said = zip(*self._cols.pop(i))
                    self.scores[i] = _score(*map(np.concatenate, parts),
                                            None if said[0] is None else np.concatenate(said))

    def result(self) -> tuple[SeamScore, ...]:
        """Every seam with its score (None for one whose rows have not all passed)."""
        return tuple(SeamScore(s, v) for s, v in zip(self.seams, self.scores))


def measure_store(store: Any, seams: Sequence[Seam], reference: Any = None, rows: int = 256) -> tuple[SeamScore, ...]:
    """The scores of ``seams`` of the image in ``store`` (read by bands of ``rows``)."""
    meter = SeamMeter(seams, store.shape, reference)
    h = store.shape[0]
    for y in range(0, h, rows):
        meter.feed(store.read(y, min(h, y + rows)))
    return meter.result()


# --- what a run reports --------------------------------------------------------------------------

@dataclass
class SeamJob:
    """What the pipeline hands a seam-repairing stage: the ``seams`` of its input (in its pixels)
    with their ``scores``, the ``reference`` the scores were measured against (a store or None); the
    stage sets ``repaired`` to the indices of the seams it re-rendered."""

    seams: tuple[Seam, ...]
    scores: tuple[Optional[float], ...]
    reference: Any = None
    repaired: tuple[int, ...] = ()

    def above(self, threshold: float) -> list[int]:
        """Indices of the seams scoring above ``threshold``."""
        return [i for i, v in enumerate(self.scores) if v is not None and v > threshold]


def _median(values: Sequence[float]) -> Optional[float]:
    return float(np.median(values)) if len(values) else None


@dataclass(frozen=True)
class SeamReport:
    """The seams of one stage after a run: ``scores`` (a :class:`SeamScore` per seam of its tile grid,
    measured on its output); for a seam-repairing stage also ``repaired`` (how many seams it
    re-rendered) and ``before`` (the scores of its input at the same seams)."""

    stage: str
    stage_index: int
    scores: tuple[SeamScore, ...]
    repaired: Optional[int] = None
    before: tuple[SeamScore, ...] = field(default=())

    @staticmethod
    def _values(scores) -> list[float]:
        return [s.score for s in scores if s.score is not None]

    @property
    def count(self) -> int:
        """Seams measured."""
        return len(self._values(self.scores))

    @property
    def worst(self) -> Optional[float]:
        """The largest score (None when no seam was measured)."""
        v = self._values(self.scores)
        return max(v) if v else None

    @property
    def median(self) -> Optional[float]:
        return _median(self._values(self.scores))

    def to_dict(self) -> dict:
        """``{"stage", "stage_index", "worst", "median", "count"}``, plus ``repaired``,
        ``worst_before`` and ``median_before`` for a seam-repairing stage; scores rounded to 4 places."""
        def r(v):
            return None if v is None else round(v, 4)

        d = {"stage": self.stage, "stage_index": self.stage_index, "worst": r(self.worst), "median": r(self.median),
             "count": self.count}
        if self.repaired is not None:
            before = self._values(self.before)
            d.update(repaired=self.repaired, worst_before=r(max(before) if before else None),
                     median_before=r(_median(before)))
        return d


def as_dicts(reports: Iterable[SeamReport]) -> list[dict]:
    """:meth:`SeamReport.to_dict` of each report."""
    return [r.to_dict() for r in reports]


def report_line(d: dict) -> str:
    """One plan-style line for a report's dict: ``seams: stage 1 sr: worst 0.12, median 0.03 over 24 seams``."""
    head = f"seams: stage {d['stage_index'] + 1} {d['stage']}: "
    n = d.get("count", 0)
    body = (f"worst {d['worst']:.2f}, median {d['median']:.2f} over {n} seam{'s' if n != 1 else ''}"
            if n and d.get("worst") is not None else "no seams measured")
    if d.get("repaired") is not None:
        before = d.get("worst_before")
        body += f"; repaired {d['repaired']}" + (f" (worst before {before:.2f})" if before is not None else "")
    return head + body
