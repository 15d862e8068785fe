"""A live preview for host applications: a small JPEG of the finished part of an output.

:func:`preview_bands` passes an output's row bands through unchanged while it keeps a
reduced copy (by a whole factor, so that the longest side is at most
:data:`PREVIEW_SIDE`); at most every ``every`` seconds, and once at the end, it rewrites
the JPEG atomically (a temporary file in the same folder, then a rename) and calls
``on_preview(path, rows)`` with the output rows it shows. Rows not finished yet are grey.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import TiledsrError
from .io.meta import quoted

__all__ = ["PREVIEW_SIDE", "check_preview_path", "preview_bands"]

PREVIEW_SIDE = 512  # pixels of the preview's longest side (at most)
MARK = b"tiledsr live preview"  # the JPEG comment that makes a file ours to replace


def check_preview_path(path: str | Path, others: Sequence[str | Path] = ()) -> None:
    """InputError (exit 2) unless ``path`` may hold the preview: a file name (not ``-``) in an
    existing folder, none of ``others`` (the run's inputs and outputs), and either absent, empty
    or an earlier preview (a JPEG whose comment is :data:`MARK`), so no user file is replaced."""
    from .errors import InputError
    from .io.checks import _same_file

    name = quoted(str(path), "stdout")
    if str(path) == "-":
        raise InputError("--preview needs a file name; the preview cannot go to stdout")
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"--preview {name}: folder {quoted(str(p.parent), '')} does not exist")
    if p.is_dir():
        raise InputError(f"--preview {name} is a folder; give a file name such as preview.jpg")
    for other in others:
        if str(other) != "-" and (os.path.abspath(other) == os.path.abspath(p) or _same_file(Path(other), p)):
            raise InputError(f"--preview {name} is also an input or output of this run; give another file")
    if p.exists() and not _replaceable(p):
        raise InputError(f"--preview {name} exists and is not an earlier tiledsr preview; remove it or "
                         "give another file")
    from .io.checks import check_output

    check_output(p, format="jpeg", size=(PREVIEW_SIDE, PREVIEW_SIDE), overwrite=True)  # folder writable


def _replaceable(p: Path) -> bool:
    """An empty file, or a JPEG that tiledsr wrote as a preview."""
    try:
        if p.stat().st_size == 0:
            return True
        with open(p, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head.startswith(b"\xff\xd8") and MARK in head


def preview_bands(bands: Iterable[np.ndarray], size: tuple[int, int], path: str | Path, every: float,
                  on_preview: Callable[[str, int], None],
                  on_failure: Callable[[str], None] = lambda message: None) -> Iterator[np.ndarray]:
    """Yield ``bands`` (consecutive (h, W[, C]) row bands of an output of ``size`` (H, W), float
    in [0, 1], uint8 or uint16) unchanged, keeping the preview at ``path`` up to date. The preview
    never fails the run: when it cannot be written (a full disk), ``on_failure(message)`` is
    called once and the bands go on without it.

    Each preview pixel is the mean of a few samples of its ``factor`` x ``factor`` block (its
    first and middle rows and columns), so the preview costs a small fraction of the output's
    pixels and a few MB, whatever the band."""
    height, width = size
    factor = max(1, -(-max(height, width) // PREVIEW_SIDE))
    offsets = sorted({0, factor // 2})
    cols = np.flatnonzero(np.isin(np.arange(width) % factor, offsets))
    col_blocks = cols // factor
    col_starts = np.flatnonzero(np.r_[True, col_blocks[1:] != col_blocks[:-1]])
    col_counts = np.diff(np.r_[col_starts, len(cols)])
    sums = np.zeros((-(-height // factor), len(col_starts), 3), np.float64)
    counts = np.zeros(sums.shape[0], np.int64)
    done, last = 0, time.monotonic()
    failed = False
    for band in bands:
        yield band
        if failed:
            continue
        rows = np.arange(done, done + band.shape[0])
        rows = rows[np.isin(rows % factor, offsets)]
        if len(rows):
            shown = _display(band[rows - done][:, cols])  # (rows, cols, 3)
            np.add.at(sums, rows // factor, np.add.reduceat(shown, col_starts, axis=1))
            np.add.at(counts, rows // factor, 1)
        done += band.shape[0]
        now = time.monotonic()
        if done >= height or now - last >= every:
            seen = counts > 0
            small = np.full(sums.shape, 0.5, np.float32)
            small[seen] = sums[seen] / (counts[seen, None, None] * col_counts[None, :, None])
            try:
                _write(small, path)
            except (OSError, TiledsrError) as exc:
                failed = True
                on_failure(f"the preview {quoted(str(path), 'stdout')} could not be written ({exc}); "
                           "going on without it")
                continue
            on_preview(str(path), done)
            last = now


def _display(band: np.ndarray) -> np.ndarray:
    """A band as float32 RGB in [0, 1] (alpha composited over mid grey, grey repeated)."""
    if band.dtype == np.uint8:
        a = band.astype(np.float32) / 255
    elif band.dtype == np.uint16:
        a = band.astype(np.float32) / 65535
    else:
        a = np.clip(np.nan_to_num(band.astype(np.float32)), 0.0, 1.0)
    if a.ndim == 2:
        a = a[:, :, None]
    c = a.shape[2]
    colour, alpha = (a[:, :, :c - 1], a[:, :, c - 1:]) if c in (2, 4) else (a, None)
    if alpha is not None:
        colour = colour * alpha + 0.5 * (1 - alpha)
    return np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour


def _write(small: np.ndarray, path: str | Path) -> None:
    """The preview as a JPEG, replaced atomically (see :mod:`tiledsr.io.files`)."""
    from PIL import Image

    from .io.files import _atomic_write

    image = Image.fromarray(np.round(small * 255).astype(np.uint8))
    _atomic_write(Path(path), str(path), lambda fh: image.save(fh, format="JPEG", quality=85, comment=MARK),
                  overwrite=True, streamed=False)
