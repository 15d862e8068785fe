"""What every stage shares: tiling settings, the runtime, and the Stage base class.

A stage maps a float32 image (H, W, C) in [0, 1] on the CPU to another one;
it declares its output size, whether and how it tiles, and a memory estimate,
so the planner can describe a run without loading any model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal, Optional

import numpy as np

from ..tiling import TileGrid, make_grid

__all__ = ["Runtime", "Stage", "Tiling", "TileReport"]

TileReport = Callable[..., None]  # (tiles done, tiles in all[, step, steps])
Blend = Literal["linear", "cosine", "gaussian"]


@dataclass(frozen=True)
class Tiling:
    """Tiling settings; ``tile`` and ``overlap`` are in pixels of the stage's output."""

    tile: int = 1024
    overlap: int = 64
    blend: Blend = "cosine"
    batch: int = 1

    def check(self) -> str | None:
        if self.tile <= 0:
            return f"tile must be a positive number of pixels, got {self.tile}"
        if self.overlap < 0:
            return f"overlap must be >= 0, got {self.overlap}"
        if self.overlap >= self.tile:
            return f"overlap ({self.overlap}) must be smaller than tile ({self.tile})"
        if self.batch <= 0:
            return f"batch must be a positive number of tiles, got {self.batch}"
        return None


@dataclass(frozen=True)
class StageTiling:
    """Per-stage tiling overrides (None = the preset's value)."""

    tile: Optional[int] = None
    overlap: Optional[int] = None
    blend: Optional[Blend] = None
    batch: Optional[int] = None

    def resolve(self, default: Tiling) -> Tiling:
        over = {k: v for k, v in dataclasses.asdict(self).items() if k in _TILING_KEYS and v is not None}
        return dataclasses.replace(default, **over)


_TILING_KEYS = {f.name for f in dataclasses.fields(Tiling)}


@dataclass(frozen=True)
class Runtime:
    """Where and how stages run: torch ``device`` string, ``precision``, ``seed``, ``threads``."""

    device: str = "cpu"
    precision: str = "auto"
    seed: Optional[int] = None
    threads: Optional[int] = None
    scratch_dir: Optional[str] = None


class Stage:
    """Base class. Subclasses set ``type`` and ``Config`` and implement the hooks."""

    type: ClassVar[str]
    Config: ClassVar[type]
    consumes: ClassVar[str] = "pixels"  # "pixels", "latents" or "nothing" (a source stage)
    produces: ClassVar[str] = "pixels"  # "pixels" or "latents"

    def __init__(self, config: Any, tiling: Tiling, runtime: Runtime):
        self.config = config
        self.tiling = tiling
        self.runtime = runtime

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the output for an input of (height, width)."""
        raise NotImplementedError

    def min_input_size(self) -> tuple[int, int]:
        """Smallest (H, W) input this stage accepts; ``Pipeline.plan`` refuses smaller ones up front."""
        return 1, 1

    def grid(self, height: int, width: int) -> TileGrid | None:
        """Tile grid over the output for an input of (height, width), or None if not tiled."""
        oh, ow = self.output_size(height, width)
        return make_grid(oh, ow, self.tiling.tile, self.tiling.overlap)

    def redundancy(self, height: int, width: int) -> float:
        """Pixels computed over pixels needed (1.0 = no redundant work)."""
        g = self.grid(height, width)
        return 1.0 if g is None else g.redundancy

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        """Bytes: ``{"tile": peak working memory of the model per batch, "canvas": the output rows it
        holds (rows of tiles in flight for streaming stages; the whole output for the others)}``."""
        oh, ow = self.output_size(height, width)
        return {"tile": 0, "canvas": 2 * oh * ow * channels * 4}

    def least_tile(self) -> int:
        """The smallest tile (output pixels) the planner may choose for this stage."""
        return 64

    def describe(self) -> str:
        """One line for `tiledsr plan`."""
        return self.type

    def check_tiling(self) -> str | None:
        """What is wrong with this stage's tiling settings (e.g. a uselessly small tile), or None."""
        return None

    def missing_models(self) -> list[str]:
        """One line per model this stage needs that is not available offline now; loads nothing."""
        return []

    def load(self) -> None:
        """Load models (no-op for model-free stages). Called once before the first run."""

    def run(self, data: Any, report: TileReport, source: Any = None) -> Any:
        """(H, W, C) float32 in [0, 1] on the CPU (or Latents, per ``consumes``) -> the same
        (per ``produces``). ``source`` is the pipeline's input image (an array or a store), for
        stages that need it. Stages that override :meth:`stream` get this for free."""
        if type(self).stream is Stage.stream:
            raise NotImplementedError
        from ..tiling.store import ArrayStore, collect

        return collect(self.stream(ArrayStore(data), report, source))

    def stream(self, src: Any, report: TileReport, source: Any = None, start: int = 0) -> Iterator[np.ndarray]:
        """Pixel stages: the output of the store ``src`` (H, W, C) float32 in [0, 1], as
        consecutive float32 row bands (h, W', C) in [0, 1] from output row ``start`` on, each
        handed on as soon as it is final. ``source``: the pipeline's input as a store, or None.

        The default runs :meth:`run` on the whole image; streaming stages override this."""
        out = self.run(src.read(0, src.shape[0]), report, _whole(source))
        yield out[start:]


def _whole(source: Any) -> Any:
    """The pipeline's input as an array (stores are read whole), or None."""
    if source is None or isinstance(source, np.ndarray):
        return source
    return source.read(0, source.shape[0])


class StageReport:
    """The per-tile progress callable a stage gets, plus :meth:`note` for one-line events
    (an out-of-memory back-off)."""

    def __init__(self, tile: TileReport, note: Callable[[str], None] | None = None):
        self._tile, self._note = tile, note

    def __call__(self, *args) -> None:
        self._tile(*args)

    def note(self, message: str) -> None:
        if self._note is not None:
            self._note(message)


def note_of(report: Any) -> Callable[[str], None] | None:
    """The ``note`` of a stage's report, when it has one."""
    return getattr(report, "note", None)
