"""The Ray engine: a batch (one task per image) and one image's tiles spread over Ray workers give
the same bytes as a local run; errors keep their exit code and their one line; with ``--progress
json`` stderr holds nothing but JSON; no Ray process outlives the run; a missing ray says how to
install it. The tile-executor hook of ``tiled_bands`` is checked without Ray first.

One local Ray (2 CPUs) serves the module; the two subprocess tests start their own.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiledsr.cli import main
from tiledsr.errors import InputError
from tiledsr.tiling.run import run_tiled, use_executor

RNG = np.random.default_rng(3)
INSTALL = 'pip install "tiledsr[ray]"'


# 1. The executor hook, with threads for workers.

def wobble(b):
    """x2 nearest with a per-tile wobble: a tile blended in the wrong place shows."""
    out = np.repeat(np.repeat(b, 2, axis=1), 2, axis=2)
    return out * np.float32(0.9) + np.float32(0.05) * np.sin(b.sum(axis=(1, 2, 3)))[:, None, None, None]


class Pool:
    """A TileExecutor over a thread pool: results come back out of order."""

    depth = 3

    def __init__(self, accepted):
        self.accepted, self.submitted = accepted, 0
        self.pool = ThreadPoolExecutor(2)

    def accepts(self, fn):
        return fn is self.accepted

    def submit(self, fn, batch, starts):
        self.submitted += 1
        time.sleep(0.001 * RNG.integers(3))
        return self.pool.submit(fn, batch) if starts is None else self.pool.submit(fn, batch, starts)

    def cancel(self, handle):
        handle.cancel()


@pytest.mark.parametrize("tile,batch,order", [(24, 1, None), (24, 3, "shuffled"), (16, 2, "reversed")])
def test_an_executor_gives_the_local_result(tile, batch, order):
    img = RNG.random((45, 37, 3), dtype=np.float32)
    from tiledsr.tiling.run import output_grid

    n = len(output_grid(45, 37, 2, tile, 8))
    order = {None: None, "shuffled": list(RNG.permutation(n)), "reversed": list(range(n))[::-1]}[order]
    kw = dict(scale=2, tile=tile, overlap=8, context=2, batch=batch, order=order)
    ticks_here, ticks_there = [], []
    ref = run_tiled(img, wobble, on_tile=lambda d, t: ticks_here.append(d), **kw)
    pool = Pool(wobble)
    with use_executor(pool):
        out = run_tiled(img, wobble, on_tile=lambda d, t: ticks_there.append(d), **kw)
        assert np.array_equal(run_tiled(img, lambda b: wobble(b), **kw), ref)  # not accepted: computed here
    assert np.array_equal(out, ref) and ticks_there == ticks_here
    # one submission per group of tiles and window shape (edge tiles have smaller windows)
    from tiledsr.tiling.run import _by_shape, windows

    tiles = output_grid(45, 37, 2, tile, 8).tiles
    todo = [tiles[i] for i in order] if order is not None else list(tiles)
    groups = [todo[i:i + batch] for i in range(0, n, batch)]
    assert pool.submitted == sum(len(_by_shape(windows(g, 2, 2, 45, 37))) for g in groups) >= -(-n // batch)


def test_out_of_memory_through_an_executor_backs_off_as_here():
    def big_fails(b):  # windows over 20 input px "do not fit"
        if b.shape[1] > 20:
            raise MemoryError("cannot allocate")
        return wobble(b)

    img = RNG.random((50, 44, 3), dtype=np.float32)
    kw = dict(scale=2, tile=48, overlap=8, context=2, batch=2)
    said_here, said_there = [], []
    ref = run_tiled(img, big_fails, on_backoff=said_here.append, **kw)
    with use_executor(Pool(big_fails)):
        out = run_tiled(img, big_fails, on_backoff=said_there.append, **kw)
    assert np.array_equal(out, ref) and said_there == said_here and len(said_here) == 2


# 2. No ray installed.

def test_missing_ray_is_exit_2_with_the_install_command(monkeypatch, capfd, tmp_path):
    from tiledsr.distributed import ray_session

    photo = picture(tmp_path / "a.png", 0)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(InputError, match=INSTALL.replace("[", r"\[").replace("]", r"\]")):
        with ray_session():
            pass
    code = main(["upscale", str(photo), "-o", str(tmp_path / "b.png"), "--preset", "lanczos", "--engine", "ray"])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1 and INSTALL in err and not (tmp_path / "b.png").exists()


# 3. On a local Ray.

def picture(path: Path, k: int, h: int = 48, w: int = 64) -> Path:
    from skimage import data

    source = (data.chelsea, data.astronaut, data.coffee)[k % 3]()
    Image.fromarray(source[60 + 7 * k:60 + 7 * k + h, 90:90 + w]).save(path)
    return path


@pytest.fixture(scope="module")
def ray_up():
    pytest.importorskip("ray")
    from tiledsr.distributed import ray_session

    with ray_session(num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    for k in range(3):
        picture(d / f"im{k}.png", k, 48 + 8 * k)
    return d


def json_lines(err: str) -> list[dict]:
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(e, dict) for e in events)
    return events


def same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names and names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_a_batch_on_ray_writes_the_local_bytes(ray_up, folder, tmp_path, capfd):
    argv = ["upscale", str(folder), "--preset", "fast-x4"]
    assert main([*argv, "--out-dir", str(tmp_path / "here"), "--progress", "none"]) == 0
    capfd.readouterr()
    assert main([*argv, "--out-dir", str(tmp_path / "ray"), "--engine", "ray", "--progress", "json",
                 "--preview", str(tmp_path / "pv.jpg")]) == 0
    events = json_lines(capfd.readouterr().err)
    same_files(tmp_path / "here", tmp_path / "ray")
    assert any(e["event"] == "warning" and "--preview is off" in e["message"] for e in events)
    assert not (tmp_path / "pv.jpg").exists()  # images at once on several workers: no preview
    assert all("input" in e for e in events if e["event"] != "warning")
    inputs = {str(p) for p in folder.iterdir()}
    for kind in ("start", "done"):
        assert sorted(e["input"] for e in events if e["event"] == kind) == sorted(inputs)
    assert {e["event"] for e in events} >= {"start", "stage", "progress", "done"}


def test_one_image_spread_over_workers_writes_the_local_bytes(ray_up, folder, tmp_path, capfd):
    argv = ["upscale", str(folder / "im1.png"), "--preset", "fast-x4", "--tile", "64", "--overlap", "16"]
    assert main([*argv, "-o", str(tmp_path / "here.png"), "--progress", "none"]) == 0
    capfd.readouterr()
    assert main([*argv, "-o", str(tmp_path / "ray.png"), "--engine", "ray", "--progress", "json"]) == 0
    events = json_lines(capfd.readouterr().err)
    assert (tmp_path / "ray.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    ticks = [e["tile"] for e in events if e["event"] == "progress"]
    assert ticks == list(range(1, ticks[-1] + 1)) and ticks[-1] > 4
    assert all("input" in e for e in events if e["event"] != "warning")


def test_spread_tiles_runs_every_tile_on_the_workers(ray_up, folder):
    from tiledsr import Pipeline
    from tiledsr.distributed import spread_tiles
    from tiledsr.io import read_image

    image, _ = read_image(folder / "im2.png")
    image = image.astype(np.float32) / 255
    pipe = Pipeline.from_preset("fast-x4", overrides={"tile": 64, "overlap": 16})
    ref = pipe.run_array(image)
    with spread_tiles(pipe) as executor:
        out = pipe.run_array(image)
    assert np.array_equal(out, ref)
    assert executor.submitted == len(pipe.stages[0].grid(*image.shape[:2]))
    assert not executor.accepts(pipe.stages[0]._network)  # closed with the block


def test_python_api_engine_ray_writes_the_local_bytes(ray_up, folder, tmp_path):
    import tiledsr

    src = folder / "im1.png"
    tiledsr.upscale(src, tmp_path / "here.png", preset="fast-x4", tile=64, overlap=16).close()
    events = []
    tiledsr.upscale(src, tmp_path / "ray.png", preset="fast-x4", tile=64, overlap=16, engine="ray",
                    progress=events.append).close()
    assert (tmp_path / "ray.png").read_bytes() == (tmp_path / "here.png").read_bytes()
    assert [events[0].event, events[-1].event] == ["start", "done"]


@pytest.mark.parametrize("model", ["sd", "sdxl+controlnet"])
def test_img2img_independent_tiles_spread_over_workers(ray_up, tmp_path_factory, model):
    """img2img in independent mode: each tile is refined on its own, so tiles go to the workers
    (a tiny random-weight SD, or SDXL with a ControlNet, whose tiles need the picture's size:
    the stage's tile_state travels with each batch). Workers run torch on one thread, the local
    run on two: the UNet's sums round differently (by 1e-7 to 1e-5), unlike ncnn and torch convs for
    sr, which give the same bits at any thread count."""
    pytest.importorskip("diffusers")
    from tiny_models import build_tiny_controlnet, build_tiny_sd, build_tiny_sdxl

    from tiledsr import Pipeline
    from tiledsr.distributed import spread_tiles

    root = tmp_path_factory.mktemp(model)
    extra = {}
    if model == "sd":
        sd = build_tiny_sd(root / "sd")
    else:
        sd = build_tiny_sdxl(root / "xl")
        extra = {"controlnet": str(build_tiny_controlnet(root / "cn", sd))}
    image = RNG.random((72, 80, 3), dtype=np.float32)
    stages = [{"type": "img2img", "model": str(sd), "mode": "independent", "steps": 3, "strength": 0.5,
               "tile": 48, "overlap": 16, **extra}]
    ref = Pipeline(stages, device="cpu").run_array(image)
    pipe = Pipeline(stages, device="cpu")
    with spread_tiles(pipe) as executor:
        out = pipe.run_array(image)
    assert executor.submitted == len(pipe.stages[0].grid(72, 80)) > 1
    assert np.abs(out - ref).max() < 1e-4  # measured 1e-7 (SD) and 1.1e-5 (SDXL + ControlNet)


def test_an_error_in_a_task_comes_back_as_itself(ray_up, folder, tmp_path, capfd):
    bad = tmp_path / "in"
    bad.mkdir()
    good = (folder / "im0.png").read_bytes()
    (bad / "a.png").write_bytes(good)
    (bad / "b.png").write_bytes(good[: len(good) * 2 // 3])  # its header reads; its rows do not
    code = main(["upscale", str(bad), "--out-dir", str(tmp_path / "out"), "--preset", "lanczos", "--engine", "ray",
                 "--progress", "json"])
    events = json_lines(capfd.readouterr().err)
    assert code == 2 and events[-1]["event"] == "error" and events[-1]["code"] == 2
    assert "b.png" in events[-1]["message"] and [e["event"] for e in events].count("error") == 1
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".tiledsr")]


@pytest.mark.parametrize("inputs", ["batch", "one image"])
def test_out_of_memory_on_the_workers_is_exit_4(ray_up, folder, tmp_path, capfd, monkeypatch, inputs):
    monkeypatch.setenv("TILEDSR_FAIL_OOM", "all")  # handed to the workers with the job
    argv = ([str(folder), "--out-dir", str(tmp_path / "out")] if inputs == "batch"
            else [str(folder / "im0.png"), "-o", str(tmp_path / "out" / "a.png"), "--tile", "64"])
    (tmp_path / "out").mkdir()
    code = main(["upscale", *argv, "--preset", "fast-x4", "--engine", "ray", "--progress", "json"])
    events = json_lines(capfd.readouterr().err)
    assert code == 4 and events[-1]["event"] == "error" and events[-1]["code"] == 4
    assert "out of memory" in events[-1]["message"]
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary file, no work directory


# 4. Whole runs in their own process: stderr, and what is left afterwards.

def ray_processes(tag: str) -> list[str]:
    """Command lines of the running processes that name ``tag`` (the run's TMPDIR) or have it as
    their TMPDIR (Ray's processes rename themselves ``ray::...`` but keep the environment)."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline", "environ", "status"]):
        cmd, env = " ".join(p.info["cmdline"] or ()), p.info["environ"] or {}
        if (tag in cmd or env.get("TMPDIR") == tag) and p.pid != os.getpid() and p.info["status"] != "zombie":
            found.append(cmd[:160])
    return found


@pytest.fixture
def short_tmp():
    """A short TMPDIR for a subprocess: Ray's socket paths must stay under 108 characters."""
    with tempfile.TemporaryDirectory(prefix="tr", dir="/tmp" if os.path.isdir("/tmp") else None) as d:
        yield Path(d)


def cli(args, tmp: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp)}
    env.pop("TILEDSR_FAIL_OOM", None)
    return subprocess.Popen([sys.executable, "-m", "tiledsr", "upscale", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_a_run_leaves_no_ray_behind_and_only_json_on_stderr(folder, tmp_path, short_tmp):
    pytest.importorskip("ray")
    assert main(["upscale", str(folder), "--out-dir", str(tmp_path / "here"), "--preset", "lanczos",
                 "--progress", "none"]) == 0
    proc = cli([folder, "--out-dir", tmp_path / "ray", "--preset", "lanczos", "--engine", "ray",
                "--progress", "json"], short_tmp)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert out == "" and len([e for e in json_lines(err) if e["event"] == "done"]) == 3
    same_files(tmp_path / "here", tmp_path / "ray")
    assert ray_processes(str(short_tmp)) == []
    assert list(short_tmp.iterdir()) == []  # Ray's session folder removed


def test_ctrl_c_stops_the_batch_and_ray(tmp_path, short_tmp):
    pytest.importorskip("ray")
    big = tmp_path / "in"
    big.mkdir()
    for k in range(4):
        picture(big / f"b{k}.png", k, 96, 96)
    proc = cli([big, "--out-dir", tmp_path / "out", "--preset", "fast-x4", "--tile", "64", "--engine", "ray",
                "--progress", "json"], short_tmp)
    lines: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 180
    while not any('"start"' in line for line in lines) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(10)
    events = json_lines("".join(lines))
    assert proc.returncode == 130 and events[-1]["event"] == "error" and events[-1]["code"] == 130
    assert "--resume" in events[-1]["message"]  # the images stopped on the way keep their work
    assert ray_processes(str(short_tmp)) == []
    assert list(short_tmp.iterdir()) == []
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
