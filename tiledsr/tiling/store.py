"""Images that stages read windows from: in RAM, or in a file on disk; and row bands.

A stage reads its input by region and hands its output on as *bands*: consecutive
float32 row blocks (h, W, C) that together cover rows 0..H in order. Between two stages the
bands are written into a store; the last stage's bands go straight to the file writer.

:class:`FileStore` keeps its rows in a plain file and moves them with ``pread``/``pwrite``
rather than a memory map, so what it holds lives in the OS page cache, which the kernel
may drop, and never in the process's resident memory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

__all__ = ["ArrayStore", "Bands", "FileStore", "MappedStore", "RowsStore", "Store", "StreamStore", "aligned", "collect",
           "fill", "new_store",
           "rebanded"]

Bands = Iterator[np.ndarray]


class Store(Protocol):
    """An (H, W, C) float32 image that can be read by region (and written row by row)."""

    shape: tuple[int, int, int]

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        """Rows y0:y1, columns x0:x1: float32 (y1 - y0, x1 - x0, C); do not modify it."""
        ...


class ArrayStore:
    """A store over an (H, W, C) array in RAM (float32; other dtypes are converted on read)."""

    def __init__(self, array: np.ndarray):
        if array.ndim == 2:
            array = array[:, :, None]
        self.array = array
        self.shape = tuple(array.shape)
        self.rows_done = self.shape[0]

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> "ArrayStore":
        store = cls(np.zeros(shape, np.float32))
        store.rows_done = 0
        return store

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return np.asarray(self.array[y0:y1, x0:x1], dtype=np.float32)

    def write(self, y0: int, rows: np.ndarray) -> None:
        self.array[y0:y0 + len(rows)] = rows
        self.rows_done = max(self.rows_done, y0 + len(rows))

    def close(self) -> None:
        pass


class FileStore:
    """An (H, W, C) image in a file, rows contiguous; ``rows_done`` rows written so far.

    ``dtype`` float32 (the default), uint8 or uint16; reads return that dtype. ``keep=True``
    leaves the file on close (a checkpoint); otherwise it is removed. ``create=False``
    reopens an existing file as it is.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], *, keep: bool = False, create: bool = True,
                 dtype=np.float32):
        self.path, self.shape, self.keep = Path(path), tuple(shape), keep
        self.dtype = np.dtype(dtype)
        self._row = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self._fd = -1
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if create or os.fstat(self._fd).st_size != self._row * self.shape[0]:
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self._row * self.shape[0])
        self.rows_done = 0

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        h, w, c = self.shape
        y0, y1 = max(0, y0), min(h, y1)
        buf = bytearray(self._row * (y1 - y0))
        view, done = memoryview(buf), 0
        while done < len(buf):
            n = os.preadv(self._fd, [view[done:]], y0 * self._row + done)
            if n <= 0:
                raise OSError(f"{self.path}: file ends early")
            done += n
        rows = np.frombuffer(buf, self.dtype).reshape(y1 - y0, w, c)
        return rows if (x0, x1) in ((0, None), (0, w)) else np.ascontiguousarray(rows[:, x0:x1])

    def write(self, y0: int, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows, dtype=self.dtype)
        assert data.shape[1:] == self.shape[1:], (data.shape, self.shape)
        view, done = memoryview(data).cast("B"), 0
        while done < len(view):
            done += os.pwrite(self._fd, view[done:], y0 * self._row + done)
        self.rows_done = max(self.rows_done, y0 + len(rows))

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if not self.keep:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass

    def __del__(self):
        if getattr(self, "_fd", -1) >= 0:
            self.close()


def new_store(shape: tuple[int, int, int], in_ram_bytes: int, folder: str | Path | None):
    """An empty store: in RAM when its float32 size is at most ``in_ram_bytes`` (or there is no
    ``folder``), else a :class:`FileStore` in ``folder``."""
    nbytes = 4 * shape[0] * shape[1] * shape[2]
    if folder is None or nbytes <= in_ram_bytes:
        return ArrayStore.empty(shape)
    import tempfile

    fd, name = tempfile.mkstemp(prefix=".tiledsr-store-", suffix=".f32", dir=folder)
    os.close(fd)
    return FileStore(name, shape)


def fill(store, bands: Iterable[np.ndarray], start: int = 0, on_band=None) -> None:
    """Write consecutive ``bands`` into ``store`` from row ``start``; ``on_band(rows_done)`` after each."""
    y = start
    for band in bands:
        store.write(y, band)
        y += len(band)
        if on_band is not None:
            on_band(y)


def collect(bands: Iterable[np.ndarray]) -> np.ndarray:
    """Consecutive bands as one (H, W, C) float32 array."""
    parts = list(bands)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def rebanded(bands: Iterable[np.ndarray], rows: int) -> Bands:
    """The same rows regrouped into bands of ``rows`` (the last may be shorter)."""
    held: list[np.ndarray] = []
    count = 0
    for band in bands:
        held.append(band)
        count += len(band)
        while count >= rows:
            block = np.concatenate(held, axis=0) if len(held) > 1 else held[0]
            yield block[:rows]
            rest = block[rows:]
            held, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield np.concatenate(held, axis=0) if len(held) > 1 else held[0]


class StreamStore:
    """A band stream seen as a store that is read forwards: each ``read`` may start no earlier
    than the previous one did (rows before it are let go). (H, W, C) float32."""

    def __init__(self, bands: Iterable[np.ndarray], shape: tuple[int, int, int], top: int = 0):
        """``bands`` start at row ``top`` (rows before it are never read)."""
        self.shape = tuple(shape)
        self._bands = iter(bands)
        self._rows = np.zeros((0, *self.shape[1:]), np.float32)
        self._top = top  # image row of self._rows[0]

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        if y0 < self._top:
            raise ValueError(f"StreamStore read rows {y0}:{y1} after letting go of rows before {self._top}")
        held = [self._rows[y0 - self._top:]] if y0 - self._top < len(self._rows) else []
        have = max(self._top + len(self._rows), y0)
        skip = max(0, y0 - (self._top + len(self._rows)))
        while have < y1:
            band = next(self._bands)
            if skip:
                cut = min(skip, len(band))
                band, skip = band[cut:], skip - cut
            held.append(band)
            have += len(band)
        self._rows = np.concatenate(held, axis=0) if len(held) != 1 else held[0]
        self._top = y0
        return self._rows[: y1 - y0, x0:x1]


def aligned(*streams: Iterable[np.ndarray]) -> Bands:
    """Several band streams of the same height, zipped: bands of equal rows, channels concatenated."""
    its = [iter(s) for s in streams]
    held: list[list[np.ndarray]] = [[] for _ in its]
    counts = [0] * len(its)
    while True:
        for k, it in enumerate(its):
            if counts[k] == 0:
                band = next(it, None)
                if band is None:
                    return
                held[k], counts[k] = [band], len(band)
        n = min(counts)
        parts = []
        for k in range(len(its)):
            block = held[k][0]
            parts.append(block[:n])
            rest = block[n:]
            held[k], counts[k] = ([rest] if len(rest) else []), len(rest)
        yield np.concatenate(parts, axis=2)


class MappedStore:
    """A store whose reads are ``fn(src.read(...))``: a channel view, grey as RGB."""

    def __init__(self, src, fn, channels: int):
        self.src, self.fn = src, fn
        self.shape = (*src.shape[:2], channels)

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return self.fn(self.src.read(y0, y1, x0, x1))


class RowsStore:
    """A store over a row reader (``tiledsr.io.open_rows``): float32 rows decoded on demand,
    the last rows read kept for the windows that follow."""

    def __init__(self, rows):
        self.rows = rows
        self.shape = tuple(rows.shape)
        self._last: tuple[int, int, np.ndarray] | None = None

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        last = self._last
        if last is None or not (last[0] <= y0 and y1 <= last[1]):
            last = self._last = (y0, y1, self.rows.read_float(y0, y1))
        return last[2][y0 - last[0]:y1 - last[0], x0:x1]

    def close(self) -> None:
        self._last = None
        self.rows.close()
