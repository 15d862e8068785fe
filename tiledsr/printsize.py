"""Print sizes: ``24x36in@300`` -> the target size in pixels and the DPI to write to the file.

A print size is a paper size (in inches, centimetres or millimetres) and a
resolution. The print turns to follow the image (a landscape image on a
"24x36in" print uses 36x24); an image whose aspect differs from the print's
by more than :data:`ASPECT_TOLERANCE` is fitted inside it, aspect kept.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .errors import InputError
from .stages.resize import MAX_SIDE
from .text import show

__all__ = ["ASPECT_TOLERANCE", "MAX_DPI", "PrintSize", "PrintTarget", "parse_print", "print_target"]

UNITS = {"in": 1.0, "inch": 1.0, "inches": 1.0, '"': 1.0, "cm": 2.54, "mm": 25.4}  # units per inch
MAX_DPI = 10000
ASPECT_TOLERANCE = 0.01  # a smaller aspect difference is stretched away: exactly the print's pixels
FORM = "WIDTHxHEIGHT then in, cm or mm, then @DPI, e.g. 24x36in@300 or 60x90cm@300dpi"

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)"
_PRINT = re.compile(rf"\s*(?P<w>{_NUMBER})\s*[x×]\s*(?P<h>{_NUMBER})\s*(?P<unit>[a-z\"]*)\s*"
                    rf"(?:@\s*(?P<dpi>{_NUMBER})?\s*(?:dpi)?)?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class PrintSize:
    """A print: ``width`` and ``height`` in inches, ``dpi`` dots per inch, and the ``text`` it came from."""

    width: float
    height: float
    dpi: float
    text: str = ""

    def pixels(self) -> tuple[int, int]:
        """(width, height) of the whole print in pixels, as written (not turned)."""
        return _px(self.width * self.dpi), _px(self.height * self.dpi)


@dataclass(frozen=True)
class PrintTarget:
    """What a print asks of one image: ``width`` x ``height`` pixels, ``dpi`` (x, y) for the file,
    and a one-line ``note`` when the image was fitted inside the print (else None)."""

    width: int
    height: int
    dpi: tuple[float, float]
    note: Optional[str] = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return self.width, self.height


def _px(value: float) -> int:
    """Pixels, rounded half up (a hair of slack for decimal units like 2.54)."""
    return int(math.floor(value + 0.5 + 1e-9))


def _fail(text: str, why: str) -> InputError:
    return InputError(f"print size {show(text, 60)!r}: {why}")


def parse_print(text: str) -> PrintSize:
    """``24x36in@300`` (or ``@300dpi``; units in, cm, mm; ``x`` or ``X``; spaces allowed) -> PrintSize."""
    match = _PRINT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise _fail(str(text), f"expected {FORM}")
    unit = match["unit"].lower()
    if not unit:
        raise _fail(text, f"give a unit after the size: in, cm or mm ({FORM})")
    if unit not in UNITS:
        raise _fail(text, f"unknown unit {show(unit, 10)!r}; use in, cm or mm ({FORM})")
    if match["dpi"] is None:
        raise _fail(text, f"give the resolution after @ ({FORM})")
    w, h, dpi = float(match["w"]), float(match["h"]), float(match["dpi"])
    if w <= 0 or h <= 0:
        raise _fail(text, f"width and height must be positive ({FORM})")
    if not 1 <= dpi <= MAX_DPI:
        raise _fail(text, f"DPI must be in 1..{MAX_DPI}, got {dpi:g}")
    ps = PrintSize(w / UNITS[unit], h / UNITS[unit], dpi, text.strip())
    for side in (ps.width, ps.height):
        if side * dpi > MAX_SIDE:
            raise _fail(text, f"that is more than {MAX_SIDE} pixels a side; use a smaller size or DPI")
        if side * dpi < 0.5:
            raise _fail(text, "that is less than one pixel a side; use a larger size or DPI")
    return ps


def _turned(ps: PrintSize, width: int, height: int) -> tuple[int, int]:
    """The print's (width, height) in pixels, turned to the image's orientation (a square image: as written)."""
    pw, ph = ps.pixels()
    if (width - height) * (pw - ph) < 0:
        return ph, pw
    return pw, ph


def _aspect(a: float, b: float) -> float:
    """Long side over short side."""
    return max(a, b) / min(a, b)


def print_target(ps: PrintSize, width: int, height: int) -> PrintTarget:
    """The size to make a ``width`` x ``height`` image for print ``ps``, and the DPI to write.

    Within :data:`ASPECT_TOLERANCE` of the print's aspect: exactly the print's
    pixels. Otherwise the image is fitted inside the print (one side exact, the
    other smaller, aspect kept) and ``note`` says by how much they differed.
    """
    if width <= 0 or height <= 0:
        raise InputError(f"print size: the image must have a positive size, got {width}x{height}")
    pw, ph = _turned(ps, width, height)
    image, paper = _aspect(width, height), _aspect(pw, ph)
    off = max(image, paper) / min(image, paper) - 1
    if off <= ASPECT_TOLERANCE + 1e-12:  # exactly 1% is within
        return PrintTarget(pw, ph, (ps.dpi, ps.dpi))
    if width * ph >= height * pw:  # wider than the print: the width is exact
        tw, th = pw, max(1, min(ph, _px(pw * height / width)))
    else:
        tw, th = max(1, min(pw, _px(ph * width / height))), ph
    note = (f"the image's aspect {image:.2f} differs from the print's {paper:.2f} by {100 * off:.3g}%; "
            f"fitted inside the print: {tw}x{th} px of {pw}x{ph}")
    return PrintTarget(tw, th, (ps.dpi, ps.dpi), note)
