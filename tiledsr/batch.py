"""A batch of inputs for ``tiledsr upscale``: every input found and probed, every output path
worked out and checked before any work starts.

No output of a run may land on another output of the same run or on any of its inputs
(with ``--overwrite`` an image may replace its own input); folders skip the files that an
earlier run of tiledsr wrote (their metadata says so).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import InputError
from .io.checks import output_format
from .io.meta import EXTENSIONS, ImageInfo, quoted

__all__ = ["Batch", "Job", "check_collisions", "expand_inputs", "output_name", "plan_jobs"]

EXT_OF = {fmt: ext for ext, fmt in reversed(EXTENSIONS.items())}  # each format's first extension


@dataclass(frozen=True)
class Job:
    """One image: ``src`` (a path or "-"), its header ``info``, output ``dst`` ("-" = stdout),
    resolved ``format`` and final ``size`` (H, W)."""

    src: str
    info: ImageInfo
    dst: str
    format: str | None
    size: tuple[int, int]
    work: Any = None  # WorkRef: where its finished work is kept, or None (streams)
    dpi: tuple[float, float] | None = None  # from --print
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkRef:
    """The work directory of a job: ``folder`` and the run's ``key``."""

    folder: Any
    key: str


@dataclass(frozen=True)
class Batch:
    """The checked jobs of a run, and warnings to show before it starts."""

    jobs: tuple[Job, ...]
    warnings: tuple[str, ...]


def plan_jobs(pipe: Any, inputs: Sequence[str], *, output: str | None, out_dir: str | None,
              format: str | None, overwrite: bool, max_pixels: int, work: dict | None = None) -> Batch:
    """Every check that can be made before a model loads, for a batch through ``pipe``.

    Inputs are found and their headers read; outputs are named, sized and checked against each
    other, the inputs and the formats' limits; models must be available and the memory estimate
    within reach of this machine; ``out_dir`` is created last. ``work`` (``resume``,
    ``restart``, ``work_dir``) gives file-to-file jobs a work directory, and refuses one that
    holds an earlier run's unfinished work unless resumed or restarted. Raises InputError (2),
    ModelNotAvailable (3) or OutOfMemory (4).
    """
    from . import io as tio
    from .machine import total_memory

    # 1. Inputs: folders expanded, headers read, earlier outputs of tiledsr left out.
    files, from_folders = expand_inputs(inputs)
    infos = {f: tio.probe(f, max_pixels) for f in files}
    earlier = {f for f in from_folders if written_by_tiledsr(infos[f])}  # only what folders brought
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
                plans[f].output_size, dpi=pipe.print_dpi(), notes=plans[f].notes) for f in files]
    check_collisions(jobs, overwrite)
    # 4. Memory.
    total = total_memory()
    for plan in plans.values():
        plan.check_fits(total)
    # 5. The output folder and files (other inputs were checked above, its own input here).
    with _made_dir(out_dir):
        jobs = [replace(j, format=tio.check_output(
            j.dst, format=fmt or (j.info.format if j.dst == "-" else None), size=j.size,
            channels=j.info.channels, bit_depth=pipe.preset.output.bit_depth, overwrite=overwrite,
            inputs=[j.src])) for j in jobs]
    tio.remove_stale_temps(*(j.dst for j in jobs if j.dst != "-"))
    if work is not None:
        jobs = [replace(j, work=_work_ref(pipe, j, **work)) for j in jobs]
    notes = [f"skipped {len(earlier)} image(s) that an earlier run of tiledsr wrote (e.g. {quoted(min(earlier))}); "
             "name them explicitly to upscale them again"] if earlier else []
    for plan in plans.values():  # the same warning once, however many images share it
        notes += [w for w in plan.warnings if w not in notes]
    return Batch(tuple(jobs), tuple(notes))


def _work_ref(pipe: Any, job: Job, *, resume: bool, restart: bool, work_dir: str | None) -> WorkRef | None:
    """The job's work directory (file to file only); InputError when it holds unfinished work
    and neither ``resume`` nor ``restart`` is asked for."""
    from .checkpoint import check_disk, check_unfinished, disk_needed, file_digest, run_key, work_folder

    if job.src == "-" or job.dst == "-" or not _is_regular_file(Path(job.src)):
        return None
    depth = pipe.preset.output.bit_depth or job.info.bit_depth
    settings = (os.path.abspath(job.dst), pipe.preset, pipe.target, pipe.print_size, pipe.runtime, depth, job.format,
                job.info.channels)
    key = run_key(file_digest(job.src), settings)
    folder = work_folder(job.dst, key, work_dir)
    check_unfinished(folder, key, resume=resume, restart=restart, output=job.dst)
    check_disk(folder, disk_needed(pipe.plan((job.info.width, job.info.height), job.info.channels),
                                   job.info.channels, depth))
    return WorkRef(folder, key)


@contextlib.contextmanager
def _made_dir(folder: str | None) -> Iterator[None]:
    """Create ``folder`` (and missing parents) for the block; remove what was created if it fails."""
    if folder is None:
        yield
        return
    path = Path(folder)
    try:
        if path.exists() and not path.is_dir():
            raise InputError(f"--out-dir {quoted(folder)} is a file, not a folder; pass a folder")
        created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create --out-dir {quoted(folder)}: {err.strerror or err}; "
                         "check the path and its permissions") from err
    try:
        yield
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()
        raise


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], set[str]]:
    """Files named on the command line, folders expanded (sorted; hidden files left out), the
    same file named twice kept once. Returns ``(files, the ones that came from folders)``."""
    files: list[str] = []
    from_folders: set[str] = set()
    seen: set[str] = set()
    for item in inputs:
        folder = item != "-" and os.path.isdir(item)
        for f in _images_in(item) if folder else [item]:
            key = f if f == "-" else os.path.realpath(f)
            if key not in seen:
                seen.add(key)
                files.append(f)
                if folder:
                    from_folders.add(f)
    if files.count("-") > 1:
        raise InputError("stdin (-) can be read only once")
    return files, from_folders


def _images_in(folder: str) -> list[str]:
    """The image files in ``folder``, sorted; InputError when it cannot be listed or has none."""
    try:
        found = sorted(str(f) for f in Path(folder).iterdir()
                       if not f.name.startswith(".") and f.suffix.lower() in EXTENSIONS and f.is_file())
    except OSError as err:
        raise InputError(f"cannot list folder {quoted(folder)}: {err.strerror or err}; check its permissions") from err
    if not found:
        raise InputError(f"folder {quoted(folder)} holds no .png, .jpg, .tif or .webp images")
    return found


def written_by_tiledsr(info: ImageInfo) -> bool:
    """True when the file's metadata says tiledsr wrote it."""
    return (info.software or "").lower().startswith("tiledsr")


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
        ext = EXT_OF[output_format("-", fmt)]  # jpg, tif and any case accepted
    elif p.suffix.lower() in EXTENSIONS:
        ext = p.suffix
    else:
        ext = EXT_OF[info.format]
    name = f"{p.stem}_{tag}{ext}"
    if out_dir is None and not _is_regular_file(p):
        raise InputError(f"input {quoted(src)} is not a regular file, so there is no folder to write "
                         "its output to; pass -o OUT or --out-dir DIR")
    return str(Path(out_dir) / name) if out_dir else str(p.with_name(name))


def _is_regular_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False


def _keys(path: str) -> set:
    """Identities of a path, existing or not: its resolved name (symlinked folders followed) and,
    when it exists, its (device, inode), so hard links match too."""
    keys: set = {os.path.normcase(os.path.realpath(path))}
    try:
        st = os.stat(path)
        keys.add((st.st_dev, st.st_ino))
    except (OSError, ValueError):
        pass
    return keys


def check_collisions(jobs: Sequence[Job], overwrite: bool) -> None:
    """InputError naming both inputs when an output would land on another output or on an
    input of this run; its own input only with ``overwrite``. Linear in the batch size."""
    inputs: dict = {}
    for job in jobs:
        if job.src != "-":
            inputs.update(dict.fromkeys(_keys(job.src), job))
    outputs: dict = {}
    for job in (j for j in jobs if j.dst != "-"):
        keys = _keys(job.dst)
        other = next((outputs[k] for k in keys if k in outputs), None)
        if other is not None:
            raise InputError(f"inputs {quoted(other.src)} and {quoted(job.src)} would both be written to "
                             f"{quoted(job.dst)}; give them different names, another --format, or separate runs")
        outputs.update(dict.fromkeys(keys, job))
        src = next((inputs[k] for k in keys if k in inputs), None)
        if src is None or (src is job and overwrite):
            continue
        what = "its own input" if src is job else f"the input {quoted(src.src)}"
        raise InputError(f"the output of {quoted(job.src)} would be written over {what} ({quoted(job.dst)}); "
                         "choose another output name or --out-dir" + (", or pass --overwrite" if src is job else ""))
