"""``tiledsr.upscale``: the one-call Python entry point, with every option of the command line."""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any, Literal, Sequence

from .errors import Cancelled, InputError
from .imageconv import from_any, to_pil
from .pipeline import Pipeline, Target
from .progress import ProgressCallback, ProgressEvent

__all__ = ["upscale"]


def upscale(src: Any, dst: str | Path | None = None, *, preset: str = "photo-x4", scale: float | None = None,
            width: int | None = None, height: int | None = None, size: tuple[int, int] | None = None,
            print_size: str | None = None, device: str | None = None, precision: str | None = None,
            seed: int | None = None, tile: int | None = None, overlap: int | None = None,
            sets: Sequence[str] = (), progress: ProgressCallback | None = None, overwrite: bool = False,
            format: str | None = None, max_pixels: int | None = None, memory_budget: int | str | None = None,
            work_dir: str | Path | None = None, resume: bool = False, restart: bool = False,
            engine: Literal["local", "ray"] = "local", address: str | None = None,
            compare: str | Path | None = None, preview: str | Path | None = None,
            preview_every: float = 2.0) -> Any:
    """Upscale ``src`` (a file path, PIL image, numpy array or tensor) with ``preset``.

    The keywords are the command line's options (``tiledsr upscale --help``): the final size
    from ``scale``, ``width``/``height``, ``size`` (W, H) or ``print_size`` (``"24x36in@300"``,
    which also sets the DPI written); ``memory_budget`` in bytes or ``"6GB"`` (tiles and
    batches are fitted to it); ``sets``: ``"STAGE.KEY=VALUE"`` items.

    Without ``dst`` it returns a PIL image (8-bit, or 16-bit greyscale). With ``dst`` the file
    is written atomically as the last stage's rows come, so memory follows the tiles, not the
    image; it keeps bit depth, alpha, ICC profile, EXIF and DPI, never overwrites an existing
    file or the input unless ``overwrite``, and is checked before any work. The result is then
    the written file opened lazily by Pillow (None where Pillow cannot open it, e.g. 16-bit
    colour TIFF, or for ``dst="-"``, stdout). A file ``src`` written to a file ``dst`` runs as
    the command line runs it: read by row bands, its finished work kept in a work directory
    (beside ``dst``, or under ``work_dir``) until the file is written, so that after a crash or
    a :class:`~tiledsr.errors.Cancelled` run ``resume=True`` continues it (``restart=True``
    discards it); ``compare`` writes the side-by-side picture, ``preview`` a live JPEG
    (``preview`` events). ``engine="ray"`` spreads the tiles over a Ray cluster
    (``address``, default a local one). ``progress`` gets :class:`~tiledsr.ProgressEvent`\\ s
    (``start``, stages, tiles, ``done``); returning False cancels. What could not be kept
    (metadata dropped on reading or writing) is reported with ``warnings.warn``.

    A returned PIL image carries the run's seam scores in ``image.info["tiledsr_seams"]``: a list
    with a dict per stage measured (``stage``, ``stage_index``, ``worst``, ``median``, ``count``;
    ``repaired``, ``worst_before``, ``median_before`` for ``seamfix``), as in the ``done`` event's
    ``seams`` (see :mod:`tiledsr.seams`; not written into the file).
    """
    if size is not None:
        if width is not None or height is not None:
            raise InputError("give size or width/height, not both")
        width, height = size
    if (scale is not None or print_size is not None) and (width or height):
        raise InputError("give scale, print_size or width/height/size, not both")
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be 'local' or 'ray', got {engine!r}")
    if address is not None and engine != "ray":
        raise InputError("address names a Ray cluster; give it with engine='ray'")
    overrides = {k: v for k, v in (("tile", tile), ("overlap", overlap)) if v is not None}
    target = Target(scale, width, height) if (scale, width, height) != (None, None, None) else None
    pipe = Pipeline.from_preset(preset, overrides=overrides, sets=sets, device=device, precision=precision,
                                seed=seed, target=target, memory_budget=memory_budget, print_size=print_size)
    events = _Events(progress)
    with _engine(pipe, engine, address):
        if _is_path(src) and _is_path(dst) and str(dst) != "-":
            return _file_to_file(pipe, str(src), str(dst), events, overwrite=overwrite, format=format,
                                 max_pixels=max_pixels, work_dir=work_dir, resume=resume, restart=restart,
                                 compare=compare, preview=preview, preview_every=preview_every)
        if resume or restart or compare is not None or preview is not None:
            raise InputError("resume, restart, compare and preview need a file src and a file dst")
        return _in_memory(pipe, src, dst, events, overwrite, format, max_pixels)


class _Events:
    """``emit(event, **fields)`` for the user's callback: events stamped from the call's start;
    a callback that returns False cancels the run (:class:`~tiledsr.errors.Cancelled`)."""

    def __init__(self, callback: ProgressCallback | None):
        self.callback, self.t0 = callback, time.perf_counter()

    def __call__(self, event: str, **fields) -> None:
        if self.callback is None:
            return
        fields.setdefault("elapsed", round(time.perf_counter() - self.t0, 3))
        if self.callback(ProgressEvent(event, **fields)) is False:
            raise Cancelled("cancelled by the progress callback")

    def stage_events(self, src: str | None):
        """The pipeline's own events, passed on with ``input`` set (None for an image in memory)."""
        from .job import event_fields

        return lambda ev: self(ev.event, **event_fields(ev, src))


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, Path, os.PathLike))


def _file_to_file(pipe: Pipeline, src: str, dst: str, events: _Events, *, overwrite: bool, format: str | None,
                  max_pixels: int | None, work_dir, resume: bool, restart: bool, compare, preview,
                  preview_every: float) -> Any:
    """As ``tiledsr upscale SRC -o DST``: every check first, then the run, resumably."""
    from . import io as tio
    from .batch import plan_jobs
    from .job import RunOptions, run_job

    # 1. Check everything before loading any model.
    if Path(src).is_dir():
        raise InputError(f"{tio.meta.quoted(src)} is a folder; upscale() takes one image (the command line "
                         "runs folders)")
    limit = max_pixels or tio.DEFAULT_MAX_PIXELS
    job, = plan_jobs(pipe, [src], output=dst, out_dir=None, format=format, overwrite=overwrite,
                     max_pixels=limit, work={"resume": resume, "restart": restart,
                                             "work_dir": None if work_dir is None else str(work_dir)}).jobs
    _check_paths(job, compare, preview, overwrite)
    # 2. Run, then the picture to compare.
    pipe.load()
    options = RunOptions(overwrite=overwrite, resume=resume, restart=restart,
                         preview=None if preview is None else str(preview), preview_every=preview_every,
                         max_pixels=limit)
    run_job(pipe, job, options, events, lambda line: warnings.warn(f"tiledsr: {line}", stacklevel=5))
    if compare is not None:
        from .compare import write_compare

        write_compare(src, dst, str(compare), overwrite=overwrite, max_pixels=limit,
                      label=f"tiledsr {pipe.preset.name}")
    return _with_seams(_opened(dst), pipe)


def _check_paths(job, compare, preview, overwrite: bool) -> None:
    from .livepreview import check_preview_path

    if compare is not None:
        from .compare import check_compare_path

        check_compare_path(str(compare), inputs=[job.src], outputs=[job.dst], overwrite=overwrite)
    if preview is not None:
        check_preview_path(str(preview), others=[job.src, job.dst, *([str(compare)] if compare else [])])


def _in_memory(pipe: Pipeline, src: Any, dst, events: _Events, overwrite: bool, format: str | None,
               max_pixels: int | None) -> Any:
    """An image (or a file read by rows) to a returned image, or to ``dst`` (a path or "-")."""
    from . import io as tio
    from .seams import as_dicts
    from .tiling.store import RowsStore, collect

    info, image = None, None
    if _is_path(src):
        rows = tio.open_rows(src, max_pixels or tio.DEFAULT_MAX_PIXELS)
        image, info = RowsStore(rows), rows.info
    else:
        image = from_any(src)
    name = str(src) if info is not None else None
    try:
        h, w, c = image.shape
        depth = pipe.preset.output.bit_depth or (info.bit_depth if info else 8)
        notes = list(info.notes) if info else []
        inputs = [src] if info is not None else ()
        if dst is not None:  # refuse a bad destination before the work, not after it
            plan = pipe.plan((w, h), c)
            fmt = tio.check_output(dst, format=format or pipe.preset.output.format, size=plan.output_size,
                                   channels=c, bit_depth=pipe.preset.output.bit_depth, overwrite=overwrite,
                                   inputs=inputs)
            notes += plan.notes
        events("start", input=name, output=None if dst is None else str(dst))
        shape, bands = pipe.stream(image, events.stage_events(name))
        if dst is None:
            out = collect(bands)
        else:
            notes += tio.write_bands(dst, bands, size=shape[:2], channels=shape[2], bit_depth=depth, format=fmt,
                                     icc_profile=info.icc_profile if info else None,
                                     exif=info.exif if info else None,
                                     dpi=pipe.print_dpi() or (info.dpi if info else None), overwrite=overwrite,
                                     inputs=inputs)
        events("done", input=name, output=None if dst is None else str(dst), seams=as_dicts(pipe.seams))
    finally:
        if info is not None:
            image.close()
    for note in notes:  # metadata dropped, 16 bits or alpha the format cannot hold
        warnings.warn(f"tiledsr: {note}", stacklevel=3)
    return _with_seams(_opened(dst) if dst is not None else to_pil(out, depth), pipe)


class _engine:
    """``engine="ray"``: the tiles of the run go to Ray workers (see :mod:`tiledsr.distributed`)."""

    def __init__(self, pipe: Pipeline, engine: str, address: str | None):
        self.pipe, self.engine, self.address, self._cm = pipe, engine, address, None

    def __enter__(self):
        if self.engine == "ray":
            from .distributed import spread_tiles

            self._cm = spread_tiles(self.pipe, self.address)
            self._cm.__enter__()
        return self

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc) if self._cm is not None else False


SEAMS_KEY = "tiledsr_seams"  # the PIL image's info key of the run's seam scores


def _with_seams(image: Any, pipe: Pipeline) -> Any:
    """``image`` (a PIL image or None) with the run's seam scores in ``info["tiledsr_seams"]``."""
    from .seams import as_dicts

    from PIL import Image

    if isinstance(image, Image.Image):
        image.info[SEAMS_KEY] = as_dicts(pipe.seams)
    return image


def _opened(dst) -> Any:
    """The written file as a lazily loaded PIL image (no pixel limit: it is our own output), or None."""
    from PIL import Image

    if str(dst) == "-":
        return None
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(dst)
    except Exception:  # noqa: BLE001 - a layout Pillow does not read
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
