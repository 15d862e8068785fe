"""Time the installed CPU backends on this machine, and remember which is fastest.

``auto`` on the CPU (:func:`tiledsr.models.runner.choose_backend`) follows a saved measurement
when there is one for the model, this machine and the thread count; otherwise it takes the order
of tiledsr's own benchmark (:data:`~tiledsr.models.runner.CPU_PREFERENCE`). Nothing is measured
implicitly: ``tiledsr models --measure`` (or :func:`measure_backends` then :func:`save_measurement`)
does it on request, so a normal run never spends time timing backends.

The measurements live in ``cache_root() / "backends.json"``: one entry per key (the model's name,
architecture, scale and channels; the CPU model, its core count and ``threads``; the installed
versions of torch, openvino and ncnn), each ``{"seconds": {backend: median seconds per call},
"size": tile side in input pixels, "date": ISO time}``. The file is written atomically; a folder
that cannot be written is skipped, and a damaged file reads as empty.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tiledsr.errors import TiledsrError
from tiledsr.models.openvino_runner import cache_root
from tiledsr.models.registry import SRModel
from tiledsr.models.runner import CPU_PREFERENCE, cannot_run, make_runner

__all__ = ["cache_file", "measure_backends", "measured_choice", "save_measurement"]

TIE = 0.05  # a backend this close to the fastest that comes earlier in CPU_PREFERENCE wins


def cache_file() -> Path:
    """Where the measurements are kept: ``cache_root() / "backends.json"``."""
    return cache_root() / "backends.json"


def measure_backends(model: SRModel, threads: int | None = None, size: int = 96,
                     repeats: int = 3) -> dict[str, float]:
    """{backend: median seconds of one call} on a 1 x in_channels x size x size float32 tile in
    [0, 1] (``size`` in input pixels, rounded up to ``model.size_multiple``), for every installed
    backend that can run ``model`` on the CPU at fp32, fastest first. Each runner is built (not
    timed), called once to warm up, then timed ``repeats`` times with ``time.perf_counter``. A
    backend that fails to build or run (any TiledsrError) is left out."""
    side = -(-size // model.size_multiple) * model.size_multiple
    tile = np.random.default_rng(0).random((1, model.in_channels, side, side), dtype=np.float32)
    seconds = {}
    for name in CPU_PREFERENCE:
        if cannot_run(model, name, "fp32") is None:
            try:
                seconds[name] = _time_one(make_runner(model, backend=name, threads=threads), tile, repeats)
            except TiledsrError:
                continue
    return dict(sorted(seconds.items(), key=lambda item: item[1]))


def _time_one(runner: Any, tile: np.ndarray, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``runner`` on ``tile``, after one warm-up call."""
    runner(tile)
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        runner(tile)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def save_measurement(model: SRModel, seconds: dict[str, float], size: int,
                     threads: int | None = None) -> bool:
    """Store ``seconds`` (as :func:`measure_backends` returns them, for ``size`` px tiles) for this
    model, machine and ``threads``; False (and nothing raised) when the cache cannot be written."""
    entries = _read()
    entries[_key(model, threads)] = {"seconds": {k: float(v) for k, v in seconds.items()}, "size": int(size),
                                     "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    return _write(entries)


def measured_choice(model: SRModel, precision: str = "auto",
                    threads: int | None = None) -> tuple[str, str] | None:
    """(backend, why) from the saved measurement for this model, machine and ``threads``: the fastest
    of the measured backends still installed and able to run at ``precision``, where one within 5%
    of it that comes earlier in CPU_PREFERENCE (less memory) wins the tie. None when nothing usable
    is saved."""
    entries = _read()
    if not entries:
        return None
    entry = entries.get(_key(model, threads))
    try:
        size = int(entry["size"])
        seconds = {str(k): float(v) for k, v in entry["seconds"].items()}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None
    usable = {k: v for k, v in seconds.items()
              if k in CPU_PREFERENCE and v > 0 and cannot_run(model, k, precision) is None}
    if not usable:
        return None
    best = min(usable.values())
    pick = next(k for k in CPU_PREFERENCE if usable.get(k, float("inf")) <= best * (1 + TIE))
    times = ", ".join(f"{k} {v:.2f} s" for k, v in sorted(usable.items(), key=lambda item: item[1]))
    if usable[pick] == best:
        return pick, f"measured fastest on this CPU: {times} per {size} px tile"
    return pick, f"measured on this CPU: {times} per {size} px tile; {pick} is within 5% of the fastest and lighter"


def _key(model: SRModel, threads: int | None) -> str:
    """The cache key: the model (not its weights), this machine, ``threads`` and the backends' versions."""
    parts = [f"{model.name} {model.arch} x{model.scale} {model.in_channels}->{model.out_channels}",
             _cpu_name(), f"{os.cpu_count()} cpus", f"threads {threads or 'default'}",
             *(f"{pkg} {_version(pkg)}" for pkg in ("torch", "openvino", "ncnn"))]
    return " | ".join(parts)


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else platform.processor() (or the machine type)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "-"


@functools.lru_cache(maxsize=None)
def _version(package: str) -> str:
    """The installed version of ``package`` from its metadata (nothing imported), else "-"."""
    if package == "torch":
        return torch.__version__
    import importlib.metadata

    try:
        return importlib.metadata.version(package)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return "-"


def _read() -> dict[str, Any]:
    """The saved entries; {} when the file is missing, unreadable or damaged."""
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(entries: dict[str, Any]) -> bool:
    """Replace the cache file atomically (a temp file beside it, then os.replace); False on failure."""
    path = cache_file()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".backends-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False
