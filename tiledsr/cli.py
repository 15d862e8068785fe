"""Command line: ``tiledsr upscale | plan | presets | models``. Errors are one line and an exit code."""
from __future__ import annotations

import argparse
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

from .errors import InputError, OutOfMemory, TiledsrError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"}
EXT_OF = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "webp": ".webp"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2
        raise InputError(f"{self.prog}: {message} (see --help)")


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {v}")
        return v
    return parse


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not m or 0 in (int(m[1]), int(m[2])):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels like 4096x2048, got {text!r}")
    return int(m[1]), int(m[2])


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="photo-x4", help="bundled preset name or YAML file (default photo-x4)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--scale", type=_positive_float, help="final scale factor, e.g. 2 or 3.5")
    size.add_argument("--size", type=_size, help="exact final size WIDTHxHEIGHT")
    p.add_argument("--width", type=_int_at_least(1), help="final width (height follows the aspect unless given)")
    p.add_argument("--height", type=_int_at_least(1), help="final height (width follows the aspect unless given)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="STAGE.KEY=VALUE",
                   help="override a preset value, e.g. sr.model=x4plus-anime or tile=512 (repeatable)")
    p.add_argument("--tile", type=_int_at_least(1), help="tile size in output pixels (all stages)")
    p.add_argument("--overlap", type=_int_at_least(0), help="tile overlap in output pixels (all stages)")
    p.add_argument("--device", type=_device, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"])
    p.add_argument("--max-pixels", type=_int_at_least(1), help="largest input in pixels (decompression-bomb guard)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tiledsr", description="Tiled image upscaling (Real-ESRGAN, Lanczos; diffusion to come).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, required=True)

    up = sub.add_parser("upscale", help="upscale images")
    up.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="image files, folders, or - for stdin (none when the preset starts with txt2img)")
    out = up.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", help="output file (one input), or - for stdout")
    out.add_argument("--out-dir", help="folder for the outputs")
    _add_run_options(up)
    up.add_argument("--seed", type=_int_at_least(0))
    up.add_argument("--progress", choices=["bar", "json", "none"], default="bar")
    up.add_argument("--overwrite", action="store_true", help="allow replacing existing files, even the input")
    up.add_argument("--format", choices=["png", "jpeg", "tiff", "webp"], help="output format")

    pl = sub.add_parser("plan", help="show sizes, tiles and memory for a run; loads no model")
    pl.add_argument("input", metavar="INPUT", nargs="?", help="image (not needed when the preset starts with txt2img)")
    _add_run_options(pl)
    pl.add_argument("--preview", metavar="GRID.png", help="draw the tile grid over the image")

    pr = sub.add_parser("presets", help="list presets, or show one resolved")
    pr.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    pr.add_argument("name", nargs="?")

    mo = sub.add_parser("models", help="list known models and whether they are available offline; fetch one")
    mo.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    mo.add_argument("model_id", nargs="?", metavar="ID", help="hub id to download into the Hugging Face cache")
    mo.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _pipeline(args):
    from .pipeline import Pipeline, Target

    overrides = {k: getattr(args, k) for k in ("tile", "overlap") if getattr(args, k) is not None}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    width, height = args.size if args.size else (args.width, args.height)
    if args.scale is not None and (width or height):
        raise InputError("give --scale or --width/--height/--size, not both")
    target = Target(args.scale, width, height) if (args.scale or width or height) else None
    return Pipeline.from_preset(args.preset, overrides=overrides, sets=args.sets, device=args.device,
                                precision=args.precision, target=target)


def _expand_inputs(inputs: Sequence[str]) -> list[str]:
    files: list[str] = []
    for item in inputs:
        p = Path(item)
        if item != "-" and p.is_dir() and p.suffix.lower() not in IMAGE_EXTS:
            found = sorted(str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            if not found:
                raise InputError(f"folder {item!r} holds no .png, .jpg, .tif or .webp images")
            files += found
        else:
            files.append(item)
    return files


def _output_path(args, src: str, info, factor: float, several: bool) -> str:
    fmt = args.format
    if args.output:
        if several:
            raise InputError("-o names one output file but there are several inputs; use --out-dir DIR")
        return args.output
    if src == "-":
        raise InputError("reading from stdin needs -o OUT (or -o - for stdout)")
    p = Path(src)
    ext = EXT_OF[fmt] if fmt else p.suffix
    name = f"{p.stem}_x{factor:g}{ext}"
    return str(Path(args.out_dir) / name) if args.out_dir else str(p.with_name(name))


def cmd_upscale(args, emit) -> int:
    from . import io as tio

    # 1. Validate everything before loading any model.
    pipe = _pipeline(args)
    if pipe.stages[0].consumes == "nothing":
        return _generate(args, pipe, emit)
    if not args.inputs:
        raise InputError("upscale needs at least one INPUT image, folder or - (see --help)")
    max_pixels = args.max_pixels or tio.DEFAULT_MAX_PIXELS
    files = _expand_inputs(args.inputs)
    if files.count("-") > 1:
        raise InputError("stdin (-) can be read only once")
    infos = {f: tio.probe(f, max_pixels) for f in files if f != "-"}
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    jobs = []
    for f in files:
        info = infos.get(f)
        if info is None:
            jobs.append((f, None, args.output or "", None))
            continue
        oh, ow = pipe.plan((info.width, info.height), info.channels).output_size
        dst = _output_path(args, f, info, round(ow / info.width, 2), len(files) > 1)
        fmt = tio.output_format(dst, args.format or pipe.preset.output.format or (None if dst != "-" else info.format))
        tio.check_destination(dst, inputs=files, overwrite=args.overwrite)
        jobs.append((f, info, dst, fmt))
    # 2. Load models, then run each input.
    pipe.load()
    for src, _, dst, fmt in jobs:
        image, info = tio.read_image(src, max_pixels)
        if src == "-":
            dst = _output_path(args, src, info, 0, False)
            fmt = tio.output_format(dst, args.format or pipe.preset.output.format or info.format)
        emit("start", input=src, output=dst)
        out = pipe.run_array(image, progress=lambda ev: emit(ev.event, **_fields(ev, src)))
        tio.write_image(dst, out, bit_depth=pipe.preset.output.bit_depth or info.bit_depth, format=fmt,
                        icc_profile=info.icc_profile, exif=info.exif, dpi=info.dpi,
                        overwrite=args.overwrite, inputs=[f for f in files if f != "-"])
        emit("done", input=src, output=dst)
    return 0


def _generate(args, pipe, emit) -> int:
    """A preset whose first stage is a source (txt2img): no input, one output."""
    from . import io as tio

    if args.inputs:
        raise InputError(f"preset {pipe.preset.name!r} generates its image (its first stage is "
                         f"{pipe.stages[0].type}); give no INPUT, only -o OUT")
    if not args.output:
        raise InputError("a generating preset needs -o OUT (or -o - for stdout)")
    fmt = tio.output_format(args.output, args.format or pipe.preset.output.format)
    tio.check_destination(args.output, overwrite=args.overwrite)
    pipe.load()
    emit("start", output=args.output)
    out = pipe.run_array(None, progress=lambda ev: emit(ev.event, **_fields(ev, "")))
    tio.write_image(args.output, out, bit_depth=pipe.preset.output.bit_depth or 8, format=fmt,
                    overwrite=args.overwrite)
    emit("done", output=args.output)
    return 0


def _fields(ev, src: str) -> dict:
    d = ev.to_dict()
    d.pop("event")
    d.pop("elapsed")  # re-stamped from the start of the command, like start/done
    d["input"] = src
    return d


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def cmd_plan(args) -> int:
    from . import io as tio

    pipe = _pipeline(args)
    print(f"preset {pipe.preset.name}: {pipe.preset.description}")
    if args.input is None:
        if pipe.stages[0].consumes != "nothing":
            raise InputError("plan needs an INPUT image for this preset")
        plan = pipe.plan((0, 0), 3)
    else:
        info = tio.probe(args.input, args.max_pixels or tio.DEFAULT_MAX_PIXELS)
        plan = pipe.plan((info.width, info.height), info.channels)
        print(f"input  {args.input}: {info.width}x{info.height}, {info.channels} channel(s), {info.bit_depth}-bit")
    for st in plan.stages:
        (ih, iw), (oh, ow) = st.input_size, st.output_size
        print(f"stage {st.index + 1}: {st.description}")
        print(f"  {iw}x{ih} -> {ow}x{oh}")
        if st.grid is not None:
            g = st.grid
            print(f"  tiles: {len(g.xs)} x {len(g.ys)} = {len(g)} of {g.tile_w}x{g.tile_h} output px,"
                  f" overlap >= {g.overlap}; redundant compute {st.redundancy:.2f}x")
        print(f"  memory: working set {_fmt_bytes(st.tile_memory)}, output canvas {_fmt_bytes(st.canvas_memory)}")
    oh, ow = plan.output_size
    print(f"output {ow}x{oh}; estimated peak memory {_fmt_bytes(plan.peak_memory)}")
    if args.preview and args.input is not None:
        from .preview import draw_grid

        image, _ = tio.read_image(args.input, args.max_pixels or tio.DEFAULT_MAX_PIXELS)
        tio.write_image(args.preview, draw_grid(image, plan), overwrite=True, inputs=[args.input])
        print(f"preview written to {args.preview}")
    return 0


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
    return 0


DIFFUSION_MODELS = {
    "stabilityai/sd-x2-latent-upscaler": "Stable Diffusion x2 latent upscaler (stage latent-x2)",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "Stable Diffusion 1.5 (stages img2img, txt2img)",
}


def cmd_models(args) -> int:
    from .models import known_models

    if args.action == "fetch":
        return _fetch(args.model_id)
    for m in known_models():
        state = "available" if m["available"] else "not available"
        print(f"{m['name']:14s} x{m['scale']} {m['arch']:8s} {state:14s} {m['description']}")
        print(f"{'':14s} from {m['location'] or m['source']}")
    try:
        from .diffusion.components import is_available
    except ImportError:
        print("diffusion models: install the diffusion extra (pip install 'tiledsr[diffusion]') to use them")
        return 0
    for model_id, what in DIFFUSION_MODELS.items():
        state = "available" if is_available(model_id) else "not available"
        print(f"{model_id} {state}: {what}")
        print(f"{'':14s} from the Hugging Face cache; `tiledsr models fetch {model_id}` downloads it when online")
    return 0


def _fetch(model_id: str | None) -> int:
    """Download a diffusers model's weights and configs into the usual Hugging Face cache."""
    from .errors import ModelNotAvailable

    if not model_id:
        raise InputError("models fetch needs an ID, e.g. stabilityai/sd-x2-latent-upscaler")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelNotAvailable("fetching needs huggingface_hub: pip install 'tiledsr[diffusion]'") from exc
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors"]
    try:
        path = snapshot_download(model_id, allow_patterns=patterns)
    except Exception as exc:  # network, offline mode, unknown repo: all mean "not available"
        raise ModelNotAvailable(f"could not download {model_id!r}: {type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:160]}") from exc
    print(f"{model_id} is in {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    json_mode = "--progress=json" in argv or any(a == "--progress" and b == "json" for a, b in zip(argv, argv[1:]))
    t0 = time.perf_counter()
    renderer = None
    if json_mode:
        from .progress import JsonRenderer
        renderer = JsonRenderer()
    bar = None

    def emit(event: str, **fields) -> None:
        from .progress import ProgressEvent

        fields.setdefault("elapsed", round(time.perf_counter() - t0, 3))
        for sink in (renderer, bar):
            if sink is not None:
                sink(ProgressEvent(event, **fields))
    try:
        args = build_parser().parse_args(argv)
        if args.command == "upscale":
            if args.progress == "bar":
                from .progress import BarRenderer
                bar = BarRenderer()
            return cmd_upscale(args, emit)
        if args.command == "plan":
            return cmd_plan(args)
        if args.command == "presets":
            return cmd_presets(args)
        return cmd_models(args)
    except KeyboardInterrupt:
        return _fail(130, "interrupted; no output was written for the image in progress", debug, emit, json_mode)
    except TiledsrError as exc:
        return _fail(exc.exit_code, str(exc), debug, emit, json_mode)
    except MemoryError:
        return _fail(OutOfMemory.exit_code, "out of memory; try a smaller --tile", debug, emit, json_mode)
    except Exception as exc:  # noqa: BLE001 - last resort: one line, exit 1
        if type(exc).__name__ == "OutOfMemoryError":
            return _fail(OutOfMemory.exit_code, "out of GPU memory; try a smaller --tile", debug, emit, json_mode)
        return _fail(1, f"unexpected {type(exc).__name__}: {exc} (rerun with --debug and report it)",
                     debug, emit, json_mode)
    finally:
        if bar is not None:
            bar.close()


def _fail(code: int, message: str, debug: bool, emit, json_mode: bool) -> int:
    if debug:
        traceback.print_exc()
    message = " ".join(message.split())
    if json_mode:
        emit("error", message=message, code=code)
    else:
        print(f"tiledsr: error: {message}", file=sys.stderr)
    return code
