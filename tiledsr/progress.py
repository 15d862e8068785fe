"""Typed progress events, a reporter that times them, and the CLI's renderers.

A callback receives :class:`ProgressEvent` objects; returning ``False`` (or
raising :class:`~tiledsr.errors.Cancelled`) cancels the run.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Optional, TextIO

from .errors import Cancelled

__all__ = ["JsonRenderer", "BarRenderer", "ProgressCallback", "ProgressEvent", "Reporter"]

EventKind = Literal["start", "stage", "progress", "backoff", "preview", "done", "warning", "note", "error"]


@dataclass(frozen=True)
class ProgressEvent:
    """One event of a run, as the callback and ``--progress json`` get it.

    ``event``: ``start`` (an image begins: ``input``, ``output``), ``stage`` (a stage begins,
    ``tile`` 0 of ``tiles``), ``progress`` (``tile`` finished tiles (0..tiles) of stage
    ``stage`` (number ``stage_index`` of ``stages``, from 0); diffusion stages add ``step`` of
    ``steps``), ``backoff`` (out of memory: smaller tiles from now on; ``message``),
    ``preview`` (the live preview at ``preview`` shows the first ``rows`` rows of the output),
    ``warning`` (``message``), ``done`` (``output`` written; ``seams``: the seam scores of the
    run, a list with one dict per stage measured, ``{"stage", "stage_index", "worst", "median",
    "count"}``, plus ``"repaired"``, ``"worst_before"`` and ``"median_before"`` for a ``seamfix``
    stage; see :mod:`tiledsr.seams`), ``error`` (``message``, exit ``code``). ``elapsed`` and
    ``eta`` are seconds; fields that do not apply are None.
    """

    event: EventKind
    stage: Optional[str] = None
    stage_index: Optional[int] = None
    stages: Optional[int] = None
    tile: Optional[int] = None
    tiles: Optional[int] = None
    step: Optional[int] = None
    steps: Optional[int] = None
    elapsed: float = 0.0
    eta: Optional[float] = None
    input: Optional[str] = None
    output: Optional[str] = None
    message: Optional[str] = None
    code: Optional[int] = None
    preview: Optional[str] = None
    rows: Optional[int] = None
    seams: Optional[list] = None

    def to_dict(self) -> dict:
        """Plain dict without the fields that are None."""
        return {k: v for k, v in asdict(self).items() if v is not None}


ProgressCallback = Callable[[ProgressEvent], Optional[bool]]


class Reporter:
    """Stamps events with elapsed time and a per-stage ETA, and forwards them to a callback."""

    def __init__(self, callback: ProgressCallback | None, stages: int):
        self.callback = callback
        self.stages = stages
        self.t0 = time.perf_counter()
        self._stage_t0 = self.t0
        self._stage: tuple[str, int] | None = None

    def emit(self, event: EventKind, **fields) -> None:
        if self.callback is None:
            return
        ev = ProgressEvent(event, elapsed=round(time.perf_counter() - self.t0, 3), **fields)
        if self.callback(ev) is False:
            raise Cancelled("cancelled by the progress callback")

    def stage(self, name: str, index: int, tiles: int) -> None:
        self._stage, self._stage_t0 = (name, index), time.perf_counter()
        self.emit("stage", stage=name, stage_index=index, stages=self.stages, tile=0, tiles=tiles)

    def tile(self, done: int, total: int, step: int | None = None, steps: int | None = None) -> None:
        assert self._stage is not None
        spent = time.perf_counter() - self._stage_t0
        eta = round(spent / done * (total - done), 3) if done else None
        name, index = self._stage
        self.emit("progress", stage=name, stage_index=index, stages=self.stages, tile=done, tiles=total,
                  step=step, steps=steps, eta=eta)


    def note(self, message: str) -> None:
        """A ``backoff`` event: the stage ran out of memory and goes on with smaller tiles."""
        name, index = self._stage if self._stage is not None else (None, None)
        self.emit("backoff", stage=name, stage_index=index, stages=self.stages, message=message)


class JsonRenderer:
    """Writes each event as one JSON object per line (to stderr by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def __call__(self, event: ProgressEvent) -> None:
        self.stream.write(json.dumps(event.to_dict()) + "\n")
        self.stream.flush()


class BarRenderer:
    """A tqdm bar per stage, on stderr."""

    def __init__(self):
        self._bar = None

    def __call__(self, event: ProgressEvent) -> None:
        from tqdm import tqdm

        if event.event == "stage":
            self.close()
            label = f"[{event.stage_index + 1}/{event.stages}] {event.stage}"
            self._bar = tqdm(total=event.tiles, desc=label, unit="tile", leave=True, file=sys.stderr)
        elif event.event == "progress" and self._bar is not None:
            done, total = event.tile, event.tiles
            if event.steps:  # diffusion: tiles at every step
                done, total = (event.step - 1) * event.tiles + event.tile, event.tiles * event.steps
                self._bar.set_postfix_str(f"step {event.step}/{event.steps}", refresh=False)
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._bar.n)
        elif event.event == "backoff" and event.message:
            tqdm_write = __import__("tqdm").tqdm.write
            tqdm_write(f"tiledsr: note: {event.message}", file=sys.stderr)
        elif event.event in ("done", "error"):
            self.close()
            if event.event == "done" and event.output:
                sys.stderr.write(f"wrote {event.output} ({event.elapsed:.1f} s)\n")
            if event.event == "done" and event.seams:
                from .seams import report_line

                for entry in event.seams:  # one plan-style line per stage measured
                    sys.stderr.write(report_line(entry) + "\n")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
