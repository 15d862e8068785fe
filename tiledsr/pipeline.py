"""Pipeline: stages in order, each tiled by its own settings; ``plan()`` loads no model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

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
    """One stage of a plan; sizes are (H, W); memory in bytes.

    ``tile_memory``: the model's working set for a batch; ``canvas_memory``: the output rows
    it holds; ``peak``: the run's estimated peak while this stage runs (everything held:
    the process, the input, stores in RAM, the writer's band); ``tiling``: the tile, overlap
    and batch chosen for the budget."""

    index: int
    description: str
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    grid: Any  # TileGrid | None
    redundancy: float
    tile_memory: int
    canvas_memory: int
    peak: int = 0
    tiling: Any = None

    @property
    def peak_memory(self) -> int:
        """Estimated peak bytes of the run while this stage runs."""
        return self.peak or self.tile_memory + self.canvas_memory


@dataclass(frozen=True)
class Plan:
    """What :meth:`Pipeline.plan` returns, without loading a model: ``stages`` (a
    :class:`StagePlan` each: sizes, tile grid, tiling chosen, memory), ``output_size`` (H, W),
    ``peak_memory`` and ``budget`` in bytes, ``notes`` (e.g. how a print size was fitted) and
    ``warnings`` (tilings that waste work)."""

    stages: tuple[StagePlan, ...]
    notes: tuple[str, ...] = ()
    budget: int = 0

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


def _budget_bytes(value) -> int | None:
    """A memory budget given as bytes or text (``"6GB"``) -> bytes; None stays None."""
    if value is None:
        return None
    from .machine import parse_bytes

    try:
        return parse_bytes(value) if isinstance(value, str) else int(parse_bytes(str(int(value))))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"memory_budget: {exc}") from None


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
    ``memory_budget``: bytes (or ``"6GB"``) the run may use; tiles and batches are chosen to
    fit (default: 60% of the memory available now). ``print_size``: ``"24x36in@300"`` (or a
    :class:`~tiledsr.printsize.PrintSize`) sets the final size from the print, following the
    image's orientation.

    An ``img2img`` stage with ``seamfix: T`` (> 0) is followed by a ``seamfix`` stage with
    threshold T that re-renders its worst seams with the same model at low strength; it is one
    more stage of :attr:`stages`, of ``plan()`` and of the progress events.

    ``seams``: the seam scores of the last run (:mod:`tiledsr.seams`), a
    :class:`~tiledsr.seams.SeamReport` per stage measured (tiled stages, measured on their output as
    it streams, latent ones on the decoded pixels; ``seamfix`` stages with how many seams they
    repaired and the scores before), in stage order; filled in as the stages finish, [] before.
    """

    def __init__(self, stages: Sequence[Mapping[str, Any]] | Preset, *, device: str | None = None,
                 precision: str | None = None, seed: int | None = None, target: Target | None = None,
                 threads: int | None = None, scratch_dir: str | None = None, memory_budget: int | str | None = None,
                 print_size: Any = None):
        preset = stages if isinstance(stages, Preset) else validate({"stages": list(stages)}, "pipeline")
        self._budget = _budget_bytes(memory_budget)
        self._base_tiling: dict[int, Any] = {}
        self.explicit_tile = False  # a tile given by the user: the planner keeps it
        if isinstance(print_size, str):
            from .printsize import parse_print

            print_size = parse_print(print_size)
        if print_size is not None and target is not None:
            raise InputError("give a print size or a target size, not both")
        self.print_size = print_size
        self.preset = preset
        self.target = target
        self._device = device or preset.device
        self.runtime = Runtime(self._device, precision or preset.precision,
                               preset.seed if seed is None else seed, threads, scratch_dir)
        self.stages: list[Stage] = _with_seamfix(
            [stage_class(s.type)(s.config, s.tiling, self.runtime) for s in preset.stages])
        self.seams: list = []
        self._loaded = False

    @classmethod
    def from_preset(cls, name_or_path: str = "photo-x4", *, overrides: Mapping[str, Any] = {},
                    sets: Sequence[str] = (), **kwargs) -> "Pipeline":
        """Pipeline from a bundled preset name or YAML path; ``overrides`` set top-level preset keys
        (tile, overlap, blend, batch, ...), ``sets`` are ``--set``-style ``STAGE.KEY=VALUE`` items.

        A ``tile`` given without an ``overlap`` brings the preset's overlap down in proportion
        (never up); a tile given here or by ``--set`` is kept as it is by the planner."""
        overrides = dict(overrides)
        if "tile" in overrides and "overlap" not in overrides:
            plain = load_preset(name_or_path)
            t = plain.tiling
            overrides["overlap"] = min(t.overlap, t.overlap * int(overrides["tile"]) // max(t.tile, 1))
        pipe = cls(load_preset(name_or_path, overrides, sets), **kwargs)
        pipe.explicit_tile = "tile" in overrides or any(
            s.split("=", 1)[0].strip().split(".")[-1] == "tile" for s in sets)
        return pipe

    def __reduce__(self):
        """Pickled as its recipe (the resolved preset and the settings it was built with), never
        its models: unpickling builds an unloaded pipeline that resolves its device and loads its
        models where it lands (a Ray worker), from the same preset."""
        settings = {"device": self._device, "precision": self.runtime.precision, "seed": self.runtime.seed,
                    "target": self.target, "threads": self.runtime.threads,
                    "scratch_dir": self.runtime.scratch_dir, "memory_budget": self._budget,
                    "print_size": self.print_size}
        return _rebuild, (self.preset, settings, self.explicit_tile)

    def _chain(self, height: int, width: int) -> list[Stage]:
        """Stages for an input of this size, plus a final exact resize when a target asks for one.

        A target scale is relative to the input, or to the first stage's output when that
        stage is a source (height and width 0)."""
        chain = list(self.stages)
        target = self._target_for(height, width)
        if target is not None:
            h, w = height, width
            for st in chain:
                h, w = st.output_size(h, w)
            ref = (height, width) if height else chain[0].output_size(0, 0)
            th, tw = target.size(*ref)
            if (th, tw) != (h, w):
                chain.append(ResizeStage(ResizeConfig(width=tw, height=th), self.preset.tiling, self.runtime))
        return chain

    def _print_target(self, height: int, width: int):
        """The print size's PrintTarget for an input of (height, width) (a source stage's output if 0)."""
        from .printsize import print_target

        if not height:
            height, width = self.stages[0].output_size(0, 0)
        return print_target(self.print_size, width, height)

    def _target_for(self, height: int, width: int) -> Target | None:
        if self.print_size is None:
            return self.target
        pt = self._print_target(height, width)
        return Target(width=pt.width, height=pt.height)

    def print_dpi(self) -> tuple[float, float] | None:
        """The DPI the print size asks to write, or None."""
        return None if self.print_size is None else self._print_target(1, 1).dpi

    def plan(self, size: tuple[int, int], channels: int = 3, on_disk: bool = False) -> Plan:
        """Plan for an input of ``size = (width, height)``: sizes, grids, memory. Loads no model.

        Each tiled stage gets the largest tile (up to its preset's) and batch whose estimated
        peak fits the memory budget, unless the tile was given explicitly; the stages keep it
        for the run that follows. ``on_disk``: the stages' outputs go to a work directory
        (a run to a file), never to RAM."""
        from .memory import BASE_BYTES, writer_bytes

        w, h = size
        budget = self.memory_budget()
        in_ram = 0 if on_disk else budget // 4
        chain = self._chain(h, w)
        source = 4 * h * w * channels
        held_in = 0  # the previous stage's output, when it is kept in RAM
        rows = []
        for i, st in enumerate(chain):
            problem = st.check_tiling()
            if problem:
                raise InputError(f"stage {i + 1} ({st.type}): {problem}")
            mh, mw = st.min_input_size()
            if st.consumes != "nothing" and (h < mh or w < mw):
                raise InputError(_too_small(chain, i, size, (h, w)))
            oh, ow = st.output_size(h, w)
            if max(oh, ow) > MAX_SIDE:
                raise InputError(f"stage {i + 1} ({st.type}) would make a {ow}x{oh} image; tiledsr handles at "
                                 f"most {MAX_SIDE} pixels a side")
            last = i == len(chain) - 1
            out_bytes = 4 * oh * ow * channels
            held_out = 0 if last or out_bytes > in_ram else out_bytes
            # (whole-image stages hold their output however it is kept: see their canvas estimate)
            other = BASE_BYTES + source + held_in + held_out + (writer_bytes(ow, channels, oh) if last else 0)
            self._fit(st, h, w, channels, budget - other)
            mem = st.memory_estimate(h, w, channels)
            peak = other + mem["tile"] + mem["canvas"]
            rows.append(StagePlan(i, st.describe(), (h, w), (oh, ow), st.grid(h, w), st.redundancy(h, w),
                                  mem["tile"], mem["canvas"], peak, st.tiling))
            h, w, held_in = oh, ow, held_out
        notes = ()
        if self.print_size is not None:
            pt = self._print_target(size[1], size[0])
            notes = (pt.note,) if pt.note else ()
        return Plan(tuple(rows), notes, budget)

    def _fit(self, st: Stage, h: int, w: int, channels: int, room: int) -> None:
        """Give ``st`` the largest tile and batch (up to its preset's) whose estimate fits ``room`` bytes."""
        from .memory import fit_tile

        base = self._base_tiling.setdefault(id(st), st.tiling)
        st.tiling = base
        if st.grid(h, w) is None or self.explicit_tile:
            return

        def estimate(tile: int, overlap: int, batch: int) -> int:
            st.tiling = dataclasses.replace(base, tile=tile, overlap=overlap, batch=batch)
            mem = st.memory_estimate(h, w, channels)
            return mem["tile"] + mem["canvas"]

        for batch in sorted({base.batch, 1}, reverse=True):
            fit = fit_tile(lambda t, o: estimate(t, o, batch), base.tile, base.overlap,
                           min(base.tile, st.least_tile()), room)
            if fit is not None:
                st.tiling = dataclasses.replace(base, tile=fit[0], overlap=fit[1], batch=batch)
                return
        least = min(base.tile, st.least_tile())  # nothing fits: the smallest (the run may still back off)
        st.tiling = dataclasses.replace(base, tile=least, overlap=min(base.overlap, base.overlap * least // base.tile),
                                        batch=1)

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
        ``progress`` gets a ``start`` event, the stages' events, then ``done``.
        """
        from .tiling.store import collect

        from .seams import as_dicts

        rep = Reporter(progress, len(self.stages))
        rep.emit("start")
        out = collect(self.stream(image, progress)[1])
        rep.emit("done", seams=as_dicts(self.seams))
        return out

    def output_shape(self, shape: tuple[int, int, int] | None) -> tuple[int, int, int]:
        """(H', W', C') of the output for an input of ``shape`` (H, W, C), or None before a source stage."""
        h, w, c = shape if shape is not None else (0, 0, 3)
        for st in self._chain(h, w):
            h, w = st.output_size(h, w)
        return h, w, c

    def stream(self, image: Any = None, progress: ProgressCallback | None = None, *,
               work: Any = None) -> tuple[tuple[int, int, int], Iterator[np.ndarray]]:
        """The output as ``(shape, bands)``: (H', W', C') and its consecutive row bands, computed as
        they are consumed, so memory follows the tiles in flight, never the image.

        ``image``: an (H, W, C) float32 array in [0, 1] on the CPU, a store
        (:mod:`tiledsr.tiling.store`), or None before a source stage. Bands are float32 in
        [0, 1]; with ``work`` (a :class:`~tiledsr.checkpoint.WorkDir`) every stage's output is
        kept there and the bands are the output's uint8/uint16 values, from the kept rows first.
        Between stages, an image larger than a quarter of the memory budget goes to a file in the
        scratch folder (the work directory, ``scratch_dir``, or the system's temporary folder).
        """
        from .tiling.store import ArrayStore

        self.load()
        first = self.stages[0]
        if image is None and first.consumes != "nothing":
            raise InputError(f"stage {first.type!r} needs an input image")
        store = ArrayStore(image) if isinstance(image, np.ndarray) else image
        shape = self.output_shape(store.shape if store is not None else None)
        h, w, c = store.shape if store is not None else (0, 0, 3)
        self.plan((w, h), c, on_disk=work is not None)  # tiles and batches fitted to the budget
        chain = self._chain(h, w)
        self.seams = []
        return shape, self._bands(store, chain, progress, work, _SeamBook(self.seams, store))

    def _bands(self, source, chain: list[Stage], progress, work, book: "_SeamBook") -> Iterator[np.ndarray]:
        """Each stage in order, the last one's bands handed on as they come; seam scores into ``book``."""
        import tempfile

        from .stages.base import StageReport
        from .tiling.store import ArrayStore, fill, new_store

        rep = Reporter(progress, len(chain))
        folder = work.folder if work is not None else (self.runtime.scratch_dir or tempfile.gettempdir())
        in_ram = self.memory_budget() // 4
        data, temps = source, []
        try:
            for i, st in enumerate(chain):
                last = i == len(chain) - 1
                held = any(getattr(later, "repairs_seams", False) for later in chain[i + 1:])
                kept = self._kept(work, i, st, last)
                if kept is not None:
                    # 1. Finished by an earlier run: its seams measured again from what was kept.
                    before, data = data, kept
                    if last and work is not None and hasattr(kept, "read"):
                        bands = work_bands(work, i, kept.shape, iter(()), kept.shape[0])
                        yield from book.kept(i, st, before, kept, bands)
                        return
                    book.kept(i, st, before, kept)
                    continue
                book.saw(data)
                data = self._convert(data, st, rep, i, book)
                report = StageReport(rep.tile, rep.note)
                if st.consumes == "pixels" and st.produces == "pixels":
                    # 2. A pixel stage, streamed band by band into the next stage's store (or handed on).
                    h, w, c = data.shape
                    shape = (*st.output_size(h, w), c)
                    grid = st.grid(h, w)
                    start = work.rows(i) if work is not None else 0
                    rep.stage(st.type, i, len(grid) if grid is not None else 1)
                    job = book.job(i, data) if getattr(st, "repairs_seams", False) else None
                    extra = {"seams": job} if getattr(st, "repairs_seams", False) else {}
                    meter = book.meter(st, grid, shape, data, job)
                    out = None if last else (work.store(i, shape) if work is not None else new_store(shape, in_ram,
                                                                                                    folder))
                    if meter is not None and start:
                        book.prefeed(meter, out if out is not None else work.store(i, shape, final=True), start)
                    bands = _guarded(st.stream(data, report, source, start, **extra), st, i, (h, w))
                    bands = meter.watch(bands) if meter is not None else bands
                    if last:
                        yield from (work_bands(work, i, shape, bands, start) if work is not None else bands)
                        book.record(i, st, meter, data, job)
                        return
                    temps.append(out)
                    fill(out, bands, start, (lambda r, i=i, out=out: work.advance(i, out, r)) if work else None)
                    if work is not None:
                        work.finish(i, out, shape[0])
                    book.record(i, st, meter, data, job)
                    if data in temps and not held:  # the previous intermediate is read no more
                        temps.remove(data)
                        data.close()
                else:
                    # 3. A whole-image stage (latents in or out); latents are measured once decoded.
                    size = _size_of(data)
                    grid = st.grid(*size) if size is not None else None
                    rep.stage(st.type, i, len(grid) if grid is not None else 1)
                    arg = data.read(0, data.shape[0]) if hasattr(data, "read") else data
                    steps = work.steps(i) if work is not None and _fused(st) else None
                    out = _run_stage(st, i, arg, report, _array(source), steps)
                    book.produced(i, st, grid, out)
                    if isinstance(out, np.ndarray):
                        out = ArrayStore(out)
                    elif work is not None:
                        work.save_latents(i, out)
                    if work is not None and isinstance(out, ArrayStore):
                        if last:
                            yield from work_bands(work, i, out.shape, iter([out.array]), 0)
                            return
                        kept_store = work.store(i, out.shape)
                        kept_store.write(0, out.array)
                        work.finish(i, kept_store, out.shape[0])
                data = out
            # 4. Back to pixels.
            pixels = self._to_pixels(data, rep, len(chain) - 1, book)
            if work is not None:
                yield from work_bands(work, len(chain), pixels.shape, iter([pixels]), 0)
            else:
                yield pixels
        finally:
            for t in temps:
                t.close()

    def _kept(self, work, i: int, st: Stage, last: bool):
        """What ``work`` kept of stage ``i`` when it finished: a store or Latents; else None."""
        if work is None or not work.done(i):
            return None
        entry = work.progress.get(str(i), {})
        if entry.get("kind") == "latents":
            return work.load_latents(i, st.codec, self.runtime.device)
        shape = tuple(entry.get("shape", ()))
        if len(shape) != 3:
            return None
        return work.store(i, shape, final=last)

    def memory_budget(self) -> int:
        """Bytes this run may use: ``memory_budget``, else a safe fraction of the memory available now."""
        if self._budget is not None:
            return self._budget
        from .machine import default_budget

        return default_budget(self.runtime.device)

    def _convert(self, data, st: Stage, rep: Reporter, index: int, book: "_SeamBook"):
        """Hand ``data`` to ``st`` in the form it consumes (tiled VAE encode/decode if needed)."""
        from .tiling.store import ArrayStore

        if st.consumes == "nothing":
            return None
        if st.consumes == "pixels":
            if hasattr(data, "read"):
                return data
            return ArrayStore(self._to_pixels(data, rep, index, book))
        from .diffusion.codec import Latents

        if isinstance(data, Latents) and data.codec.space == st.codec.space:
            return data
        pixels = self._to_pixels(data, rep, index, book)
        rep.stage("encode", index, len(st.codec.grid(*pixels.shape[:2])))
        return st.codec.encode(pixels, rep.tile)

    @staticmethod
    def _to_pixels(data, rep: Reporter, index: int, book: "_SeamBook | None" = None) -> np.ndarray:
        if isinstance(data, np.ndarray):
            return data
        if hasattr(data, "read"):
            return data.read(0, data.shape[0])
        rep.stage("decode", index, len(data.codec.grid(*data.size)))
        pixels = data.codec.decode(data, rep.tile)
        if book is not None:
            book.decoded(pixels)
        return pixels

    def __call__(self, image: Any = None, progress: ProgressCallback | None = None) -> Any:
        """Upscale a PIL image, a numpy (H, W[, C]) array (uint8, uint16 or float in [0, 1]) or a
        torch tensor (C, H, W) / (1, C, H, W) float in [0, 1]; returns the same kind (a PIL
        image when there is no input because the first stage is a source). A PIL result carries
        :attr:`seams` as dicts in ``info["tiledsr_seams"]``."""
        from .seams import as_dicts

        if image is None:
            from .imageconv import to_pil

            out = to_pil(self.run_array(None, progress))
        else:
            out = to_like(self.run_array(from_any(image), progress), image)
        from PIL import Image

        if isinstance(out, Image.Image):  # the seam scores as tiledsr.upscale gives them
            out.info["tiledsr_seams"] = as_dicts(self.seams)
        return out


SEAMFIX_STRENGTH = 0.25  # img2img's own seamfix re-renders at this strength, or the stage's if lower


def _with_seamfix(stages: list[Stage]) -> list[Stage]:
    """``stages`` with a ``seamfix`` stage after every img2img stage whose ``seamfix`` threshold is > 0:
    the same model, prompts, steps and scheduler, at low strength."""
    from .stages.seamfix import SeamfixConfig, SeamfixStage

    out = []
    for st in stages:
        out.append(st)
        threshold = getattr(st.config, "seamfix", 0.0) if st.type == "img2img" else 0.0
        if threshold and threshold > 0:
            c = st.config
            strength = min(SEAMFIX_STRENGTH, c.strength)
            if int(c.steps * strength) < 1:
                strength = c.strength
            cfg = SeamfixConfig(threshold=threshold, model=c.model, strength=strength, steps=c.steps, prompt=c.prompt,
                                negative_prompt=c.negative_prompt, guidance=c.guidance,
                                scheduler=getattr(c, "scheduler", "default"))
            out.append(SeamfixStage(cfg, st.tiling, st.runtime))
    return out


class _SeamBook:
    """The seam scores of one run, stage by stage (into ``reports``: :attr:`Pipeline.seams`), and what
    a seam-repairing stage is handed (:class:`~tiledsr.seams.SeamJob`).

    A tiled pixel stage is measured on its output bands against its input; a tiled stage with
    latent output on the pixels its latents are decoded to (the last of a run of latent stages,
    against the pixels before that run); a ``seamfix`` stage at the seams it was handed, against the
    same reference, after its repair."""

    def __init__(self, reports: list, source: Any):
        self.reports = reports
        self.pixels = _as_store(source)  # the latest pixels seen: a latent run's reference
        self.last: tuple | None = None  # (index, seams, scores, reference, shape) of the last stage measured
        self.pending: tuple | None = None  # a latent stage to measure once decoded: (index, type, grid, reference)

    def saw(self, data) -> None:
        """``data`` is a stage's input: the reference of a latent run when it is pixels."""
        if isinstance(data, np.ndarray) or hasattr(data, "read"):
            self.pixels = _as_store(data)

    def meter(self, st: Stage, grid, shape, data, job):
        """The SeamMeter for a pixel stage's output of ``shape`` (None when there is nothing to measure)."""
        from .seams import SeamMeter, seam_lines

        if getattr(st, "repairs_seams", False):
            return SeamMeter(job.seams, shape, job.reference) if job is not None and job.seams else None
        seams = seam_lines(grid, *shape[:2])
        return SeamMeter(seams, shape, data) if seams else None

    def job(self, i: int, data):
        """The seams of the last stage measured, at the size of ``data`` (stage ``i``'s input), with their
        scores: the ones measured when it is stage i - 1 of the same size, else measured on ``data``."""
        from .seams import SeamJob, measure_store, rescaled

        if self.last is None:
            return None
        j, seams, scores, ref, shape = self.last
        if tuple(shape[:2]) != tuple(data.shape[:2]):
            seams, scores = rescaled(seams, shape[:2], data.shape[:2]), None
        if j != i - 1 or scores is None:
            scores = [s.score for s in measure_store(data, seams, ref)]
        return SeamJob(tuple(seams), tuple(scores), ref)

    @staticmethod
    def prefeed(meter, store, start: int, rows: int = 256) -> None:
        """Rows an earlier run made (resume), read back from ``store`` into ``meter``."""
        for y in range(0, start, rows):
            meter.feed(store.read(y, min(start, y + rows)))

    def record(self, i: int, st: Stage, meter, reference, job=None) -> None:
        """Stage ``i`` finished: its report."""
        from .seams import SeamReport, SeamScore

        if getattr(st, "repairs_seams", False):
            if job is None or meter is None:
                self.reports.append(SeamReport(st.type, i, (), repaired=0))
                return
            after = meter.result()
            before = tuple(SeamScore(s, v) for s, v in zip(job.seams, job.scores))
            self.reports.append(SeamReport(st.type, i, after, len(job.repaired), before))
            self.last = (i, job.seams, [a.score for a in after], job.reference, meter.shape)
        elif meter is not None:
            scores = meter.result()
            self.reports.append(SeamReport(st.type, i, scores))
            self.last = (i, meter.seams, [a.score for a in scores], reference, meter.shape)

    def produced(self, i: int, st: Stage, grid, out) -> None:
        """A whole-image stage made ``out``: pixels are measured now, latents once decoded."""
        self.pending = None if grid is None else (i, st, grid, self.pixels)
        if isinstance(out, np.ndarray):
            self.decoded(out)

    def decoded(self, pixels: np.ndarray) -> None:
        """Latents were decoded to ``pixels``: the stage that made them is measured on them."""
        from .seams import SeamMeter, seam_lines

        if self.pending is None:
            return
        i, st, grid, ref = self.pending
        self.pending = None
        seams = seam_lines(grid, *pixels.shape[:2])
        if seams:
            meter = SeamMeter(seams, pixels.shape, ref)
            meter.feed(pixels)
            self.record(i, st, meter, ref)

    def kept(self, i: int, st: Stage, before, kept, bands=None):
        """Stage ``i`` was finished by an earlier run (its input ``before``, its output ``kept``): measured
        again from what was kept; for the last stage, as its kept ``bands`` are handed on (returned)."""
        from .seams import SeamMeter, seam_lines

        self.saw(before)
        size = _size_of(before)
        if not hasattr(kept, "read"):  # latents
            self.produced(i, st, st.grid(*size) if size is not None else None, kept)
            return bands if bands is not None else ()
        job = None
        if getattr(st, "repairs_seams", False):
            job = self.job(i, before) if hasattr(before, "read") else None
            if job is not None:
                job.repaired = tuple(st.select(job))
            seams, ref = (job.seams, job.reference) if job is not None else ((), None)
        else:
            ref = before if hasattr(before, "read") else None
            seams = seam_lines(st.grid(*size), *kept.shape[:2]) if size is not None else ()
        meter = SeamMeter(seams, kept.shape, ref) if seams else None
        if bands is not None:
            return self._handed(i, st, meter, ref, job, bands)
        if meter is not None:
            self.prefeed(meter, kept, kept.shape[0])
        self.record(i, st, meter, ref, job)
        return ()

    def _handed(self, i, st, meter, ref, job, bands):
        yield from (meter.watch(bands) if meter is not None else bands)
        self.record(i, st, meter, ref, job)


def _as_store(data):
    from .tiling.store import ArrayStore

    return ArrayStore(data) if isinstance(data, np.ndarray) else data


def _rebuild(preset: Preset, settings: dict, explicit_tile: bool) -> Pipeline:
    """An unloaded Pipeline from :meth:`Pipeline.__reduce__`'s recipe."""
    pipe = Pipeline(preset, **settings)
    pipe.explicit_tile = explicit_tile
    return pipe


def _sides(h: int, w: int) -> str:
    return f"{h} px per side" if h == w else f"{w}x{h} px"


def _too_small(chain: Sequence[Stage], index: int, size: tuple[int, int], got: tuple[int, int]) -> str:
    """One line for an input ``size`` (W, H) too small for stage ``index`` (whose input is ``got``, (H, W)):
    the smallest input the whole chain accepts."""
    st, (w, h) = chain[index], size
    own = _sides(*st.min_input_size())
    if chain[0].consumes == "nothing":  # a source: no input to make larger
        return f"stage {index + 1} ({st.type}) needs an input of at least {own}, got {got[1]}x{got[0]}"
    least = _sides(*_least_input(chain, h, w))
    if index == 0 and least == own:
        return f"{st.type} needs an input of at least {own}, got {w}x{h}"
    return f"this pipeline needs an input of at least {least} (stage {index + 1}, {st.type}, needs {own}), got {w}x{h}"


def _least_input(chain: Sequence[Stage], height: int, width: int) -> tuple[int, int]:
    """Smallest (H, W) input every stage of ``chain`` accepts: each side searched with the other as given."""
    def fits(h: int, w: int, axis: int) -> bool:
        for st in chain:
            if (h, w)[axis] < st.min_input_size()[axis]:
                return False
            h, w = st.output_size(h, w)
        return True

    least = []
    for axis in (0, 1):
        lo, hi = 1, MAX_SIDE
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if fits(*((mid, width) if axis == 0 else (height, mid)), axis) else (mid + 1, hi)
        least.append(lo)
    return least[0], least[1]


def _run_stage(st: Stage, index: int, data, rep, image, steps=None):
    """``st.run``, with running out of memory reported as OutOfMemory naming the stage."""
    try:
        if steps is not None:
            return st.run(data, rep, image, checkpoint=steps)
        return st.run(data, rep, image)
    except (MemoryError, RuntimeError) as exc:
        raise _oom(exc, st, index, _size_of(data)) from exc


def _oom(exc: BaseException, st: Stage, index: int, size):
    """``exc`` as the OutOfMemory naming the stage, or ``exc`` itself when it is not one."""
    from .errors import as_out_of_memory

    where = f"stage {index + 1} ({st.describe()})" + (f" on a {size[1]}x{size[0]} image" if size else "")
    tiled = size is not None and st.grid(*size) is not None
    oom = as_out_of_memory(exc, where, "try a smaller --tile" if tiled else "choose a smaller output size")
    return exc if oom is None else oom


def _guarded(bands: Iterator[np.ndarray], st: Stage, index: int, size) -> Iterator[np.ndarray]:
    """``bands`` with running out of memory reported as OutOfMemory naming the stage."""
    try:
        yield from bands
    except (MemoryError, RuntimeError) as exc:
        err = _oom(exc, st, index, size)
        if err is exc:
            raise
        raise err from exc


def _fused(st: Stage) -> bool:
    """A stage whose per-step state can be kept (fused denoising)."""
    import inspect

    return "checkpoint" in inspect.signature(st.run).parameters and getattr(st, "consumes", "") == "latents"


def _array(source):
    """The pipeline's input as an array for whole-image stages, or None."""
    if source is None or isinstance(source, np.ndarray):
        return source
    return source.read(0, source.shape[0])


def work_bands(work, i: int, shape, bands: Iterator[np.ndarray], start: int) -> Iterator[np.ndarray]:
    """The final output as uint8/uint16 bands at ``work.depth``: rows kept by an earlier run first,
    then ``bands`` (float, from row ``start``), each quantised and kept before it is handed on."""
    from .io.write import quantize

    store = work.store(i, shape, final=True)
    step = max(1, (32 << 20) // max(1, shape[1] * shape[2] * 2))
    for y in range(0, start, step):
        yield store.read(y, min(start, y + step))
    y = start
    for band in bands:
        q = quantize(band, work.depth)
        store.write(y, q)
        y += len(q)
        work.advance(i, store, y)
        yield q
    work.finish(i, store, y)


def _size_of(data) -> tuple[int, int] | None:
    """Pixel (H, W) that ``data`` stands for: an image, Latents, or None before a source stage."""
    if data is None:
        return None
    if isinstance(data, np.ndarray) or hasattr(data, "read"):
        return tuple(data.shape[:2])
    return data.size
