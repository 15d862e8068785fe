"""A batch of inputs for ``tiledsr upscale``: every input found and probed, every output path
worked out and checked before any work starts.

No output of a run may land on another output of the same run or on any of its inputs
(with ``--overwrite`` an image may replace its own input); folders skip the files that an
earlier run of tiledsr wrote (their metadata says so).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError
from .io.meta import EXTENSIONS, ImageInfo, quoted

__all__ = ["Batch", "Job", "check_collisions", "expand_inputs", "output_name", "plan_jobs"]

EXT_OF = {"PNG": ".png", "JPEG": ".jpg", "JPG": ".jpg", "TIFF": ".tif", "TIF": ".tif", "WEBP": ".webp"}


@dataclass(frozen=True)
class Job:
    """One image: ``src`` (a path or "-"), its header ``info``, output ``dst`` ("-" = stdout),
    resolved ``format`` and final ``size`` (H, W)."""

    src: str
    info: ImageInfo
    dst: str
    format: str | None
    size: tuple[int, int]


@dataclass(frozen=True)
class Batch:
    """The checked jobs of a run, and warnings to show before it starts."""

    jobs: tuple[Job, ...]
    warnings: tuple[str, ...]


def plan_jobs(pipe: Any, inputs: Sequence[str], *, output: str | None, out_dir: str | None,
              format: str | None, overwrite: bool, max_pixels: int) -> Batch:
    """Every check that can be made before a model loads, for a batch through ``pipe``.

    Inputs are found and their headers read; outputs are named, sized and checked against each
    other, the inputs and the formats' limits; models must be available and the memory estimate
    within reach of this machine; ``out_dir`` is created last. Raises InputError (2),
    ModelNotAvailable (3) or OutOfMemory (4).
    """
    from . import io as tio
    from .machine import total_memory

    # 1. Inputs: folders expanded, headers read, earlier outputs of tiledsr left out.
    files, from_folders = expand_inputs(inputs)
    infos = {f: tio.probe(f, max_pixels) for f in files}
    earlier = {f for f in from_folders if written_by_tiledsr(infos[f])}
    files = [f for f in files if f not in earlier]
    if not files:
        raise InputError(f"no images to upscale: the {len(earlier)} image(s) found were written by an earlier "
                         "run of tiledsr; name a file explicitly to upscale it again")
    if output and len(files) > 1:
        raise InputError(f"-o names one output file but there are {len(files)} inputs; use --out-dir DIR")
    # 2. Models (all of them; before sizes, which some models decide).
    pipe.check_models()
    # 3. Outputs: a path and size for each, colliding with nothing else of this run.
    fmt = format or pipe.preset.output.format
    plans = {f: pipe.plan((infos[f].width, infos[f].height), infos[f].channels) for f in files}
    jobs = [Job(f, infos[f], output or output_name(f, infos[f], plans[f].output_size, fmt, out_dir), None,
                plans[f].output_size) for f in files]
    check_collisions(jobs, overwrite)
    # 4. Memory.
    total = total_memory()
    for plan in plans.values():
        plan.check_fits(total)
    # 5. The output folder and files.
    sources = [f for f in files if f != "-"]
    with _made_dir(out_dir):
        jobs = [replace(j, format=tio.check_output(
            j.dst, format=fmt or (j.info.format if j.dst == "-" else None), size=j.size,
            channels=j.info.channels, bit_depth=pipe.preset.output.bit_depth, overwrite=overwrite,
            inputs=sources)) for j in jobs]
    for j in jobs:
        if j.dst != "-":
            tio.remove_stale_temps(j.dst)
    notes = [f"skipped {len(earlier)} image(s) that an earlier run of tiledsr wrote (e.g. {quoted(min(earlier))}); "
             "name them explicitly to upscale them again"] if earlier else []
    notes += dict.fromkeys(w for p in plans.values() for w in p.warnings)
    return Batch(tuple(jobs), tuple(notes))


class _made_dir:
    """Create ``folder`` (and missing parents) on entry; remove what was created if the block fails."""

    def __init__(self, folder: str | None):
        self.folder, self.created = folder, []

    def __enter__(self) -> None:
        if self.folder is None:
            return
        path = Path(self.folder)
        if path.exists() and not path.is_dir():
            raise InputError(f"--out-dir {quoted(self.folder)} is a file, not a folder; pass a folder")
        missing = [p for p in (path, *path.parents) if not p.exists()]
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create --out-dir {quoted(self.folder)}: {err.strerror or err}; "
                             "check the path and its permissions") from err
        self.created = missing

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None:
            for p in self.created:  # deepest first
                try:
                    p.rmdir()
                except OSError:
                    break


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files named on the command line, folders expanded (sorted; hidden files left out), the
    same file named twice kept once. Returns ``(files, from_folders)``."""
    files: list[str] = []
    from_folders: list[str] = []
    seen: set[str] = set()
    for item in inputs:
        if item != "-" and os.path.isdir(item):
            found = sorted(str(f) for f in Path(item).iterdir()
                           if not f.name.startswith(".") and f.suffix.lower() in EXTENSIONS and f.is_file())
            if not found:
                raise InputError(f"folder {quoted(item)} holds no .png, .jpg, .tif or .webp images")
            from_folders += found
        else:
            found = [item]
        for f in found:
            key = f if f == "-" else os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
    if files.count("-") > 1:
        raise InputError("stdin (-) can be read only once")
    return files, from_folders


def written_by_tiledsr(info: ImageInfo) -> bool:
    """True when the file's metadata says tiledsr wrote it."""
    return (getattr(info, "software", None) or "").lower().startswith("tiledsr")


def output_name(src: str, info: ImageInfo, size: tuple[int, int], fmt: str | None,
                out_dir: str | None) -> str:
    """Default output path: ``NAME_x4.png`` for a whole-number scale, else ``NAME_4000x3000.png``
    (by the final size); beside the input, or in ``out_dir``. ``fmt`` overrides the extension."""
    if src == "-":
        raise InputError("reading from stdin needs -o OUT (or -o - for stdout)")
    p = Path(src)
    oh, ow = size
    k = ow // info.width if info.width else 0
    tag = f"x{k}" if k and (ow, oh) == (k * info.width, k * info.height) else f"{ow}x{oh}"
    if fmt:
        ext = EXT_OF[fmt.upper()]
    elif p.suffix.lower() in EXTENSIONS:
        ext = p.suffix
    else:
        ext = EXT_OF[info.format]
    name = f"{p.stem}_{tag}{ext}"
    if out_dir is None and not _regular_or_missing(p):
        raise InputError(f"input {quoted(src)} is not a regular file, so there is no folder to write "
                         "its output to; pass -o OUT or --out-dir DIR")
    return str(Path(out_dir) / name) if out_dir else str(p.with_name(name))


def _regular_or_missing(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False


def _key(path: str) -> str:
    """Comparable identity of a path, existing or not (symlinked folders resolved)."""
    return os.path.normcase(os.path.realpath(path))


def _same(a: str, b: str) -> bool:
    if _key(a) == _key(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def check_collisions(jobs: Sequence[Job], overwrite: bool) -> None:
    """InputError naming both inputs when an output would land on another output or on an
    input of this run; its own input only with ``overwrite``."""
    by_output: dict[str, Job] = {}
    for job in jobs:
        if job.dst == "-":
            continue
        other = by_output.get(_key(job.dst))
        if other is not None:
            raise InputError(f"inputs {quoted(other.src)} and {quoted(job.src)} would both be written to "
                             f"{quoted(job.dst)}; give them different names, another --format, or separate runs")
        by_output[_key(job.dst)] = job
    inputs = [j for j in jobs if j.src != "-"]
    for job in jobs:
        if job.dst == "-":
            continue
        for src in inputs:
            if src is job and overwrite:
                continue
            if _same(job.dst, src.src):
                what = "its own input" if src is job else f"the input {quoted(src.src)}"
                raise InputError(f"the output of {quoted(job.src)} would be written over {what} "
                                 f"({quoted(job.dst)}); choose another output name or --out-dir"
                                 + ("" if src is not job else ", or pass --overwrite"))
