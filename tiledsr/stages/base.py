"""What every stage shares: tiling settings, the runtime, and the Stage base class.

A stage maps a float32 image (H, W, C) in [0, 1] on the CPU to another one;
it declares its output size, whether and how it tiles, and a memory estimate,
so the planner can describe a run without loading any model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Optional

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

    def grid(self, height: int, width: int) -> TileGrid | None:
        """Tile grid over the output for an input of (height, width), or None if not tiled."""
        oh, ow = self.output_size(height, width)
        return make_grid(oh, ow, self.tiling.tile, self.tiling.overlap)

    def redundancy(self, height: int, width: int) -> float:
        """Pixels computed over pixels needed (1.0 = no redundant work)."""
        g = self.grid(height, width)
        return 1.0 if g is None else g.redundancy

    def memory_estimate(self, height: int, width: int, channels: int) -> dict[str, int]:
        """Bytes: ``{"tile": peak working memory per batch, "canvas": output canvas in RAM}``."""
        oh, ow = self.output_size(height, width)
        return {"tile": 0, "canvas": oh * ow * (channels * 8 + 8)}

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

    def run(self, data: Any, report: TileReport, source: np.ndarray | None = None) -> Any:
        """(H, W, C) float32 in [0, 1] on the CPU (or Latents, per ``consumes``) -> the same
        (per ``produces``). ``source`` is the pipeline's input image, for stages that need it."""
        raise NotImplementedError
