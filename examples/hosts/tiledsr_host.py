"""Run tiledsr from a host application (GIMP, Krita, a script) as a subprocess.

Standard library only and Python 3.8+, because host applications bring their own Python.
Copy this one file next to a plug-in; the plug-in stays thin:

    opts = Options("in.png", "out.png", preset="photo-x4", scale=4)
    result = run(opts, on_progress=lambda p: print(p.fraction, p.text()),
                 should_cancel=lambda: False)
    if not result.ok:
        print(result.message)

:func:`run` starts ``tiledsr upscale ... --progress json``, reads the JSON events on its
stderr line by line (lines that are not JSON, unknown events and unknown fields are
ignored: tiledsr may add fields, never rename them), turns them into :class:`Progress`
updates with one overall fraction in 0..1, and returns a :class:`Result` whose message
says what the exit code means for the user. ``should_cancel`` is asked about ten times a
second; when it says True the child gets SIGINT (CTRL_BREAK on Windows), then SIGTERM,
then is killed if it still runs, and the result says it was cancelled (exit code 130:
nothing was written, ``--resume`` would continue the finished work).
"""
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

__all__ = ["Options", "OptionsError", "Progress", "ProgressTracker", "Result", "build_command",
           "explain_exit_code", "find_tiledsr", "list_presets", "parse_event", "parse_target",
           "run", "supports_flag"]

FORMATS = ("png", "jpeg", "tiff", "webp")
DEFAULT_PRESETS = ("photo-x4", "anime-x4", "fast-x4", "lanczos", "poster-x8")
COMMAND_FILE = "tiledsr_command.txt"  # written by install.py: the tiledsr found when installing
POLL_SECONDS = 0.1  # how often should_cancel is asked while no event arrives
_PRINT = re.compile(r"\s*\d+(\.\d+)?\s*[xX×]\s*\d+(\.\d+)?\s*(in|inch|inches|cm|mm|\")\s*@\s*\d+(\.\d+)?\s*(dpi)?\s*",
                    re.IGNORECASE)
_SCALE = re.compile(r"\s*[xX×]?\s*(\d+(\.\d+)?)\s*[xX×]?\s*")
_PIXELS = re.compile(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*(px)?\s*", re.IGNORECASE)
_INTERRUPTED = (130, 143, 129)  # 128 + SIGINT, SIGTERM, SIGHUP
_WINDOWS_BREAK = (0xC000013A, -1073741510)  # STATUS_CONTROL_C_EXIT, unsigned and signed


class OptionsError(ValueError):
    """The options cannot make a valid tiledsr command line (says which option and why)."""


@dataclass
class Options:
    """One tiledsr run: ``input`` -> ``output``.

    Give at most one target: ``scale`` (e.g. 4), ``width`` and/or ``height`` in pixels, or
    ``print_size`` like ``"24x36in@300"`` (which also writes the DPI). None of them: the
    preset's own scale. ``sets`` are ``--set`` items (``"sr.model=x4plus-anime"``).
    ``executable`` is the tiledsr command (a path, or a list such as
    ``[sys.executable, "-m", "tiledsr"]``); None finds it (see :func:`find_tiledsr`).
    ``preview`` asks tiledsr for a small live JPEG of the finished part of the output
    (passed to the callback as :attr:`Progress.preview`); ``extra_args`` are appended as given.
    """

    input: str
    output: str
    preset: str = "photo-x4"
    scale: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    print_size: Optional[str] = None
    format: Optional[str] = None
    overwrite: bool = False
    sets: Sequence[str] = ()
    executable: Union[None, str, Sequence[str]] = None
    preview: Optional[str] = None
    preview_every: Optional[float] = None
    resume: bool = False
    extra_args: Sequence[str] = ()


@dataclass
class Progress:
    """One update for the host's progress bar.

    ``fraction`` is the whole run's progress in 0..1 (never goes back); ``stage`` the current
    stage's type (``"sr"``, ``"resize"``, ...), ``stage_index`` 0-based of ``stages``;
    ``tile``/``tiles`` the finished tiles of the stage (of the current step for diffusion,
    ``step`` 1..``steps``); ``eta`` tiledsr's estimate of the seconds left in this stage,
    ``eta_total`` this module's estimate for the whole run (None early on); ``event`` the
    tiledsr event kind; ``message`` the text of a warning/backoff/error; ``preview`` the path
    of the live preview JPEG on a ``preview`` event. ``raw`` is the event as received.
    """

    event: str
    fraction: float = 0.0
    stage: Optional[str] = None
    stage_index: Optional[int] = None
    stages: Optional[int] = None
    tile: Optional[int] = None
    tiles: Optional[int] = None
    step: Optional[int] = None
    steps: Optional[int] = None
    elapsed: Optional[float] = None
    eta: Optional[float] = None
    eta_total: Optional[float] = None
    message: Optional[str] = None
    preview: Optional[str] = None
    raw: Dict[str, object] = field(default_factory=dict)

    def text(self) -> str:
        """A short status line: ``"stage 1/2 sr: tile 5/12, step 3/20, about 4 s left"``."""
        if self.event in ("warning", "note", "backoff", "error") and self.message:
            return "%s: %s" % (self.event, self.message)
        if self.event == "done":
            return "done"
        if self.event == "start" or self.stage is None:
            return "starting tiledsr"
        parts = ["stage %d/%d %s" % ((self.stage_index or 0) + 1, self.stages or 1, self.stage)]
        if self.tiles:
            parts.append("tile %d/%d" % (self.tile or 0, self.tiles))
        if self.steps:
            parts.append("step %d/%d" % (self.step or 0, self.steps))
        left = self.eta_total if self.eta_total is not None else self.eta
        text = ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]
        return text + (", about %s left" % _duration(left) if left is not None else "")


@dataclass
class Result:
    """How a run ended: ``ok`` (exit code 0 and the output exists), the exit ``code``, a
    user-facing ``message``, the ``output`` path when ok, ``cancelled`` when :func:`run`
    stopped it, tiledsr's own ``error`` line (if any), its ``warnings`` and the ``command``."""

    ok: bool
    code: int
    message: str
    output: Optional[str] = None
    cancelled: bool = False
    error: Optional[str] = None
    warnings: List[str] = field(default_factory=list)
    command: List[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Command line

def find_tiledsr(explicit: Union[None, str, Sequence[str]] = None,
                 environ: Optional[Dict[str, str]] = None) -> List[str]:
    """The tiledsr command as an argv prefix: ``explicit``, else ``$TILEDSR`` (a path, or a
    command line such as ``"/opt/py/bin/python -m tiledsr"``), else the command install.py
    recorded in ``tiledsr_command.txt`` beside this file, else ``tiledsr`` on PATH or in
    the usual user folders, else ``python -m tiledsr`` when this Python can import tiledsr.
    Raises FileNotFoundError saying what to do when none is found."""
    env = os.environ if environ is None else environ
    if explicit:
        return [explicit] if isinstance(explicit, str) else list(explicit)
    for given in (env.get("TILEDSR", "").strip(), _recorded_command()):
        if given:
            if os.path.exists(given):
                return [given]
            return shlex.split(given, posix=os.name != "nt")
    found = shutil.which("tiledsr", path=env.get("PATH"))
    if found:
        return [found]
    for folder in _user_bin_folders(env):
        candidate = os.path.join(folder, "tiledsr.exe" if os.name == "nt" else "tiledsr")
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return [candidate]
    if _python_has_tiledsr():
        return [sys.executable, "-m", "tiledsr"]
    raise FileNotFoundError("tiledsr was not found: install it (pip install tiledsr) or set the TILEDSR "
                            "environment variable to the tiledsr program, e.g. TILEDSR=/path/to/venv/bin/tiledsr")


def _recorded_command() -> str:
    """The command install.py recorded in :data:`COMMAND_FILE` beside this module ("" if none)."""
    try:
        with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), COMMAND_FILE), encoding="utf-8") as fh:
            return fh.readline().strip()
    except OSError:
        return ""


def _user_bin_folders(env: Dict[str, str]) -> List[str]:
    """Folders where pip --user and pipx put programs; GUI hosts often start without them on PATH."""
    home = os.path.expanduser("~")
    folders = [os.path.join(home, ".local", "bin"), "/opt/homebrew/bin", "/usr/local/bin"]
    if os.name == "nt" and env.get("APPDATA"):
        py = "Python%d%d" % sys.version_info[:2]
        folders.append(os.path.join(env["APPDATA"], "Python", py, "Scripts"))
    return folders


def _python_has_tiledsr() -> bool:
    """Whether ``sys.executable -m tiledsr`` would work (not inside an embedding host such as Krita)."""
    if not sys.executable or not os.path.basename(sys.executable).lower().startswith("python"):
        return False
    import importlib.util

    try:
        return importlib.util.find_spec("tiledsr") is not None
    except (ImportError, ValueError):
        return False


def parse_target(text: str) -> Dict[str, object]:
    """What a host's "size" field means, as :class:`Options` keywords.

    ``"4"``, ``"x4"`` or ``"4x"`` -> ``{"scale": 4.0}``; ``"24x36in@300"`` (in, cm, mm) ->
    ``{"print_size": "24x36in@300"}``; ``"4096x2048"`` (pixels) -> ``{"width": 4096, "height":
    2048}``; ``""`` -> ``{}`` (the preset's scale). Raises OptionsError otherwise."""
    text = (text or "").strip()
    if not text:
        return {}
    if _PRINT.fullmatch(text):
        return {"print_size": re.sub(r"\s+", "", text)}
    pixels = _PIXELS.fullmatch(text)
    if pixels:
        return {"width": int(pixels.group(1)), "height": int(pixels.group(2))}
    scale = _SCALE.fullmatch(text)
    if scale and not (text.lower().startswith("x") and text.lower().endswith("x")):
        return {"scale": float(scale.group(1))}
    raise OptionsError("size %r: expected a scale like 4, pixels like 4096x2048 or a print size like "
                       "24x36in@300 (in, cm or mm)" % text[:40])


def build_command(options: Options, executable: Optional[Sequence[str]] = None) -> List[str]:
    """The argv of ``tiledsr upscale`` for ``options`` with ``--progress json``.

    Every value goes in its own argument (``--opt=value``) and paths that begin with ``-``
    are prefixed with ``./``, so no file name can be taken for an option. Raises
    OptionsError for contradictory or impossible options."""
    o = options
    _check(o)
    argv = list(executable) if executable is not None else find_tiledsr(o.executable)
    argv += ["upscale", _path_arg(o.input), "--output=" + _path_arg(o.output), "--preset=" + o.preset,
             "--progress=json"]
    if o.scale is not None:
        argv.append("--scale=%s" % _number(o.scale))
    if o.width is not None:
        argv.append("--width=%d" % o.width)
    if o.height is not None:
        argv.append("--height=%d" % o.height)
    if o.print_size is not None:
        argv.append("--print=" + o.print_size.strip())
    if o.format:
        argv.append("--format=" + o.format.lower())
    argv += ["--set=" + item for item in o.sets]
    if o.overwrite:
        argv.append("--overwrite")
    if o.resume:
        argv.append("--resume")
    if o.preview:
        argv.append("--preview=" + _path_arg(o.preview))
        if o.preview_every is not None:
            argv.append("--preview-every=%s" % _number(o.preview_every))
    return argv + list(o.extra_args)


def _check(o: Options) -> None:
    """OptionsError naming the first option at fault."""
    for name in ("input", "output"):
        value = getattr(o, name)
        if not isinstance(value, str) or not value.strip():
            raise OptionsError("%s: expected a file path, got %r" % (name, value))
    if not o.preset or not o.preset.strip():
        raise OptionsError("preset: expected a preset name or a YAML file, got %r" % (o.preset,))
    targets = [n for n, v in (("scale", o.scale), ("print_size", o.print_size)) if v is not None]
    if o.width is not None or o.height is not None:
        targets.append("width/height")
    if len(targets) > 1:
        raise OptionsError("give one target, not %s: a scale, a width/height or a print size"
                           % " and ".join(targets))
    if o.scale is not None and not (isinstance(o.scale, (int, float)) and 0 < o.scale < float("inf")):
        raise OptionsError("scale: expected a positive number, got %r" % (o.scale,))
    for name in ("width", "height"):
        value = getattr(o, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise OptionsError("%s: expected a whole number of pixels >= 1, got %r" % (name, value))
    if o.print_size is not None and not _PRINT.fullmatch(o.print_size):
        raise OptionsError("print_size: expected WIDTHxHEIGHT, a unit (in, cm or mm) and @DPI like "
                           "24x36in@300, got %r" % o.print_size[:40])
    if o.format is not None and o.format.lower() not in FORMATS:
        raise OptionsError("format: expected one of %s, got %r" % (", ".join(FORMATS), o.format))
    for item in o.sets:
        if "=" not in item or item.startswith("="):
            raise OptionsError("sets: expected KEY=VALUE like sr.model=x4plus-anime, got %r" % (item,))
    if o.preview_every is not None and not o.preview_every > 0:
        raise OptionsError("preview_every: expected a positive number of seconds, got %r" % (o.preview_every,))
    if o.preview is not None and os.path.abspath(o.preview) in (os.path.abspath(o.input), os.path.abspath(o.output)):
        raise OptionsError("preview: %r is also the input or the output; give another file" % (o.preview,))


def _path_arg(path: str) -> str:
    """A path that argparse cannot mistake for an option ("-" stays stdin/stdout)."""
    if path.startswith("-") and path != "-":
        return os.path.join(os.curdir, path)
    return path


def _number(value: float) -> str:
    return ("%d" % value) if float(value).is_integer() else repr(float(value))


def supports_flag(flag: str, executable: Optional[Sequence[str]] = None, timeout: float = 30.0) -> bool:
    """Whether this tiledsr's ``upscale --help`` lists ``flag`` (e.g. ``"--preview"``), so a host
    can offer a feature only when the installed tiledsr has it."""
    argv = list(executable) if executable is not None else find_tiledsr()
    key = (tuple(argv), flag)
    if key not in _FLAG_CACHE:
        try:
            out = subprocess.run(argv + ["upscale", "--help"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL, timeout=timeout, universal_newlines=True,
                                 encoding="utf-8", errors="replace").stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        _FLAG_CACHE[key] = re.search(r"(^|[\s\[,])%s([\s=\],]|$)" % re.escape(flag), out, re.M) is not None
    return _FLAG_CACHE[key]


_FLAG_CACHE: Dict[Tuple[Tuple[str, ...], str], bool] = {}


def list_presets(executable: Optional[Sequence[str]] = None, timeout: float = 30.0) -> List[str]:
    """The preset names ``tiledsr presets`` lists (the bundled defaults if it cannot be asked)."""
    try:
        argv = list(executable) if executable is not None else find_tiledsr()
        out = subprocess.run(argv + ["presets"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, timeout=timeout, universal_newlines=True,
                             encoding="utf-8", errors="replace")
    except (OSError, subprocess.SubprocessError):
        return list(DEFAULT_PRESETS)
    names = []
    for line in out.stdout.splitlines():
        if not line.strip():
            break  # the presets come first; a blank line starts the list of stage types
        if not line[:1].isspace():
            names.append(line.split()[0])
    return names if out.returncode == 0 and names else list(DEFAULT_PRESETS)


# ---------------------------------------------------------------------------------------------
# Progress

def parse_event(line: str) -> Optional[Dict[str, object]]:
    """The event dict of one stderr line, or None for a line that is not a JSON event."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("event"), str):
        return None
    return event


class ProgressTracker:
    """Turns tiledsr's events into :class:`Progress` updates with one monotone overall fraction.

    A stage counts ``1/stages`` of the run; inside it, finished tiles count, and for a
    diffusion stage each of its ``steps`` counts ``1/steps`` of the stage. The fraction never
    goes back (a back-off to smaller tiles or a VAE pass at the same stage index may restart
    a count); a ``start`` event (the next image of a batch) starts again from 0.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.fraction = 0.0
        self._clock = clock
        self._t0 = clock()
        self._last: Dict[str, object] = {}

    def update(self, event: Dict[str, object]) -> Progress:
        kind = str(event.get("event"))
        if kind == "start":
            self.fraction, self._t0, self._last = 0.0, self._clock(), {}
        if kind in ("stage", "progress"):
            self._last = event
            self.fraction = max(self.fraction, _overall(event))
        elif kind == "done":
            self.fraction = 1.0
        ctx = self._last
        elapsed = _num(event.get("elapsed"))
        return Progress(
            event=kind, fraction=self.fraction, stage=_str(ctx.get("stage")), stage_index=_int(ctx.get("stage_index")),
            stages=_int(ctx.get("stages")), tile=_int(ctx.get("tile")), tiles=_int(ctx.get("tiles")),
            step=_int(ctx.get("step")), steps=_int(ctx.get("steps")), elapsed=elapsed,
            eta=_num(ctx.get("eta")) if kind in ("stage", "progress") else None, eta_total=self._eta_total(),
            message=_str(event.get("message")), preview=_str(event.get("preview")) if kind == "preview" else None,
            raw=dict(event))

    def _eta_total(self) -> Optional[float]:
        """Seconds left for the whole run, extrapolated from the fraction (None before 5%)."""
        if not 0.05 <= self.fraction < 1.0:
            return None
        spent = self._clock() - self._t0
        return round(spent / self.fraction * (1.0 - self.fraction), 1)


def _overall(ev: Dict[str, object]) -> float:
    stages = max(_int(ev.get("stages")) or 1, 1)
    index = min(max(_int(ev.get("stage_index")) or 0, 0), stages - 1)
    tiles, tile = _int(ev.get("tiles")), _int(ev.get("tile")) or 0
    inside = min(max(tile / tiles, 0.0), 1.0) if tiles else 0.0
    steps, step = _int(ev.get("steps")), _int(ev.get("step"))
    if steps and step:  # step is 1..steps, tile counts the finished tiles of that step
        inside = (min(max(step, 1), steps) - 1 + inside) / steps
    return min(max((index + inside) / stages, 0.0), 1.0)


def _int(value: object) -> Optional[int]:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _num(value: object) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: object) -> Optional[str]:
    return value if isinstance(value, str) else None


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min %02d s" % divmod(seconds, 60)
    return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)


# ---------------------------------------------------------------------------------------------
# Exit codes

_EXIT_MESSAGES = {
    0: "Done.",
    1: "tiledsr failed (a full disk, a closed output, or a bug; rerun tiledsr with --debug to see why)",
    2: "tiledsr refused the input, preset or arguments",
    3: "a model tiledsr needs is not available (see `tiledsr models`; `tiledsr models fetch ID` "
       "downloads it when online)",
    4: "out of memory even at the smallest tile (close other programs, choose a lighter preset, or use "
       "--device cpu or a smaller --memory-budget)",
}


def explain_exit_code(code: int, detail: Optional[str] = None) -> str:
    """A user-facing message for tiledsr's exit ``code`` (with tiledsr's own error line)."""
    if code in _EXIT_MESSAGES:
        text = _EXIT_MESSAGES[code]
    elif code in _INTERRUPTED or code in _WINDOWS_BREAK:
        text = ("tiledsr was interrupted; its finished work is kept where possible: run it again with "
                "--resume to continue")
    elif code < 0:
        text = "tiledsr was killed by signal %d" % -code
    else:
        text = _EXIT_MESSAGES[1].replace("failed", "failed with exit code %d" % code, 1)
    if detail and code != 0:
        text = "%s: %s" % (text, detail)
    return text


# ---------------------------------------------------------------------------------------------
# Running

def run(options: Options, on_progress: Optional[Callable[[Progress], None]] = None,
        should_cancel: Optional[Callable[[], bool]] = None, cancel_timeout: float = 10.0,
        env: Optional[Dict[str, str]] = None) -> Result:
    """Run tiledsr for ``options`` and wait for it, reporting progress; never raises for a
    failed run (bad options and a missing tiledsr also come back as a Result, code 2 or 1).

    ``on_progress(Progress)`` is called in this thread for every event; ``should_cancel()``
    is asked at least every :data:`POLL_SECONDS`. On cancellation the child gets SIGINT
    (Windows: CTRL_BREAK), after ``cancel_timeout`` seconds SIGTERM, and two seconds
    later it is killed. A KeyboardInterrupt here stops the child the same way, then
    propagates."""
    # 1. The command line.
    try:
        argv = build_command(options)
    except OptionsError as exc:
        return Result(False, 2, "invalid options: %s" % exc, error=str(exc))
    except FileNotFoundError as exc:
        return Result(False, 1, str(exc), error=str(exc))
    # 2. Start the child with its own process group, so only we decide when it is interrupted.
    try:
        proc = _start(argv, env)
    except OSError as exc:
        msg = "could not start %s: %s" % (argv[0], exc)
        return Result(False, 1, msg, error=msg, command=argv)
    lines = _read_lines(proc)
    tracker, error, warnings, done_output = ProgressTracker(), None, [], None
    stopper: Optional[_Stopper] = None
    ended: Optional[float] = None
    # 3. Events until stderr closes; cancel when asked (the events go on while tiledsr stops).
    try:
        while True:
            if stopper is None and should_cancel is not None and should_cancel():
                stopper = _Stopper(proc, cancel_timeout)
            if stopper is not None:
                stopper.tick()
            try:
                line = lines.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if proc.poll() is not None:  # a grandchild may hold stderr open: give it 2 s
                    ended = ended or time.monotonic()
                    if time.monotonic() - ended > 2.0:
                        break
                continue
            if line is None:
                break
            event = parse_event(line)
            if event is None:
                continue
            kind = event["event"]
            if kind == "error":
                error = _str(event.get("message"))
            elif kind == "warning" and _str(event.get("message")):
                warnings.append(str(event["message"]))
            elif kind == "done":
                done_output = _str(event.get("output"))
            if on_progress is not None:
                on_progress(tracker.update(event))
    except BaseException:
        (stopper or _Stopper(proc, cancel_timeout)).wait()  # the host goes down (Ctrl-C, a callback's error)
        raise
    if stopper is not None:
        stopper.wait()
    code = proc.wait()
    # 4. What it means.
    output = done_output or options.output
    ok = code == 0 and (output == "-" or os.path.exists(output))
    cancelled = stopper is not None and not ok  # it may have finished just before the cancel arrived
    if cancelled:
        kept = error is not None and "--resume" in error
        message = "Cancelled; no output was written" + (
            " (its finished work is kept: run again with --resume to continue)" if kept else "")
    elif code == 0 and not ok:
        message = "tiledsr reported success but %s does not exist" % output
    else:
        message = explain_exit_code(code, error)
    return Result(ok, code, message, output=output if ok else None, cancelled=cancelled, error=error,
                  warnings=warnings, command=argv)


def _start(argv: List[str], env: Optional[Dict[str, str]]) -> subprocess.Popen:
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONIOENCODING", "utf-8")  # the error line may name a non-ASCII file
    kwargs = {}
    if os.name == "nt":
        kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) | getattr(
            subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=child_env, universal_newlines=True, encoding="utf-8", errors="replace",
                            bufsize=1, **kwargs)


def _read_lines(proc: subprocess.Popen) -> "queue.Queue[Optional[str]]":
    """A queue fed with the child's stderr lines by a daemon thread, then None at the end."""
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def pump() -> None:
        try:
            for line in proc.stderr:
                lines.put(line)
        except (OSError, ValueError):
            pass
        finally:
            lines.put(None)

    threading.Thread(target=pump, name="tiledsr-stderr", daemon=True).start()
    return lines


class _Stopper:
    """Stops the child without blocking the caller: an interrupt first (so tiledsr cleans up and
    keeps its finished work for --resume), SIGTERM ``timeout`` seconds later, a kill two seconds
    after that. :meth:`tick` takes the next step when one is due; :meth:`wait` blocks."""

    def __init__(self, proc: subprocess.Popen, timeout: float):
        first = signal.SIGINT
        if os.name != "nt" and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            first = signal.SIGTERM  # an ignored SIGINT is inherited, and stays ignored in tiledsr
        self.proc = proc
        self._steps = [(first, timeout), (getattr(signal, "SIGTERM", None), 2.0), (_KILL, 5.0)]
        self._due = time.monotonic()

    def tick(self) -> None:
        while self._steps and self.proc.poll() is None and time.monotonic() >= self._due:
            sig, wait = self._steps.pop(0)
            _signal_group(self.proc, sig)
            self._due = time.monotonic() + wait

    def wait(self) -> None:
        while self.proc.poll() is None and self._steps:
            self.tick()
            try:
                self.proc.wait(timeout=max(0.01, self._due - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


_KILL = "kill"


def _signal_group(proc: subprocess.Popen, sig) -> None:
    """``sig`` (or _KILL) to the child's process group; on Windows CTRL_BREAK for SIGINT (it
    reaches only a child sharing our console: without one, terminate at once), else terminate."""
    if proc.poll() is not None:
        return
    try:
        if os.name == "nt":
            if sig == signal.SIGINT:
                try:
                    proc.send_signal(signal.CTRL_BREAK_EVENT)
                    return
                except (OSError, ValueError):
                    pass
            proc.terminate()
        elif sig == _KILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, sig)  # the child and anything it started (e.g. a local Ray)
    except (ProcessLookupError, PermissionError):
        try:
            proc.kill() if sig in (_KILL, None) else proc.send_signal(sig)
        except OSError:
            pass
    except OSError:
        pass


def _main(argv: Optional[Sequence[str]] = None) -> int:
    """``python tiledsr_host.py IN OUT [SIZE] [PRESET]``: a quick check of this module from a shell."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2:
        sys.stderr.write("usage: tiledsr_host.py INPUT OUTPUT [SIZE like 4 or 24x36in@300] [PRESET]\n")
        return 2
    try:
        target = parse_target(args[2] if len(args) > 2 else "")
    except OptionsError as exc:
        sys.stderr.write("%s\n" % exc)
        return 2
    preset = args[3] if len(args) > 3 else "photo-x4"
    opts = Options(args[0], args[1], preset=preset, **target)  # type: ignore[arg-type]

    def show(p: Progress) -> None:
        sys.stderr.write("\r%5.1f%% %-70s" % (100 * p.fraction, p.text()[:70]))

    try:
        result = run(opts, show)
    except KeyboardInterrupt:
        sys.stderr.write("\ncancelled\n")
        return 130
    sys.stderr.write("\n%s\n" % result.message)
    return result.code


if __name__ == "__main__":
    sys.exit(_main())
