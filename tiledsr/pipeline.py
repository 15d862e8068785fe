"""Pipeline: stages in order, each tiled by its own settings; ``plan()`` loads no model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .errors import InputError, ModelNotAvailable, OutOfMemory
from .imageconv import from_any, to_like
from .presets import Preset, load_preset, validate
from .progress import ProgressCallback, Reporter
from .stages import Runtime, Stage, stage_class
from .stages.resize import MAX_SIDE, ResizeConfig, ResizeStage, target_size

__all__ = ["Pipeline", "Plan", "StagePlan", "Target"]

REDUNDANCY_WARNING = 4.0  # plan warns when a stage computes more than this many times its output
MEMORY_MARGIN = 2.0  # a run whose estimate exceeds this many times RAM + swap is refused up front


@dataclass(frozen=True)
class Target:
    """Final size: a ``scale`` of the input, or ``width`` and/or ``height`` (one alone keeps the aspect)."""

    scale: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None

    def __post_init__(self):
        problem = ResizeConfig(self.scale, self.width, self.height).check()
        if problem:
            raise InputError(f"target size: {problem}")

    def size(self, height: int, width: int) -> tuple[int, int]:
        return target_size(height, width, self.scale, self.width, self.height)


@dataclass(frozen=True)
class StagePlan:
    """One stage of a plan; sizes are (H, W); memory in bytes."""

    index: int
    description: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    grid: Any  # TileGrid | None
    redundancy: float
    tile_memory: int
    canvas_memory: int

    @property
    def peak_memory(self) -> int:
        """Estimated peak bytes of this stage: its tile memory plus its input and output images."""
        return self.tile_memory + self.canvas_memory + 4 * 4 * self.input_size[0] * self.input_size[1]


@dataclass(frozen=True)
class Plan:
    stages: tuple[StagePlan, ...]

    @property
    def output_size(self) -> tuple[int, int]:
        return self.stages[-1].output_size

    @property
    def peak_memory(self) -> int:
        """Estimated peak bytes: the stage with the largest estimate."""
        return max(s.peak_memory for s in self.stages)

    @property
    def warnings(self) -> tuple[str, ...]:
        """One line per stage whose tiling computes far more than its output (the tile is too small)."""
        return tuple(f"stage {s.index + 1} ({s.description}) computes {s.redundancy:.1f}x its output "
                     f"with {len(s.grid)} tiles; a larger --tile is faster"
                     for s in self.stages if s.grid is not None and s.redundancy > REDUNDANCY_WARNING)

    def check_fits(self, total: int | None) -> None:
        """OutOfMemory now when the estimate is far beyond ``total`` bytes (the machine's RAM + swap)."""
        if not total or self.peak_memory <= MEMORY_MARGIN * total:
            return
        from .machine import format_bytes

        s = max(self.stages, key=lambda st: st.peak_memory)
        (h, w), tiled = s.output_size, s.grid is not None
        hint = "try a smaller --tile or output size" if tiled else "choose a smaller output size"
        raise OutOfMemory(f"this run needs about {format_bytes(self.peak_memory)} of memory (stage {s.index + 1}, "
                          f"{s.description}, makes a {w}x{h} image{'' if tiled else ' in one piece'}) but this "
                          f"machine has {format_bytes(total)} of RAM and swap; {hint}")


def resolve_device(device: str) -> str:
    """'auto' -> cuda, mps or cpu, whichever is available; checks that an explicit one is."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} is not available here (torch.cuda.is_available() is False); "
                             "use --device cpu or auto")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise InputError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' is not available here; use --device cpu or auto")
    return device


class Pipeline:
    """Stages run in order on a float image; build from a preset or a list of stage mappings.

    ``stages`` items are mappings like ``{"type": "sr", "model": "x4plus"}``.
    ``device``: auto|cpu|cuda[:N]|mps; ``precision``: auto|fp32|fp16|bf16.
    """

    def __init__(self, stages: Sequence[Mapping[str, Any]] | Preset, *, device: str | None = None,
                 precision: str | None = None, seed: int | None = None, target: Target | None = None,
                 threads: int | None = None, scratch_dir: str | None = None):
        preset = stages if isinstance(stages, Preset) else validate({"stages": list(stages)}, "pipeline")
        self.preset = preset
        self.target = target
        self._device = device or preset.device
        self.runtime = Runtime(self._device, precision or preset.precision,
                               preset.seed if seed is None else seed, threads, scratch_dir)
        self.stages: list[Stage] = [
            stage_class(s.type)(s.config, s.tiling, self.runtime) for s in preset.stages
        ]
        self._loaded = False

    @classmethod
    def from_preset(cls, name_or_path: str = "photo-x4", *, overrides: Mapping[str, Any] = {},
                    sets: Sequence[str] = (), **kwargs) -> "Pipeline":
        """Pipeline from a bundled preset name or YAML path; ``overrides`` set top-level preset keys
        (tile, overlap, blend, batch, ...), ``sets`` are ``--set``-style ``STAGE.KEY=VALUE`` items."""
        return cls(load_preset(name_or_path, overrides, sets), **kwargs)

    def _chain(self, height: int, width: int) -> list[Stage]:
        """Stages for an input of this size, plus a final exact resize when a target asks for one.

        A target scale is relative to the input, or to the first stage's output when that
        stage is a source (height and width 0)."""
        chain = list(self.stages)
        if self.target is not None:
            h, w = height, width
            for st in chain:
                h, w = st.output_size(h, w)
            ref = (height, width) if height else chain[0].output_size(0, 0)
            th, tw = self.target.size(*ref)
            if (th, tw) != (h, w):
                chain.append(ResizeStage(ResizeConfig(width=tw, height=th), self.preset.tiling, self.runtime))
        return chain

    def plan(self, size: tuple[int, int], channels: int = 3) -> Plan:
        """Plan for an input of ``size = (width, height)``: sizes, grids, memory. Loads no model."""
        w, h = size
        rows = []
        for i, st in enumerate(self._chain(h, w)):
            problem = st.check_tiling()
            if problem:
                raise InputError(f"stage {i + 1} ({st.type}): {problem}")
            oh, ow = st.output_size(h, w)
            if max(oh, ow) > MAX_SIDE:
                raise InputError(f"stage {i + 1} ({st.type}) would make a {ow}x{oh} image; tiledsr handles at "
                                 f"most {MAX_SIDE} pixels a side")
            grid = st.grid(h, w)
            mem = st.memory_estimate(h, w, channels)
            rows.append(StagePlan(i, st.describe(), (h, w), (oh, ow), grid, st.redundancy(h, w),
                                  mem["tile"], mem["canvas"]))
            h, w = oh, ow
        return Plan(tuple(rows))

    def check_models(self) -> None:
        """ModelNotAvailable naming every model of the pipeline that is not available; loads none."""
        missing = [m for st in self.stages for m in st.missing_models()]
        if len(missing) > 1:
            raise ModelNotAvailable(f"{len(missing)} models are not available: " + "; ".join(missing))
        if missing:
            raise ModelNotAvailable(missing[0])

    def load(self) -> None:
        """Resolve the device and load every stage's model (done on the first call otherwise)."""
        if not self._loaded:
            self.runtime = dataclasses.replace(self.runtime, device=resolve_device(self._device))
            for st in self.stages:
                st.runtime = self.runtime
                st.load()
            self._loaded = True

    def run_array(self, image: np.ndarray | None, progress: ProgressCallback | None = None) -> np.ndarray:
        """(H, W, C) float32 in [0, 1] on the CPU -> upscaled (H', W', C) float32 in [0, 1].

        ``image`` is None when the first stage is a source (txt2img). Adjacent stages that
        share a VAE latent space pass latents; a pixel stage between them forces decode and encode.
        """
        # 1. Load models; work out the chain for this input.
        self.load()
        first = self.stages[0]
        if image is None and first.consumes != "nothing":
            raise InputError(f"stage {first.type!r} needs an input image")
        chain = self._chain(*(image.shape[:2] if image is not None else (0, 0)))
        rep = Reporter(progress, len(chain))
        data = image
        # 2. Each stage in order, converting between pixels and latents only where needed.
        for i, st in enumerate(chain):
            data = self._convert(data, st, rep, i)
            size = _size_of(data)
            grid = st.grid(*size) if size is not None else None
            rep.stage(st.type, i, len(grid) if grid is not None else 1)
            data = _run_stage(st, i, data, rep, image)
        # 3. Back to pixels.
        return self._to_pixels(data, rep, len(chain) - 1)

    def _convert(self, data, st: Stage, rep: Reporter, index: int):
        """Hand ``data`` to ``st`` in the form it consumes (tiled VAE encode/decode if needed)."""
        if st.consumes == "nothing":
            return None
        if st.consumes == "pixels":
            return self._to_pixels(data, rep, index)
        from .diffusion.codec import Latents

        if isinstance(data, Latents) and data.codec.space == st.codec.space:
            return data
        pixels = self._to_pixels(data, rep, index)
        rep.stage("encode", index, len(st.codec.grid(*pixels.shape[:2])))
        return st.codec.encode(pixels, rep.tile)

    @staticmethod
    def _to_pixels(data, rep: Reporter, index: int) -> np.ndarray:
        if isinstance(data, np.ndarray):
            return data
        rep.stage("decode", index, len(data.codec.grid(*data.size)))
        return data.codec.decode(data, rep.tile)

    def __call__(self, image: Any = None, progress: ProgressCallback | None = None) -> Any:
        """Upscale a PIL image, a numpy (H, W[, C]) array (uint8, uint16 or float in [0, 1]) or a
        torch tensor (C, H, W) / (1, C, H, W) float in [0, 1]; returns the same kind (a PIL
        image when there is no input because the first stage is a source)."""
        if image is None:
            from .imageconv import to_pil

            return to_pil(self.run_array(None, progress))
        array = from_any(image)
        return to_like(self.run_array(array, progress), image)


def _run_stage(st: Stage, index: int, data, rep: Reporter, image):
    """``st.run``, with running out of memory reported as OutOfMemory naming the stage."""
    from .errors import as_out_of_memory

    try:
        return st.run(data, rep.tile, image)
    except (MemoryError, RuntimeError) as exc:
        size = _size_of(data)
        where = f"stage {index + 1} ({st.describe()})" + (f" on a {size[1]}x{size[0]} image" if size else "")
        tiled = size is not None and st.grid(*size) is not None
        oom = as_out_of_memory(exc, where, "try a smaller --tile" if tiled else "choose a smaller output size")
        if oom is None:
            raise
        raise oom from exc


def _size_of(data) -> tuple[int, int] | None:
    """Pixel (H, W) that ``data`` stands for: an image, Latents, or None before a source stage."""
    if data is None:
        return None
    if isinstance(data, np.ndarray):
        return data.shape[:2]
    return data.size
