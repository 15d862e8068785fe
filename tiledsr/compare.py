"""A picture to compare (``tiledsr upscale ... --compare CMP.png``): side-by-side crops of the
input enlarged with Lanczos and of the output, 1:1, at the regions with the most detail.

1. Detail: the input is read by row bands (never whole where :func:`~tiledsr.io.open_rows`
   streams it); each band's luminance (times alpha, if any) gives a per-pixel gradient
   magnitude |dI/dx| + |dI/dy|, averaged into a map of at most :data:`GRID` cells a side.
2. Regions: every window of ``crop`` x ``crop`` output pixels (fewer where the output is
   smaller, so an output that fits in one crop is one region, the whole image) is scored by
   the detail under it; the best windows that do not overlap are taken greedily, most
   detailed first, ties going to the window with more detail in its central half, then to
   the one nearest the image's centre, then to the top-left: deterministic. Where that fits
   fewer than ``regions``, windows on a lattice of crop steps are tried too (an output of
   2 x 2 crops shows 3 regions, not the one best window across its middle). Input and output
   are mapped with the true ratios ``W_out / W_in`` and ``H_out / H_in`` (they need not be
   whole numbers, nor equal).
3. Crops: the output region is shown 1:1 (its rows are read top to bottom, one crop band at
   a time, so memory follows ``crop`` x the output's width, not its area). The input under
   it is enlarged with Pillow's Lanczos to exactly the output crop's size, at the true,
   possibly fractional, box ``(x W_in/W_out, y H_in/H_out, (x+w) W_in/W_out, (y+h)
   H_in/H_out)``, in float (mode "F", at the input's full depth, colour premultiplied by
   alpha; only the input rows and columns the kernels reach are read). The output is shown
   as 8 bits: 16-bit values v as round(v / 257), float values f as round(255 f). Grey is
   shown as grey RGB; alpha is composited over a grey checkerboard of :data:`CHECKER`-pixel
   squares (the same squares on both halves). The output crop is never downscaled: a crop
   is ``crop`` output pixels (at most :data:`MAX_CROP`). Crops under :data:`MIN_SHOWN`
   pixels are enlarged by a whole factor (nearest neighbour, both halves alike, at most
   :data:`MAX_ZOOM`, the long side at most :data:`MAX_CROP`), see :func:`layout`.
4. Picture: one row per region, [input, Lanczos | output], each half under a label band of
   :data:`BAND` pixels (Pillow's default font: the half's label, then the scale and the
   region's place in output pixels for the input half, its size and zoom for the output
   half), halves and rows parted by :data:`SEP`-pixel light lines; an 8-bit RGB PNG written
   atomically through :func:`tiledsr.io.write_bands`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import InputError
from .io import DEFAULT_MAX_PIXELS, check_output, open_rows, output_format, write_bands
from .io.checks import _same_file
from .io.meta import quoted

__all__ = ["Layout", "check_compare_path", "choose_regions", "compare_image", "layout",
           "write_compare"]

Region = tuple[int, int, int, int]  # (x, y, width, height) in output pixels

GRID = 512  # the detail map's longer side, in cells
MIN_CROP, MAX_CROP = 8, 512  # the crop's side in output pixels; also the longest side shown
MAX_REGIONS = 16
MIN_SHOWN, MAX_ZOOM = 128, 16  # crops below MIN_SHOWN px are shown enlarged, at most x MAX_ZOOM
BAND = 32  # label band height
SEP = 2  # separator width
MIN_CELL = 160  # the narrowest half, so that its labels fit
CHECKER = 8  # checkerboard square, in crop pixels
BAND_BYTES = 8 << 20  # input bytes read at a time for the detail map
BACKGROUND, SEPARATOR, TEXT = (32, 32, 32), (200, 200, 200), (235, 235, 235)
CHECKER_GREYS = (204, 153)
INPUT_LABEL = "input, Lanczos"
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class Layout:
    """Where things go in a picture of ``count`` rows of crops ``crop = (w, h)`` output px."""

    crop: tuple[int, int]
    count: int
    zoom: int  # each crop pixel is shown as zoom x zoom picture pixels
    cell: int  # the width of one half

    @property
    def row_height(self) -> int:
        return BAND + self.crop[1] * self.zoom

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the picture."""
        return self.count * self.row_height + (self.count - 1) * SEP, 2 * self.cell + SEP

    def origin(self, row: int, half: int) -> tuple[int, int]:
        """(x, y) of the top-left of row ``row``'s crop, ``half`` 0 the input, 1 the output."""
        x = half * (self.cell + SEP) + (self.cell - self.crop[0] * self.zoom) // 2
        return x, row * (self.row_height + SEP) + BAND


def layout(crop: tuple[int, int], count: int) -> Layout:
    """The layout for ``count`` crops of ``crop = (w, h)`` output pixels: zoom =
    clamp(MIN_SHOWN // min(w, h), 1, min(MAX_ZOOM, MAX_CROP // max(w, h)))."""
    w, h = crop
    zoom = max(1, min(MIN_SHOWN // min(w, h), MAX_ZOOM, MAX_CROP // max(w, h)))
    return Layout((w, h), count, zoom, max(w * zoom, MIN_CELL))


def check_compare_path(compare_path: str | Path, *, inputs: Sequence[str | Path] = (),
                       outputs: Sequence[str | Path] = (), overwrite: bool = False,
                       regions: int = 3, crop: int = 256) -> None:
    """Every check on a comparison picture that can be made before the run: InputError (exit
    2, one line) unless ``compare_path`` is a ``.png`` file that can be created (as
    :func:`~tiledsr.io.check_output` checks), is none of ``inputs`` and ``outputs`` (never,
    even with ``overwrite``), and is not an existing file unless ``overwrite``; inputs and
    outputs must be files (not "-"); ``regions`` 1..16 and ``crop`` 8..512 whole numbers."""
    name = str(compare_path)
    _check_numbers(regions, crop)
    if name == "-":
        raise InputError("cannot write the picture to compare to stdout; pass --compare FILE.png")
    for path in [*inputs, *outputs]:
        if str(path) == "-":
            raise InputError("--compare needs the input and the output as files, not - "
                             "(stdin or stdout)")
        if _same_file(Path(name), Path(path)):
            kind = "input" if path in inputs else "output"
            raise InputError(f"refusing to write the picture to compare over the {kind} "
                             f"{quoted(name)}; choose another --compare name")
    if output_format(name, None) != "PNG":
        raise InputError(f"cannot write {quoted(name)}: the picture to compare is a PNG; name it "
                         ".png")
    check_output(name, format="PNG", channels=3, bit_depth=8, overwrite=overwrite,
                 inputs=[*inputs, *outputs])


def write_compare(input_path: str | Path, output_path: str | Path, compare_path: str | Path, *,
                  regions: int = 3, crop: int = 256, label: str = "tiledsr",
                  input_label: str = INPUT_LABEL, max_pixels: int = DEFAULT_MAX_PIXELS,
                  overwrite: bool = False) -> list[Region]:
    """Write the picture comparing ``input_path`` with its upscaled ``output_path`` to
    ``compare_path`` (see the module's notes); returns the regions shown, (x, y, w, h) in
    output pixels, most detailed first. Both files are read by row bands (at most
    ``max_pixels`` each); ``label`` names the output half (e.g. "tiledsr photo-x4").
    InputError (exit 2) as :func:`check_compare_path` says, or for unreadable files."""
    # 1. Check the destination and the numbers before reading anything.
    check_compare_path(compare_path, inputs=[input_path], outputs=[output_path],
                       overwrite=overwrite, regions=regions, crop=crop)
    # 2. Choose the regions, gather the crops and draw the picture.
    with open_rows(input_path, max_pixels) as source, open_rows(output_path, max_pixels) as result:
        picture, chosen = _compose(source, result, regions, crop, (input_label, label))
    # 3. Write it atomically: a temporary file renamed into place, never over another file.
    write_bands(compare_path, [picture], size=picture.shape[:2], channels=3, format="PNG",
                overwrite=overwrite, inputs=[input_path, output_path])
    return chosen


def compare_image(input_image: Any, output_image: Any, *, regions: int = 3, crop: int = 256,
                  label: str = "tiledsr", input_label: str = INPUT_LABEL
                  ) -> tuple[np.ndarray, list[Region]]:
    """The picture of :func:`write_compare` from images in memory: numpy arrays (H, W) or
    (H, W, C), C 1..4, uint8, uint16 or float in [0, 1], or PIL images. Returns the picture,
    (h, w, 3) uint8, and the regions shown, (x, y, w, h) in output pixels."""
    _check_numbers(regions, crop)
    return _compose(_ArrayRows(input_image, "the input"), _ArrayRows(output_image, "the output"),
                    regions, crop, (input_label, label))


def choose_regions(source: Any, output_size: tuple[int, int], *, regions: int = 3,
                   crop: int = 256) -> list[Region]:
    """The regions :func:`write_compare` shows for the input ``source`` (a RowSource, array or
    PIL image) upscaled to ``output_size = (height, width)``: (x, y, w, h) in output pixels,
    most detailed first, not overlapping, at most ``regions``."""
    _check_numbers(regions, crop)
    rows = source if hasattr(source, "read") else _ArrayRows(source, "the input")
    detail, factor = _detail_map(rows)
    return _choose(detail, factor, rows.shape[:2], tuple(output_size), regions, crop)


def _check_numbers(regions: object, crop: object) -> None:
    for name, value, lo, hi in (("regions", regions, 1, MAX_REGIONS),
                                ("crop", crop, MIN_CROP, MAX_CROP)):
        whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not whole or not lo <= value <= hi:
            raise InputError(f"the picture to compare: {name} must be a whole number from {lo} "
                             f"to {hi}, got {value!r}")


class _ArrayRows:
    """An image in memory read as a RowSource is: ``shape`` (H, W, C), ``read(y0, y1)``."""

    def __init__(self, image: Any, what: str):
        if isinstance(image, Image.Image):
            image = _pil_pixels(image)
        array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.ndim != 3 or not 1 <= array.shape[2] <= 4 or 0 in array.shape[:2] \
                or not (array.dtype in (np.uint8, np.uint16) or array.dtype.kind == "f"):
            raise InputError(f"cannot compare {what}: expected an (H, W) or (H, W, C) image with "
                             f"C in 1..4, uint8, uint16 or float, got shape {array.shape} "
                             f"{array.dtype}")
        self.pixels = array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
        self.shape, self.dtype = self.pixels.shape, self.pixels.dtype

    def read(self, y0: int, y1: int) -> np.ndarray:
        return self.pixels[y0:y1]


def _pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image's pixels as uint8/uint16: L, LA, RGB, RGBA and I;16 as they are, others
    converted to RGB(A)."""
    if image.mode in ("L", "LA", "RGB", "RGBA", "I;16"):
        return np.asarray(image)
    alpha = "A" in image.mode or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if alpha else "RGB"))


def _compose(source: Any, result: Any, count: int, crop: int,
             labels: tuple[str, str]) -> tuple[np.ndarray, list[Region]]:
    """1. the detail map of ``source``, 2. the regions, 3. the crops, 4. the picture."""
    in_size, out_size = source.shape[:2], result.shape[:2]
    detail, factor = _detail_map(source)
    chosen = _choose(detail, factor, in_size, out_size, count, crop)
    crops: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i in sorted(range(len(chosen)), key=lambda k: chosen[k][1]):  # rows read top to bottom
        x, y, w, h = chosen[i]
        shown = _rgb(_display8(result.read(y, y + h)[:, x: x + w]))
        crops[i] = _enlarged(source, chosen[i], out_size), shown
    lay = layout(chosen[0][2:], len(chosen))
    return _draw(lay, [crops[i] for i in range(len(chosen))], chosen, in_size, out_size,
                 labels), chosen


# --- detail and regions ------------------------------------------------------------------------

def _detail_map(source: Any) -> tuple[np.ndarray, int]:
    """(map, f): the mean gradient magnitude of ``source``'s luminance in f x f cells (edge
    cells partial), f the smallest whole factor that makes the map at most GRID a side;
    ``source`` is read in bands of whole cells, about BAND_BYTES at a time."""
    height, width, channels = source.shape
    factor = max(1, math.ceil(max(height, width) / GRID))
    row_bytes = width * channels * np.dtype(source.dtype).itemsize
    step = factor * max(1, BAND_BYTES // max(1, row_bytes * factor))
    sums = np.zeros((math.ceil(height / factor), math.ceil(width / factor)), np.float64)
    columns, previous = np.arange(0, width, factor), None
    for y0 in range(0, height, step):
        grey = _grey(source.read(y0, min(height, y0 + step)))
        magnitude = np.zeros_like(grey)
        magnitude[:, 1:] = np.abs(np.diff(grey, axis=1))
        magnitude[1:] += np.abs(np.diff(grey, axis=0))
        if previous is not None:
            magnitude[0] += np.abs(grey[0] - previous)
        previous = grey[-1].copy()
        cells = np.add.reduceat(magnitude, np.arange(0, len(grey), factor), axis=0)
        sums[y0 // factor: y0 // factor + len(cells)] = np.add.reduceat(cells, columns, axis=1)
    counts = np.outer(_cell_sizes(height, factor), _cell_sizes(width, factor))
    return sums / counts, factor


def _cell_sizes(length: int, factor: int) -> np.ndarray:
    sizes = np.full(math.ceil(length / factor), factor, np.float64)
    sizes[-1] = length - factor * (len(sizes) - 1)
    return sizes


def _grey(pixels: np.ndarray) -> np.ndarray:
    """(h, w, C) pixels -> (h, w) float32 luminance in [0, 1], times alpha where C is 2 or 4."""
    peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(pixels.dtype, 1.0)
    channels = pixels.shape[2]
    if channels >= 3:
        grey = sum(np.float32(k) * pixels[..., i].astype(np.float32) for i, k in enumerate(_LUMA))
    else:
        grey = pixels[..., 0].astype(np.float32)
    grey *= np.float32(1 / peak)
    if channels in (2, 4):
        grey *= pixels[..., -1].astype(np.float32) * np.float32(1 / peak)
    return np.nan_to_num(grey, copy=False)


def _choose(detail: np.ndarray, factor: int, in_size: tuple[int, int],
            out_size: tuple[int, int], count: int, crop: int) -> list[Region]:
    """The ``count`` best windows of the detail map that do not overlap, in output pixels:
    taken greedily from every window, or, where that fits fewer, from windows on a lattice of
    crop steps (an output of 2 x 2 crops then shows 3 regions, not the 1 best in its middle)."""
    (ih, iw), (oh, ow) = in_size, out_size
    ch, cw = min(crop, oh), min(crop, ow)
    cell = factor * oh / ih, factor * ow / iw  # a cell's size in output pixels
    gh, gw = detail.shape
    wh, ww = (min(g, max(1, round(c / s))) for g, c, s in ((gh, ch, cell[0]), (gw, cw, cell[1])))
    table = np.zeros((gh + 1, gw + 1))
    table[1:, 1:] = detail.cumsum(0).cumsum(1)
    score = _box_sums(table, (wh, ww), (0, 0), (gh - wh + 1, gw - ww + 1))
    inner = max(1, wh // 2), max(1, ww // 2)  # the window's central half breaks ties
    score = np.stack([score, _box_sums(table, inner, ((wh - inner[0]) // 2, (ww - inner[1]) // 2),
                                       score.shape)], axis=-1)
    i, j = np.indices(score.shape[:2])  # each window of cells -> the output window about its centre
    ys = np.clip(np.rint((i + wh / 2) * cell[0] - ch / 2), 0, oh - ch).astype(np.int64)
    xs = np.clip(np.rint((j + ww / 2) * cell[1] - cw / 2), 0, ow - cw).astype(np.int64)
    best = _greedy(ys.ravel(), xs.ravel(), score.reshape(-1, 2), out_size, (cw, ch), count)
    if len(best) == count:
        return best
    ly, lx = np.meshgrid(_lattice(oh, ch), _lattice(ow, cw), indexing="ij")
    li = np.clip(np.rint((ly + ch / 2) / cell[0] - wh / 2), 0, gh - wh).astype(np.int64)
    lj = np.clip(np.rint((lx + cw / 2) / cell[1] - ww / 2), 0, gw - ww).astype(np.int64)
    packed = _greedy(ly.ravel(), lx.ravel(), score[li, lj].reshape(-1, 2), out_size, (cw, ch),
                     count)
    return packed if len(packed) > len(best) else best


def _box_sums(table: np.ndarray, size: tuple[int, int], offset: tuple[int, int],
              count: tuple[int, int]) -> np.ndarray:
    """Sums over windows of ``size`` cells starting at ``offset`` + (i, j), for the ``count``
    first (i, j), from the summed-area ``table``."""
    (h, w), (y, x), (n, m) = size, offset, count
    return table[y + h: y + h + n, x + w: x + w + m] - table[y: y + n, x + w: x + w + m] \
        - table[y + h: y + h + n, x: x + m] + table[y: y + n, x: x + m]


def _lattice(length: int, crop: int) -> np.ndarray:
    """Window starts 0, crop, 2 crop, ... and the last one flush with the end."""
    return np.unique(np.append(np.arange(0, length - crop + 1, crop), length - crop))


def _greedy(ys: np.ndarray, xs: np.ndarray, score: np.ndarray, out_size: tuple[int, int],
            crop: tuple[int, int], count: int) -> list[Region]:
    """Windows at (xs, ys) taken best ``score[:, 0]`` first (to 6 digits), skipping those that
    lie within a quarter of the image (but at least a crop) of one taken, so the regions show
    different parts of it; where that leaves fewer than ``count``, the rest only must not
    overlap. Ties go to the best ``score[:, 1]``, then to the window nearest the image's
    centre, then to the first given."""
    (oh, ow), (cw, ch) = out_size, crop
    centre = (ys + ch / 2 - oh / 2) ** 2 + (xs + cw / 2 - ow / 2) ** 2
    ranks = np.round(score / max(float(score.max()), 1e-30) * 1e6)
    order = np.lexsort((centre, -ranks[:, 1], -ranks[:, 0]))  # stable
    ys, xs = ys[order], xs[order]
    chosen: list[Region] = []
    for gap_y, gap_x in ((max(ch, oh // 4), max(cw, ow // 4)), (ch, cw)):
        free = np.ones(len(order), bool)
        for x, y, _, _ in chosen:
            free &= (np.abs(ys - y) >= gap_y) | (np.abs(xs - x) >= gap_x)
        while len(chosen) < count and free.any():
            k = int(np.argmax(free))
            chosen.append((int(xs[k]), int(ys[k]), cw, ch))
            free &= (np.abs(ys - ys[k]) >= gap_y) | (np.abs(xs - xs[k]) >= gap_x)
    return chosen


# --- crops -------------------------------------------------------------------------------------

def _display8(pixels: np.ndarray) -> np.ndarray:
    """uint8 as is, uint16 v as round(v / 257), float f as round(255 f) (clipped, NaN 0)."""
    if pixels.dtype == np.uint8:
        return np.ascontiguousarray(pixels)
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return np.rint(np.clip(np.nan_to_num(pixels), 0, 1) * 255).astype(np.uint8)


def _enlarged(source: Any, region: Region, out_size: tuple[int, int]) -> np.ndarray:
    """The input under the output ``region`` enlarged with Pillow's Lanczos to the region's
    size, shown as (h, w, 3) uint8. Resampled in float (mode "F", channel by channel, colour
    premultiplied by alpha), so nothing is clipped or rounded between the two passes; only
    the input rows and columns the kernels reach are read."""
    x, y, w, h = region
    (ih, iw), (oh, ow) = source.shape[:2], out_size
    box = (x * iw / ow, y * ih / oh, (x + w) * iw / ow, (y + h) * ih / oh)
    reach = 3 * max(1.0, iw / ow) + 2, 3 * max(1.0, ih / oh) + 2  # Lanczos: 3 lobes
    x0, y0 = max(0, math.floor(box[0] - reach[0])), max(0, math.floor(box[1] - reach[1]))
    x1, y1 = min(iw, math.ceil(box[2] + reach[0])), min(ih, math.ceil(box[3] + reach[1]))
    pixels = _unit(source.read(y0, y1)[:, x0:x1])
    channels = pixels.shape[2]
    if channels in (2, 4):
        pixels[..., :-1] *= pixels[..., -1:]
    within = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)  # exact: x0, y0 are whole
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c])).resize(
        (w, h), Image.Resampling.LANCZOS, box=within)) for c in range(channels)]
    return _shown(np.stack(planes, axis=-1))


def _unit(pixels: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1] (NaN 0), a new array."""
    peak = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(pixels.dtype)
    if peak is None:
        return np.clip(np.nan_to_num(pixels.astype(np.float32)), 0, 1)
    return pixels.astype(np.float32) * np.float32(1 / peak)


def _shown(premultiplied: np.ndarray) -> np.ndarray:
    """(h, w, C) float, colour premultiplied by alpha -> (h, w, 3) uint8 over the
    checkerboard."""
    channels = premultiplied.shape[2]
    colour = premultiplied[..., :3] if channels >= 3 else premultiplied[..., :1].repeat(3, 2)
    if channels in (2, 4):
        alpha = np.clip(premultiplied[..., -1:], 0, 1)
        colour = colour + _checkerboard(colour.shape[:2])[..., None] / 255 * (1 - alpha)
    return np.rint(np.clip(colour, 0, 1) * 255).astype(np.uint8)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(h, w, C) uint8 -> (h, w, 3) uint8: grey repeated, alpha over the checkerboard."""
    channels = pixels.shape[2]
    colour = pixels[..., :3] if channels >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    if channels in (1, 3):
        return np.ascontiguousarray(colour)
    alpha = pixels[..., -1:].astype(np.uint32)
    mixed = colour * alpha + _checkerboard(pixels.shape[:2])[..., None] * (255 - alpha) + 127
    return (mixed // 255).astype(np.uint8)


def _checkerboard(size: tuple[int, int]) -> np.ndarray:
    """(h, w) uint32 greys in CHECKER-pixel squares, the light one at the top-left."""
    rows, cols = (np.arange(n) // CHECKER for n in size)
    return np.where((rows[:, None] + cols[None, :]) % 2, *CHECKER_GREYS[::-1]).astype(np.uint32)


# --- the picture -------------------------------------------------------------------------------

def _draw(lay: Layout, crops: list[tuple[np.ndarray, np.ndarray]], regions: list[Region],
          in_size: tuple[int, int], out_size: tuple[int, int],
          labels: tuple[str, str]) -> np.ndarray:
    """The picture: crops placed by ``lay`` under their label bands, parted by separators."""
    picture = np.empty((*lay.size, 3), np.uint8)
    picture[...] = SEPARATOR
    scale = _scale_text(out_size[1] / in_size[1], out_size[0] / in_size[0])
    w, h = lay.crop
    shown = "1:1" if lay.zoom == 1 else f"shown x{lay.zoom}, nearest"
    for row, (pair, (x, y, _, _)) in enumerate(zip(crops, regions)):
        texts = ((labels[0], f"{scale} at ({x}, {y})"), (labels[1], f"{w}x{h} px, {shown}"))
        for half in (0, 1):
            left = half * (lay.cell + SEP)
            top = row * (lay.row_height + SEP)
            picture[top: top + lay.row_height, left: left + lay.cell] = BACKGROUND
            picture[top: top + BAND, left: left + lay.cell] = _band(texts[half], lay.cell)
            cx, cy = lay.origin(row, half)
            picture[cy: cy + h * lay.zoom, cx: cx + w * lay.zoom] = \
                pair[half].repeat(lay.zoom, 0).repeat(lay.zoom, 1)
    return picture


def _scale_text(sx: float, sy: float) -> str:
    return f"x{sx:.2f}" if abs(sx - sy) < 0.005 else f"x{sx:.2f} by {sy:.2f}"


def _band(lines: tuple[str, str], width: int) -> np.ndarray:
    """A label band, (BAND, width, 3) uint8: two lines of text, cut at the band's edge."""
    band = Image.new("RGB", (width, BAND), BACKGROUND)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((6, 3 + 14 * i), line, fill=TEXT, font=_font())
    return np.asarray(band)


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()
