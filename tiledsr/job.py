"""One image of a batch, file to file: read by rows, run, write as the bands come, resumably.

The command line and :func:`tiledsr.upscale` both run images through :func:`run_job`, so a
file upscaled from Python is read, written, checkpointed and previewed exactly as from the
command line. Events go to ``emit(event, **fields)`` (the fields of
:class:`~tiledsr.progress.ProgressEvent`; every one carries ``input``), warnings to ``warn``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["RunOptions", "run_job"]

Emit = Callable[..., Optional[bool]]  # emit(event, **fields); False cancels


@dataclass(frozen=True)
class RunOptions:
    """How a job runs: ``overwrite`` the output, ``resume`` or ``restart`` its unfinished work,
    keep a live ``preview`` JPEG (rewritten at most every ``preview_every`` seconds),
    ``max_pixels`` of an input."""

    overwrite: bool = False
    resume: bool = False
    restart: bool = False
    preview: Optional[str] = None
    preview_every: float = 2.0
    max_pixels: Optional[int] = None


def run_job(pipe: Any, job: Any, options: RunOptions, emit: Emit, warn: Callable[[str], None],
            call: Callable[[Callable[[], Any]], Any] = lambda fn: fn(),
            resumable: Callable[[bool], None] = lambda flag: None) -> None:
    """Run ``job`` (a :class:`~tiledsr.batch.Job`) through the loaded ``pipe``: ``start``,
    stage and tile events, ``done`` (with the run's ``seams``, :attr:`Pipeline.seams` as dicts).
    ``call(fn)`` runs the work (the CLI runs it in an interruptible worker thread);
    ``resumable(True)`` is called while a work directory holds the image's finished work. Raises what the run raises; the work directory is removed on success
    and on errors that would recur (exit codes 2, 3 and 4)."""
    emit("start", input=job.src, output=job.dst)
    for line in job.notes:
        warn(f"{job.src}: {line}")
    from .seams import as_dicts

    notes, info = _upscale(pipe, job, options, emit, warn, call, resumable)
    for note in (*info.notes, *notes):
        warn(f"{job.src}: {note}")
    emit("done", input=job.src, output=job.dst, seams=as_dicts(pipe.seams))


def _upscale(pipe, job, options: RunOptions, emit: Emit, warn, call, resumable):
    """Returns (notes of the writer, the input's ImageInfo)."""
    from . import io as tio
    from .checkpoint import WorkDir
    from .errors import TiledsrError
    from .tiling.store import RowsStore

    rows = tio.open_rows(job.src, options.max_pixels or tio.DEFAULT_MAX_PIXELS)
    rows.read(rows.shape[0] - 1, rows.shape[0])  # a file cut short fails here, before any work
    image, info = RowsStore(rows), rows.info
    depth = pipe.preset.output.bit_depth or info.bit_depth
    work = None
    if job.work is not None:
        work = WorkDir.open(job.work.folder, job.work.key, len(pipe._chain(info.height, info.width)), depth,
                            resume=options.resume, restart=options.restart, output=job.dst)
        resumable(True)

    def progress(ev) -> Optional[bool]:
        return emit(ev.event, **event_fields(ev, job.src))

    def run():
        shape, bands = pipe.stream(image, progress, work=work)
        bands = previewed(options, emit, warn, job.src, shape, bands)
        return tio.write_bands(job.dst, bands, size=shape[:2], channels=shape[2], bit_depth=depth,
                               format=job.format, icc_profile=info.icc_profile, exif=info.exif,
                               dpi=job.dpi or info.dpi, overwrite=options.overwrite, inputs=[job.src])

    try:
        notes = call(run)
    except TiledsrError as exc:
        if work is not None and exc.exit_code in (2, 3, 4):  # the same run would fail again
            work.remove()
        raise
    finally:
        image.close()
        if work is not None:
            work.close()
    if work is not None:
        work.remove()
        resumable(False)
    return notes, info


def event_fields(ev: Any, src: str | None) -> dict:
    """A pipeline event's fields for ``emit``, with ``input`` set (``elapsed`` is re-stamped
    by the receiver from the start of the whole command)."""
    d = ev.to_dict()
    d.pop("event")
    d.pop("elapsed")
    d["input"] = src
    return d


def previewed(options: RunOptions, emit: Emit, warn: Callable[[str], None], src: str, shape, bands):
    """``bands`` with the live preview of ``options.preview`` kept up to date (``preview`` events;
    a preview that cannot be written is one warning, and the run goes on)."""
    if not options.preview:
        return bands
    from .livepreview import preview_bands

    def shown(path: str, rows: int) -> None:
        emit("preview", input=src, preview=os.path.abspath(path), rows=rows)

    return preview_bands(bands, shape[:2], options.preview, options.preview_every, shown, warn)
