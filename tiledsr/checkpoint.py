"""Work directories: the finished work of a run, kept so that ``--resume`` continues it.

A run writes each stage's output rows into a file of the work directory as they become
final (float32 for intermediate stages, the output's 8 or 16 bits for the last one), the
latents of diffusion stages, and for fused denoising the state after every step (latent
canvas, scheduler state, random generator). ``progress.json`` says how much of each is
finished; it is replaced atomically and only after the data it counts is on disk, so a kill
at any moment leaves a consistent directory. A resumed run skips finished stages, continues
a stage from its first unfinished row (tiles that reach those rows are recomputed, and sums
are exact, so the rows equal an uninterrupted run's), and re-encodes the output from the
kept rows: the file is bit-identical.

The directory is keyed by a hash of the input's bytes, the resolved preset, the settings and
the tiledsr version; it holds only tensors, arrays and JSON (loaded with
``torch.load(weights_only=True)``, never unpickled).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .text import show

__all__ = ["StepState", "WorkDir", "check_disk", "check_unfinished", "disk_needed", "file_digest", "run_key",
           "work_folder"]

PREFIX = ".tiledsr-work-"
SAVE_EVERY = 2.0  # seconds between progress saves within a stage (TILEDSR_CHECKPOINT_EVERY overrides)


def _save_every() -> float:
    try:
        return max(0.0, float(os.environ.get("TILEDSR_CHECKPOINT_EVERY", SAVE_EVERY)))
    except ValueError:
        return SAVE_EVERY


def run_key(input_digest: str, settings: Any) -> str:
    """Hex key of a run: the input's digest, ``repr(settings)`` and the tiledsr version."""
    from . import __version__

    text = json.dumps([__version__, input_digest, repr(settings)])
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def work_folder(output: str | Path, key: str, work_dir: str | Path | None = None) -> Path:
    """Where the work of a run goes: beside the output, or under ``work_dir``."""
    parent = Path(work_dir) if work_dir is not None else Path(os.path.abspath(output)).parent
    return parent / f"{PREFIX}{key[:16]}"


def disk_needed(plan, channels: int, depth: int) -> int:
    """Bytes a work directory holds for ``plan``: float32 outputs of the intermediate stages, the
    output's rows at ``depth`` bits."""
    sizes = [st.output_size for st in plan.stages]
    inner = sum(4 * h * w * channels for h, w in sizes[:-1])
    h, w = sizes[-1]
    return inner + h * w * channels * depth // 8


def check_disk(folder: Path, needed: int) -> None:
    """TiledsrError (exit 1) when the disk holding ``folder`` has not ``needed`` bytes free (with the
    output itself, whose compressed size is not known, left a quarter more)."""
    from .errors import TiledsrError
    from .machine import format_bytes

    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if needed * 5 // 4 > free:
        raise TiledsrError(f"this run keeps about {format_bytes(needed)} of finished work in {show(str(folder))} "
                           f"but its disk has {format_bytes(free)} free; free some space, pass --work-dir on a "
                           "larger disk, or choose a smaller output size")


def check_unfinished(folder: Path, key: str, *, resume: bool, restart: bool, output: str = "") -> None:
    """InputError (exit 2) when ``folder`` holds an earlier run's work and neither flag is given."""
    if Path(folder).exists() and not (resume or restart):
        done = WorkDir(folder, key, 0, 8)._load(Path(folder) / "progress.json")
        raise InputError(f"found the unfinished work of an earlier run for {show(output)} in {show(str(folder))} "
                         f"({done}); pass --resume (Python: resume=True) to continue it or --restart "
                         "(restart=True) to start afresh")


class WorkDir:
    """The work directory of one run of ``stages`` stages; ``depth`` is the output's bit depth."""

    def __init__(self, folder: Path, key: str, stages: int, depth: int):
        self.folder, self.key, self.stages, self.depth = Path(folder), key, stages, depth
        self.progress: dict[str, dict] = {}
        self._saved = 0.0
        self._open: list = []

    @classmethod
    def open(cls, folder: Path, key: str, stages: int, depth: int, *, resume: bool, restart: bool,
             output: str = "") -> "WorkDir":
        """The work directory, created, reset (``restart``) or continued (``resume``).

        InputError when one exists and neither is asked for (exit 2, nothing touched)."""
        work = cls(folder, key, stages, depth)
        state = folder / "progress.json"
        if folder.exists() and not restart:
            check_unfinished(folder, key, resume=resume, restart=restart, output=output)
            work._load(state)
        else:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"cannot create the work directory {show(str(folder))}: "
                                 f"{exc.strerror or exc}; pass --work-dir DIR") from exc
            work._write()
        return work

    def _load(self, state: Path) -> str:
        """Read progress.json; a describing phrase for messages."""
        try:
            data = json.loads(state.read_text())
            if data.get("key") != self.key:
                raise ValueError("key")
            self.progress = {str(k): dict(v) for k, v in data.get("stages", {}).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            self.progress = {}
            return "its progress file is unreadable, so it starts afresh"
        done = sum(1 for v in self.progress.values() if v.get("done"))
        return f"{done} stage(s) finished"

    def _write(self) -> None:
        tmp = self.folder / "progress.json.tmp"
        tmp.write_text(json.dumps({"key": self.key, "stages": self.progress}))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.folder / "progress.json")

    # --- pixel stages ---------------------------------------------------------------------------

    def done(self, i: int) -> bool:
        return bool(self.progress.get(str(i), {}).get("done"))

    def rows(self, i: int) -> int:
        """Output rows of stage ``i`` finished and on disk."""
        return int(self.progress.get(str(i), {}).get("rows", 0))

    def store(self, i: int, shape: tuple[int, int, int], final: bool = False):
        """The file holding stage ``i``'s output rows (reopened when it exists)."""
        from .tiling.store import FileStore

        dtype = (np.uint8 if self.depth == 8 else np.uint16) if final else np.float32
        path = self.folder / f"stage{i}.{np.dtype(dtype).name}"
        entry = self.progress.setdefault(str(i), {"rows": 0})
        fresh = not path.exists() or entry.get("shape") != list(shape)
        if fresh:
            entry.update(rows=0, shape=list(shape), done=False)
        store = FileStore(path, shape, keep=True, create=fresh, dtype=dtype)
        store.rows_done = self.rows(i) if not fresh else 0
        self._open.append(store)
        return store

    def advance(self, i: int, store, rows: int, *, force: bool = False) -> None:
        """Record ``rows`` finished rows of stage ``i`` (saved every few seconds, or now with ``force``)."""
        now = time.monotonic()
        if not force and now - self._saved < _save_every():
            return
        store.sync()
        self.progress.setdefault(str(i), {})["rows"] = rows
        self._write()
        self._saved = now

    def finish(self, i: int, store=None, rows: int = 0) -> None:
        """Stage ``i`` is complete."""
        if store is not None:
            store.sync()
        entry = self.progress.setdefault(str(i), {})
        entry.update(done=True, rows=rows)
        self._write()

    # --- diffusion stages -----------------------------------------------------------------------

    def save_latents(self, i: int, latents) -> None:
        """Keep a stage's :class:`~tiledsr.diffusion.codec.Latents` output; marks it done."""
        import torch

        data = {"tensor": latents.tensor.detach().cpu(), "size": torch.tensor(latents.size),
                "grey": torch.tensor(int(latents.grey))}
        if latents.alpha is not None:
            data["alpha"] = torch.from_numpy(np.ascontiguousarray(latents.alpha))
        _save(self.folder / f"stage{i}.latents", data)
        self.progress[str(i)] = {"done": True, "kind": "latents"}
        self._write()

    def load_latents(self, i: int, codec, device):
        """The Latents kept for stage ``i`` (on ``device``), or None."""
        from .diffusion.codec import Latents

        data = _load(self.folder / f"stage{i}.latents")
        if data is None:
            return None
        alpha = data["alpha"].numpy() if "alpha" in data else None
        return Latents(data["tensor"].to(device), codec, tuple(int(v) for v in data["size"]), alpha,
                       bool(int(data["grey"])))

    def steps(self, i: int) -> "StepState":
        """The per-step state keeper of a fused diffusion stage ``i``."""
        return StepState(self.folder / f"stage{i}.steps")

    def close(self) -> None:
        for store in self._open:
            store.close()
        self._open.clear()

    def remove(self) -> None:
        """The run is finished: remove the directory."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class StepState:
    """State of a fused denoising loop after each step: step count, latent canvas, scheduler, generator."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict | None:
        """``{"step": n, "latents": tensor, "scheduler": dict, "generator": tensor | None}`` or None."""
        return _load(self.path)

    def save(self, step: int, latents, scheduler, generator) -> None:
        import torch

        state = {"step": torch.tensor(step), "latents": latents.detach().cpu(),
                 "scheduler": scheduler_state(scheduler)}
        if generator is not None:
            state["generator"] = generator.get_state()
        _save(self.path, state)


def scheduler_state(scheduler) -> dict:
    """The mutable state of a diffusers scheduler (everything but its config) as tensors and plain values."""
    return {k: _plain(v) for k, v in vars(scheduler).items() if k not in ("config", "_internal_dict")
            and _storable(v)}


def restore_scheduler(scheduler, state: dict) -> None:
    """Put :func:`scheduler_state`'s values back into ``scheduler``."""
    import torch

    for k, v in state.items():
        v, old = _unplain(v), getattr(scheduler, k, None)
        if isinstance(v, torch.Tensor) and isinstance(old, torch.Tensor):
            v = v.to(old.device)
        setattr(scheduler, k, v)


def _storable(v) -> bool:
    import torch

    if v is None or isinstance(v, (bool, int, float, str, torch.Tensor, np.ndarray)):
        return True
    if isinstance(v, (list, tuple)):
        return all(_storable(x) for x in v)
    return False


def _plain(v):
    if isinstance(v, np.ndarray):
        import torch

        return {"__ndarray__": torch.from_numpy(np.ascontiguousarray(v))}
    if isinstance(v, tuple):
        return {"__tuple__": [_plain(x) for x in v]}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _unplain(v):
    if isinstance(v, dict) and "__ndarray__" in v:
        return v["__ndarray__"].numpy()
    if isinstance(v, dict) and "__tuple__" in v:
        return tuple(_unplain(x) for x in v["__tuple__"])
    if isinstance(v, list):
        return [_unplain(x) for x in v]
    return v


def _save(path: Path, data: dict) -> None:
    import torch

    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load(path: Path) -> dict | None:
    import torch

    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - missing or damaged: that work is redone
        return None
