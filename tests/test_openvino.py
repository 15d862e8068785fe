"""The OpenVINO backend: equal to the torch port on a real photo, its disk cache, its refusals and
its out-of-memory path; the sr stage runs it tiled and plan says which backend auto picks."""
import os

import numpy as np
import pytest

from tiledsr import Pipeline
from tiledsr.errors import InputError, OutOfMemory
from tiledsr.models import load_sr_model, make_runner

ov = pytest.importorskip("openvino", reason="the openvino package is not installed (pip install tiledsr[openvino])")


def photo(name="chelsea", box=(60, 150, 64, 96)) -> np.ndarray:
    from skimage import data

    y, x, h, w = box
    return np.ascontiguousarray(getattr(data, name)()[y:y + h, x:x + w], dtype=np.float32) / 255


def nchw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None])


@pytest.mark.parametrize("name", ["animevideov3", pytest.param("x4plus", marks=pytest.mark.slow)])
def test_equals_the_torch_port_on_a_real_photo(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path))
    model = load_sr_model(name)
    x = nchw(photo())
    ours = make_runner(model, backend="openvino", threads=2)
    ref = make_runner(model, backend="torch")(x)
    out = ours(x)
    assert out.shape == ref.shape == (1, 3, 256, 384)
    assert np.abs(out - ref).max() <= 1 / 255
    # one compiled model serves every tile size (dynamic height and width) and batches
    small = nchw(photo(box=(0, 0, 20, 36)))
    assert np.abs(ours(np.concatenate([small, small])) - make_runner(model, backend="torch")(
        np.concatenate([small, small]))).max() <= 1 / 255


def test_the_converted_model_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path))
    model = load_sr_model("animevideov3")
    x = nchw(photo(box=(0, 0, 24, 32)))
    first = make_runner(model, backend="openvino")
    assert not first.cached
    (stored,) = [p for p in (tmp_path / "openvino").iterdir() if p.name.startswith("srvgg-")]
    assert (stored / "model.xml").is_file() and (stored / "model.bin").stat().st_size > 1 << 20
    second = make_runner(model, backend="openvino")
    assert second.cached and np.array_equal(second(x), first(x))
    (stored / "model.xml").write_text("<damaged")  # a damaged cache is converted again, in memory
    third = make_runner(model, backend="openvino")
    assert not third.cached and np.array_equal(third(x), first(x))
    assert not [p for p in (tmp_path / "openvino").iterdir() if p.name.startswith(".")]  # no temporary left


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(blocked / "cache"))
    runner = make_runner(load_sr_model("animevideov3"), backend="openvino")
    assert not runner.cached and runner(nchw(photo(box=(0, 0, 8, 8)))).shape == (1, 3, 32, 32)
    assert blocked.read_text() == "not a folder"


def test_refusals_are_one_line_input_errors():
    model = load_sr_model("animevideov3")
    with pytest.raises(InputError, match="runs in fp32, got precision fp16"):
        make_runner(model, backend="openvino", precision="fp16")
    with pytest.raises(InputError, match="expects an N x 3"):
        make_runner(model, backend="openvino")(np.zeros((1, 4, 8, 8), np.float32))


def test_out_of_memory_names_the_backend_and_tile(monkeypatch):
    runner = make_runner(load_sr_model("animevideov3"), backend="openvino")
    monkeypatch.setenv("TILEDSR_FAIL_OOM", "1")
    from tiledsr import faults

    faults.reset()
    with pytest.raises(OutOfMemory, match=r"animevideov3 \(openvino\) on a 16x16-pixel input tile"):
        runner(np.zeros((1, 3, 16, 16), np.float32))


def test_sr_stage_tiled_equals_untiled_and_plan_names_the_backend():
    img = photo(box=(60, 150, 48, 72))
    whole = Pipeline([{"type": "sr", "model": "animevideov3", "tile": 4096, "backend": "openvino"}],
                     device="cpu").run_array(img)
    pipe = Pipeline([{"type": "sr", "model": "animevideov3", "tile": 96, "overlap": 16}], device="cpu")
    assert "backend openvino, the fastest on the CPU" in pipe.plan((72, 48)).stages[0].description
    tiled = pipe.run_array(img)
    assert pipe.stages[0].backend == "openvino"
    assert np.abs(tiled - whole).max() <= 1 / 255


def test_the_first_conversion_says_so_once(tmp_path, monkeypatch, capsys):
    """The CLI prints one note while a model is converted for the first time, and none once it is cached."""
    import json

    from PIL import Image

    from tiledsr.cli import main

    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path / "cache"))
    src = tmp_path / "in.png"
    Image.fromarray((photo(box=(0, 0, 24, 32)) * 255).astype(np.uint8)).save(src)
    argv = ["upscale", str(src), "--preset", "fast-x4", "--set", "sr.backend=openvino", "--overwrite", "-o"]
    assert main(argv + [str(tmp_path / "a.png"), "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    notes = [e for e in events if e["event"] == "note"]
    assert len(notes) == 1 and "converting animevideov3 for openvino" in notes[0]["message"]
    assert str(tmp_path / "cache") in notes[0]["message"]
    assert main(argv + [str(tmp_path / "b.png")]) == 0
    assert "note:" not in capsys.readouterr().err  # cached: nothing to say
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path / "other"))
    assert main(argv + [str(tmp_path / "c.png")]) == 0
    err = capsys.readouterr().err
    assert err.count("tiledsr: note: converting animevideov3 for openvino") == 1


def test_a_full_disk_while_saving_leaves_no_temporary_and_the_run_goes_on(tmp_path, monkeypatch):
    """ENOSPC while the converted model is written: the runner still works from memory, nothing half-written
    stays in the cache, and the next run converts again; a temporary folder left by a killed run is removed."""
    import errno
    import time

    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "openvino"
    stale = folder / ".srvgg-0123-killed"
    stale.mkdir(parents=True)
    (stale / "model.xml").write_text("<half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    fresh = folder / ".srvgg-4567-running"  # another run saving right now: kept
    fresh.mkdir()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ov, "save_model", full)
    model = load_sr_model("animevideov3")
    runner = make_runner(model, backend="openvino")
    assert not runner.cached and runner(nchw(photo(box=(0, 0, 8, 8)))).shape == (1, 3, 32, 32)
    left = sorted(p.name for p in folder.iterdir() if p.name != "compiled")
    assert left == [fresh.name]  # no half-written model, the stale temporary gone, the live one kept
    monkeypatch.undo()
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(tmp_path))
    assert not make_runner(model, backend="openvino").cached  # converted again, and stored this time
    assert make_runner(model, backend="openvino").cached
