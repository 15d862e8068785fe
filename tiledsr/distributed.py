"""Ray: a batch spread over a cluster (one task per image), or one image's tiles over Ray workers.

``tiledsr upscale --engine ray [--address ADDR]`` and ``upscale(..., engine="ray")`` run here.

* :func:`ray_session`: a local Ray (or the cluster at ``address``) for the block, always shut
  down after it, with no Ray process left behind; Ray's own logging never reaches stderr.
* :func:`run_batch`: several images run as one Ray task each, doing what the local command
  does for one image (read by rows, stream, write atomically, keep a work directory for
  ``--resume``); their events come back to the driver's console and their errors as
  themselves (same line, same exit code). One image: its tiles are spread.
* :func:`spread_tiles`: the tiles of the pipeline's ``sr`` stages (and ``img2img`` in independent
  mode) are computed by Ray actors
  that each hold the loaded pipeline; the driver reads the windows and blends the results into
  the same streamed canvas (:func:`tiledsr.tiling.run.use_executor`).

Outputs are byte-identical to a local run: every worker rebuilds the pipeline from the same
resolved preset and runs the same stage function on the same windows, and ncnn and torch give
the same bits at any thread count here (checked on the CPU for both backends and both model
families), so each worker runs one thread per CPU Ray gives it. Across machines the bits agree
when the libraries, model files and CPU instruction set agree. Inputs and outputs must be on a
file system every node sees at the same paths.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import shutil
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from .errors import Cancelled, InputError, OutOfMemory, TiledsrError
from .text import cut

__all__ = ["RayTileExecutor", "ray_session", "run_batch", "spread_tiles"]

INSTALL_HINT = 'ray is not installed; pip install "tiledsr[ray]"'
CPUS_PER_TASK = 1  # CPUs (and so threads) of each task and actor
IN_FLIGHT_PER_WORKER = 2  # tile groups queued per actor: one computing, one on its way
SPREAD_STAGES = ("sr", "img2img")  # stage types whose tile function is pure, given the loaded models
ENV_PREFIX = "TILEDSR_"  # settings of the driver's environment that workers follow (TILEDSR_FAIL_OOM, ...)
WAIT = 0.1  # seconds between looks at Ray, so that signals and shutdowns act at once
CANCEL_GRACE = 5.0  # seconds cancelled tasks get to stop at their next tile and clean up
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))
# Ray's usage reports off; its C++ log lines (errors are copied to stderr) kept to fatal ones, in the
# driver and in the processes of a local session, whose logs are removed with it.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_IGNORE_UNHANDLED_ERRORS": "1", "RAY_BACKEND_LOG_LEVEL": "fatal"}


# 1. The session.

def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise InputError(INSTALL_HINT) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, *, verbose: bool = False) -> Iterator[Any]:
    """Ray for the block; yields the ``ray`` module.

    ``address``: a running cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None
    starts a local Ray with ``num_cpus`` CPUs (default ``os.cpu_count()``), no dashboard, in a
    fresh folder under the system's temporary folder. Ray is shut down when the block ends,
    however it ends (an error, Ctrl-C); a local one's processes are all gone after it and its
    folder removed. A Ray this process had initialised already is used and left running.
    Ray logs nothing to stderr unless ``verbose`` (``--debug``). InputError (exit 2) when ray
    is not installed or ``address`` cannot be reached; TiledsrError (exit 1) when a local Ray
    does not start.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    temp = None if address else tempfile.mkdtemp(prefix="tsr-ray-", dir=_temp_root())
    since = time.time()
    with _quiet_ray() if not verbose else contextlib.nullcontext():
        try:
            _init(ray, address, num_cpus, temp, quiet=not verbose)
            yield ray
        finally:
            _shutdown(ray, temp, since)


def _temp_root() -> str:
    """The system's temporary folder, unless its path is too long for Ray's socket names."""
    root = tempfile.gettempdir()
    return root if len(root) <= 40 or not os.path.isdir("/tmp") else "/tmp"


def _init(ray, address: str | None, num_cpus: int | None, temp: str | None, quiet: bool) -> None:
    """``ray.init``, keeping this process's signal handlers (Ray replaces SIGTERM's); with ``quiet``
    what Ray's C++ side prints while it starts goes into the error's notes, never to stderr."""
    from .quiet import quiet_fds

    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in _SIGNALS} if main else {}
    options: dict[str, Any] = {"address": address or "local", "log_to_driver": False, "configure_logging": False}
    if address is None:
        options.update(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, _temp_dir=temp)
    if address:
        _check_reachable(address)
    said: list[str] = []
    try:
        with quiet_fds((2,)) if quiet else contextlib.nullcontext(said) as said:
            ray.init(**options)
    except Exception as exc:  # noqa: BLE001 - whatever Ray raises: one line
        text = cut(" ".join(str(exc).split()), 160)
        if address:
            error: TiledsrError = InputError(
                f"could not reach the Ray cluster at {address!r}: {text}; check --address and that the cluster is "
                "up (one with token authentication also needs RAY_AUTH_MODE=token and its token)")
        else:
            error = TiledsrError(f"could not start a local Ray: {text}; rerun with --debug to see Ray's messages")
        if said and said[0]:
            error.add_note("Ray printed: " + said[0])
        raise error from exc
    finally:
        for s, handler in saved.items():
            with contextlib.suppress(ValueError, TypeError, OSError):
                signal.signal(s, handler)


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """InputError at once when a ``HOST:PORT`` address does not answer (Ray itself retries for
    minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(f"could not reach the Ray cluster at {address!r}: {exc.strerror or exc}; check --address "
                         "and that the cluster is up (ray start --head)") from exc


def _shutdown(ray, temp: str | None, since: float) -> None:
    """Shut Ray down; for a local session (``temp``) also end whatever of it is left and remove its folder."""
    ours = _ray_processes(since, temp) if temp is not None else []  # before they are orphaned
    with contextlib.suppress(Exception):
        ray.shutdown()
    if temp is not None:
        _end([*ours, *_ray_processes(since, temp)])
        shutil.rmtree(temp, ignore_errors=True)


def _ray_processes(since: float, temp: str) -> list:
    """This session's Ray processes: this process's descendants started since ``since`` that look
    like Ray's (some rename themselves ``ray::...``), and any process naming its folder ``temp``."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    with contextlib.suppress(psutil.Error):
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.create_time() >= since - 1 and "ray" in " ".join(proc.cmdline()[:2]).lower():
                    found.append(proc)
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error, TypeError):
            if proc.pid != os.getpid() and any(temp in arg for arg in proc.info["cmdline"] or ()):
                found.append(proc)
    return found


def _end(procs: list) -> None:
    """Kill the processes of ``procs`` that still run (a reused pid is told apart by its start time)."""
    if not procs:
        return
    import psutil

    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def _quiet_ray() -> Iterator[None]:
    """Ray's loggers silent and its usage reports off (for the processes it starts) in the block."""
    log = logging.getLogger("ray")
    saved = log.level, log.propagate
    env = {k: os.environ.get(k) for k in _QUIET_ENV}
    log.setLevel(logging.CRITICAL + 1)
    log.propagate = False
    os.environ.update(_QUIET_ENV)
    try:
        yield
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# 2. What workers get: the pipeline's recipe, resources, errors that travel.

def _recipe(pipe, gpu: bool, budget: int | None = None) -> tuple:
    """``pipe`` as an unloaded recipe for a worker: CUDA as the worker's own GPU, a thread per CPU
    (unless set), and ``budget`` when none was given (so tiles are planned as on the driver)."""
    _, (preset, settings, explicit_tile) = pipe.__reduce__()
    settings = dict(settings)
    if gpu and str(settings["device"]).startswith("cuda"):
        settings["device"] = "cuda"  # Ray shows a task its GPU as device 0
    settings["threads"] = settings["threads"] or CPUS_PER_TASK
    if settings["memory_budget"] is None and budget is not None:
        from .machine import MIN_BUDGET

        settings["memory_budget"] = max(budget, MIN_BUDGET)
    return preset, settings, explicit_tile


def _on_gpu(ray, pipe) -> bool:
    """Whether workers need a GPU: the device is CUDA, or auto on a cluster that has GPUs."""
    device = str(pipe.runtime.device)
    gpus = ray.cluster_resources().get("GPU", 0)
    if device.startswith("cuda"):
        if gpus < 1:
            raise InputError(f"device {device!r} asks for a GPU but the Ray cluster has none; "
                             "use --device cpu or auto")
        return True
    return device == "auto" and gpus >= 1


def _env_vars() -> dict[str, str]:
    """tiledsr's own environment settings (TILEDSR_*), handed to workers so that they behave the same."""
    return {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}


def _use_env(env: dict[str, str]) -> None:
    """In a worker: exactly the driver's TILEDSR_* settings (a reused worker forgets the last task's)."""
    for k in [k for k in os.environ if k.startswith(ENV_PREFIX) and k not in env]:
        del os.environ[k]
    os.environ.update(env)


def _options(ray, pipe) -> tuple[dict, bool]:
    """(Ray options of each task or actor, whether it runs on a GPU)."""
    gpu = _on_gpu(ray, pipe)
    opts: dict[str, Any] = {"num_cpus": CPUS_PER_TASK}
    if gpu:
        opts["num_gpus"] = 1
    return opts, gpu


def _portable(exc: BaseException) -> BaseException:
    """``exc`` as it can travel back to the driver (itself when it pickles, else a TiledsrError
    with its text), with the worker's traceback as a note (shown with --debug)."""
    with contextlib.suppress(Exception):
        exc.add_note("raised in a Ray worker:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception whose class does not pickle
        return TiledsrError(f"{type(exc).__name__} in a Ray worker: {cut(' '.join(str(exc).split()), 200)}")


def _ray_failure(ray, exc: BaseException, what: str) -> TiledsrError:
    """A Ray system error (a worker killed or lost) as one tiledsr line: OutOfMemory when Ray's memory
    monitor stopped it, else TiledsrError (exit 1)."""
    text = cut(" ".join(str(exc).split()), 200)
    if isinstance(exc, ray.exceptions.OutOfMemoryError):
        return OutOfMemory(f"{what}: Ray stopped the worker because its machine ran out of memory; "
                           "try a smaller --tile or --memory-budget")
    return TiledsrError(f"{what}: the Ray worker failed ({type(exc).__name__}: {text})")


# 3. A batch: one task per image.

def run_batch(pipe, jobs: Sequence[Any], console, args) -> None:
    """``tiledsr upscale --engine ray``: run ``jobs`` (from :func:`tiledsr.batch.plan_jobs`) on Ray
    at ``args.address`` (None: a local Ray), in place of the local loop; ``pipe`` need not be loaded.

    Several jobs: one Ray task per image, each with its own loaded pipeline (kept by its worker
    for the next image); ``start``/``done`` events (``input``, ``output``) are emitted as each
    image starts and ends, its tile events in between (JSON progress only), and the first error
    stops the batch, raised as itself. One job: its tiles go to Ray workers (:func:`spread_tiles`)
    while this process reads, blends and writes. Files are written atomically. On an error or a
    signal the other images in flight stop at their next tile and their temporary files are
    removed; their work directories are kept for ``--resume`` after a signal (or when resuming),
    and removed after another image's error, as if they had not started.
    """
    from . import io as tio

    jobs = list(jobs)
    max_pixels = getattr(args, "max_pixels", None) or tio.DEFAULT_MAX_PIXELS
    if len(jobs) > 1 and any("-" in (j.src, j.dst) for j in jobs):
        raise InputError("--engine ray runs each image of a batch on a Ray worker, which cannot read stdin or write "
                         "stdout; save the image to a file, or run it on its own")
    batch = None
    try:
        with ray_session(getattr(args, "address", None), verbose=bool(getattr(args, "debug", False))) as ray:
            if len(jobs) == 1:
                with spread_tiles(pipe):
                    _one_here(pipe, jobs[0], console, args, max_pixels)
            else:
                batch = _Batch(ray, pipe, jobs, console, args, max_pixels)
                batch.run()
    except BaseException as exc:
        tio.remove_stale_temps(*(j.dst for j in jobs))  # of workers that were ended (never a live one's)
        if batch is not None and not isinstance(exc, KeyboardInterrupt) and not getattr(args, "resume", False):
            batch.discard_unfinished()
        raise


def _one_here(pipe, job, console, args, max_pixels: int) -> None:
    """One image in this process, as the local loop runs it (its tiles go where the executor sends them)."""
    from .cli import run_job

    console.interruptible(pipe.load)
    run_job(pipe, console, job, max_pixels, args)


class _Batch:
    """The driver's side of a batch: submits the tasks, relays what they say, stops them on failure."""

    def __init__(self, ray, pipe, jobs, console, args, max_pixels: int):
        self.ray, self.pipe, self.jobs, self.console = ray, pipe, jobs, console
        self.args, self.max_pixels = args, max_pixels
        self.unfinished: list = []  # the other jobs in flight when the batch stopped
        self.failed = None  # the job whose error stopped it

    def run(self) -> None:
        ray, console = self.ray, self.console
        opts, gpu = _options(ray, self.pipe)
        budget = None if gpu else self.pipe.memory_budget()
        recipe = ray.put(_recipe(self.pipe, gpu, budget))
        options = _run_options(self.args, self.max_pixels)
        if options.preview:  # images run at once on several workers: one preview file cannot show them
            console.warn("--preview is off for a batch on Ray (its images run at once); run one image to see it")
            options = dataclasses.replace(options, preview=None)
        task = ray.remote(_image_task)
        largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        where = {"cwd": os.getcwd(), "env": _env_vars()}
        live: dict[Any, Any] = {}
        for job in self.jobs:
            memory = None if gpu else self._memory(job, largest)
            run = task.options(num_returns="streaming", max_retries=0, **opts, **({"memory": memory} if memory else {}))
            live[run.remote(recipe, job, options, console.json_mode, where)] = job
        console.resumable = any(j.work is not None for j in self.jobs)
        try:
            while live:
                ready, _ = ray.wait(list(live), num_returns=1, timeout=WAIT)
                for gen in ready:
                    if not self._relay(gen, live[gen]):
                        del live[gen]
        except BaseException:
            self.unfinished = [j for j in live.values() if j is not self.failed]
            self._stop(live)
            raise
        console.resumable = False

    def discard_unfinished(self) -> None:
        """After another image's error: the work directories of the images stopped on the way are
        removed, as if they had not started (as the local loop leaves them); kept after a signal."""
        for job in self.unfinished:
            if job.work is not None:
                shutil.rmtree(job.work.folder, ignore_errors=True)

    def _memory(self, job, largest: float) -> int | None:
        """RAM to reserve for ``job``: the planner's peak estimate, at most the largest node's."""
        plan = self.pipe.plan((job.info.width, job.info.height), job.info.channels, on_disk=job.work is not None)
        return int(min(plan.peak_memory, largest)) or None

    def _relay(self, gen, job) -> bool:
        """Pass on the task's next item; False once it has finished."""
        try:
            item = self.ray.get(next(gen))
        except StopIteration:
            return False
        except self.ray.exceptions.RayError as exc:
            self.failed = job
            raise _ray_failure(self.ray, exc, job.src) from exc
        kind, console = item[0], self.console
        if kind == "emit":
            console.emit(item[1], **{**item[2], "input": job.src})
        elif kind == "warn":
            console.warn(item[1])
        elif kind == "error":
            self.failed = job
            raise item[1]
        return kind != "ok"

    def _stop(self, live: dict) -> None:
        """Cancel the tasks in flight and give them a moment to stop at their next tile."""
        ray = self.ray
        for gen in live:
            with contextlib.suppress(Exception):
                ray.cancel(gen)
        deadline = time.monotonic() + CANCEL_GRACE
        with contextlib.suppress(Exception):
            while live and time.monotonic() < deadline:
                ready, _ = ray.wait(list(live), num_returns=1, timeout=WAIT)
                for gen in ready:
                    try:
                        if ray.get(next(gen))[0] in _LAST:
                            del live[gen]
                    except StopIteration:
                        del live[gen]
                    except Exception:  # noqa: BLE001 - cancelled or lost: it stopped either way
                        del live[gen]


def _run_options(args, max_pixels: int):
    """The command line's options of one image (:class:`tiledsr.job.RunOptions`)."""
    from .cli import _run_options as options

    return options(args, max_pixels)


_LAST = ("ok", "error")  # the kinds of a task's last item


class _Relay:
    """``emit`` and ``warn`` of :func:`tiledsr.job.run_job` inside a Ray task: to the driver, in order."""

    def __init__(self, put, tiles: bool):
        self.put, self._tiles = put, tiles
        self.abandoned = threading.Event()

    def emit(self, event: str, **fields) -> bool | None:
        if self.abandoned.is_set():
            return False  # the run stops at its next report (Cancelled)
        if self._tiles or event not in ("stage", "progress"):
            self.put(("emit", event, fields))
        return None

    def warn(self, message: str) -> None:
        self.put(("warn", message))


_LOADED: dict[bytes, Any] = {}  # in a worker: the last pipeline it loaded, by recipe


def _loaded(recipe: tuple):
    """The loaded pipeline of ``recipe``, kept in this worker process for the images that follow."""
    from .pipeline import _rebuild

    key = pickle.dumps(recipe)
    pipe = _LOADED.get(key)
    if pipe is None:
        _LOADED.clear()
        pipe = _rebuild(*recipe)
        pipe.load()
        _LOADED[key] = pipe
    return pipe


def _image_task(recipe: tuple, job, options, tiles: bool, where: dict):
    """The Ray task of one image (a streaming generator): :func:`tiledsr.job.run_job` on ``job``,
    as the local loop runs it.

    Yields ``("emit", event, fields)`` and ``("warn", message)`` items, then ``("ok",)`` or
    ``("error", exception)``; tile events only when ``tiles``. The work runs in a thread; when
    the task is cancelled it stops at its next tile (temporary file removed, work directory
    kept). ``where``: the driver's folder (relative paths mean the same here) and its TILEDSR_*
    settings."""
    _use_env(where["env"])
    if os.path.isdir(where["cwd"]):
        os.chdir(where["cwd"])
    items: queue.Queue = queue.Queue()
    relay = _Relay(items.put, tiles)
    worker = threading.Thread(target=_image_work, args=(recipe, job, options, relay), name="tiledsr-work",
                              daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = items.get(timeout=WAIT)  # wakes up for a cancellation
            except queue.Empty:
                continue
            yield item
            if item[0] in _LAST:
                return
    finally:
        relay.abandoned.set()
        worker.join(CANCEL_GRACE)


def _image_work(recipe: tuple, job, options, relay: _Relay) -> None:
    from .job import run_job

    try:
        run_job(_loaded(recipe), job, options, relay.emit, relay.warn)
        relay.put(("ok",))
    except BaseException as exc:  # noqa: BLE001 - handed to the driver, raised there
        relay.put(("error", _portable(exc)))


# 4. One image: its tiles over Ray actors.

class _TileWorker:
    """A Ray actor holding the loaded pipeline; runs one stage's tile function on a batch."""

    def __init__(self, recipe: tuple, env: dict[str, str]):
        _use_env(env)
        self.error: BaseException | None = None
        try:
            self.pipe = _loaded(recipe)
        except BaseException as exc:  # noqa: BLE001 - reported by the first call
            self.error = _portable(exc)

    def call(self, index: int, name: str, batch, starts, state=None):
        """("ok", output) or ("error", exception) of ``stages[index].<name>(batch[, starts])``, with the
        driver's ``tile_state`` of that stage (run-time facts such as the picture's size) set first."""
        if self.error is not None:
            return "error", self.error
        try:
            if state is not None:
                self.pipe.stages[index].tile_state = state
            fn = getattr(self.pipe.stages[index], name)
            return "ok", fn(batch) if starts is None else fn(batch, starts)
        except Exception as exc:  # noqa: BLE001 - raised on the driver, where the back-off is
            return "error", _portable(exc)


def _worker_memory(stage, batch) -> int:
    """Bytes an actor holds to run ``stage`` on groups like ``batch`` (N, h, w, C): the process and
    the stage's working-set estimate for an input of the group's windows."""
    from .memory import BASE_BYTES

    _, h, w, c = batch.shape
    try:
        return BASE_BYTES + int(stage.memory_estimate(h, w, c)["tile"])
    except Exception:  # noqa: BLE001 - a stage without an estimate for this size: the process alone
        return BASE_BYTES


@dataclass
class _Handle:
    executor: "RayTileExecutor"
    ref: Any

    def result(self):
        return self.executor._result(self.ref)


class RayTileExecutor:
    """A :class:`~tiledsr.tiling.run.TileExecutor` over Ray actors that each hold ``pipe`` loaded.

    It takes the tile functions of ``pipe``'s own ``sr`` stages (bound methods: the stage is
    found by its index, the method by its name) and sends each group to the next actor in turn,
    ``IN_FLIGHT_PER_WORKER`` groups per actor in flight. The actors start with the first group:
    ``workers`` of them (default: one per GPU of the cluster on CUDA, else one per CPU), each
    reserving the stage's memory estimate for such a group, so no more start than the nodes'
    memory holds. Errors of the tile function come back as themselves (out of memory included,
    so this process backs off as it would with the tiles computed here).
    """

    def __init__(self, ray, pipe, workers: int | None = None):
        self.ray, self.pipe, self.workers = ray, pipe, workers
        self._options, self._gpu = _options(ray, pipe)
        self._actors: list = []
        self.depth = IN_FLIGHT_PER_WORKER  # until the actors start
        self.submitted = 0
        self._lock = threading.Lock()  # Ray calls from the work thread vs close() from the main one
        self._closed = False

    def _start(self, stage, batch) -> None:
        ray, options = self.ray, dict(self._options)
        resources = ray.cluster_resources()
        n = int(resources.get("GPU", 1)) if self._gpu else int(resources.get("CPU", 1) // CPUS_PER_TASK)
        if not self._gpu:  # (on a GPU the GPUs bound how many run at once)
            nodes = [node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")]
            memory = int(min(_worker_memory(stage, batch), max(nodes, default=0)))
            if memory > 0:
                options["memory"] = memory
                n = min(n, sum(int(m // memory) for m in nodes))
        n = max(1, min(self.workers or n, n))
        actor = ray.remote(_TileWorker).options(max_restarts=2, max_task_retries=0, **options)
        recipe = _recipe(self.pipe, self._gpu)  # by value (a few kB): a restarted actor needs it again
        self._actors = [actor.remote(recipe, _env_vars()) for _ in range(n)]
        self.depth = IN_FLIGHT_PER_WORKER * n

    def accepts(self, fn) -> bool:
        return not self._closed and self._index(fn) is not None

    def _index(self, fn) -> int | None:
        owner = getattr(fn, "__self__", None)
        for i, st in enumerate(self.pipe.stages):
            if st is owner and st.type in SPREAD_STAGES:
                return i
        return None

    def submit(self, fn, batch, starts) -> _Handle:
        index, name = self._index(fn), fn.__func__.__name__
        with self._lock:
            self._check_open()
            if not self._actors:
                self._start(fn.__self__, batch)
            actor = self._actors[self.submitted % len(self._actors)]
            self.submitted += 1
            state = getattr(fn.__self__, "tile_state", None)
            return _Handle(self, actor.call.remote(index, name, batch, starts, state))

    def cancel(self, handle: _Handle) -> None:
        with self._lock, contextlib.suppress(Exception):
            if not self._closed:
                self.ray.cancel(handle.ref)

    def _result(self, ref):
        while True:
            with self._lock:
                self._check_open()
                ready, _ = self.ray.wait([ref], timeout=WAIT)
                if ready:
                    try:
                        kind, value = self.ray.get(ref)
                    except self.ray.exceptions.RayError as exc:
                        raise _ray_failure(self.ray, exc, "a tile") from exc
                    break
        if kind == "error":
            raise value
        return value

    def _check_open(self) -> None:
        if self._closed:
            raise Cancelled("the Ray workers were shut down")

    def close(self) -> None:
        """End the actors; calls in flight raise Cancelled."""
        with self._lock:
            self._closed = True
            for a in self._actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(a)


@contextlib.contextmanager
def spread_tiles(pipe, address: str | None = None, *, num_cpus: int | None = None,
                 workers: int | None = None) -> Iterator[RayTileExecutor]:
    """Inside the block, the tiles of ``pipe``'s ``sr`` stages are computed by Ray workers.

    Runs in a :func:`ray_session` (``address``, ``num_cpus``); ``workers`` actors (default: one per
    CPU, or per GPU on CUDA) each load ``pipe``'s models once. Everything else (reading,
    blending, other stages, writing) stays in this process, unchanged: the output is the same,
    byte for byte, as without the block. For one large image; a batch runs best as
    :func:`run_batch` does it, one image per worker.
    """
    from .tiling.run import use_executor

    with ray_session(address, num_cpus) as ray:
        executor = RayTileExecutor(ray, pipe, workers)
        try:
            with use_executor(executor):
                yield executor
        finally:
            executor.close()
