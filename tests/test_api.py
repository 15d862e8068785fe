"""The Python API: ``tiledsr.upscale`` takes every option of the command line and reports
``start`` ... ``done`` events; a cancelled file-to-file run resumes to the same bytes."""
import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tiledsr
from tiledsr.cli import build_parser


def picture(path: Path, h: int = 40, w: int = 56) -> Path:
    from skimage import data

    Image.fromarray(data.astronaut()[120:120 + h, 180:180 + w]).save(path)
    return path


def test_public_names_are_exported_and_typed():
    for name in ("Cancelled", "InputError", "ModelNotAvailable", "OutOfMemory", "PresetError", "TiledsrError"):
        err = getattr(tiledsr, name)
        assert issubclass(err, tiledsr.TiledsrError) and name in tiledsr.__all__
    assert tiledsr.__all__ == sorted(tiledsr.__all__)
    assert tiledsr.Cancelled.exit_code == 130 and tiledsr.InputError.exit_code == 2
    assert (Path(tiledsr.__file__).parent / "py.typed").is_file()
    assert tiledsr.ProgressEvent.__doc__ and "preview" in tiledsr.ProgressEvent.__doc__
    assert tiledsr.Plan.__doc__ and "output_size" in tiledsr.Plan.__doc__


def test_every_cli_run_option_has_a_keyword():
    """Each option of ``tiledsr upscale`` (but the CLI's own: progress bar kind, debug, out-dir)
    is a keyword of ``tiledsr.upscale``."""
    up = build_parser()._subparsers._group_actions[0].choices["upscale"]
    cli_only = {"help", "inputs", "output", "out_dir", "progress", "debug", "sets"}
    names = {a.dest for a in up._actions} - cli_only
    keywords = set(inspect.signature(tiledsr.upscale).parameters)
    renamed = {"preset": "preset", "print_size": "print_size"}
    assert {renamed.get(n, n) for n in names} <= keywords, names - keywords
    assert "sets" in keywords


def test_three_lines_in_memory(tmp_path):
    src = picture(tmp_path / "in.png")
    out = tiledsr.upscale(str(src), preset="lanczos", scale=2)
    assert isinstance(out, Image.Image) and out.size == (112, 80)


def test_events_start_stages_done_and_sizes(tmp_path):
    src, dst = picture(tmp_path / "in.png"), tmp_path / "out.png"
    events = []
    img = tiledsr.upscale(src, dst, preset="lanczos", size=(100, 70), progress=events.append)
    assert img.size == (100, 70) and dst.is_file()
    kinds = [e.event for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "stage" in kinds and "progress" in kinds
    assert all(e.input == str(src) for e in events)
    assert events[0].output == str(dst) and events[-1].output == str(dst)
    elapsed = [e.elapsed for e in events]
    assert elapsed == sorted(elapsed)
    # in memory too
    events.clear()
    tiledsr.upscale(np.zeros((8, 8, 3), np.uint8), preset="lanczos", scale=2, progress=events.append)
    assert [events[0].event, events[-1].event] == ["start", "done"]
    events.clear()
    pipe = tiledsr.Pipeline.from_preset("lanczos")
    pipe(np.zeros((8, 8, 3), np.uint8), progress=events.append)
    assert [events[0].event, events[-1].event] == ["start", "done"]


def test_print_size_and_budget(tmp_path):
    src, dst = picture(tmp_path / "in.png", 30, 20), tmp_path / "out.tif"
    img = tiledsr.upscale(src, dst, preset="lanczos", print_size="2x3in@50", memory_budget="1GB")
    assert img.size == (100, 150)
    assert tuple(round(float(v)) for v in img.info["dpi"]) == (50, 50)


@pytest.mark.parametrize("kw", [dict(scale=2, width=10), dict(size=(5, 5), width=4), dict(engine="spark"),
                                dict(address="ray://x:1"), dict(resume=True)])
def test_bad_combinations_are_input_errors(tmp_path, kw):
    with pytest.raises(tiledsr.InputError):
        tiledsr.upscale(np.zeros((8, 8, 3), np.uint8), preset="lanczos", **kw)


def test_folder_src_is_refused(tmp_path):
    picture(tmp_path / "a.png")
    with pytest.raises(tiledsr.InputError, match="folder"):
        tiledsr.upscale(tmp_path, tmp_path / "out.png", preset="lanczos")


@pytest.fixture
def small_bands(monkeypatch):
    """Bands of a few KB, so a small image streams in many bands (and checkpoints after each)."""
    import tiledsr.resample

    monkeypatch.setenv("TILEDSR_CHECKPOINT_EVERY", "0")
    monkeypatch.setattr(tiledsr.resample, "BAND_BYTES", 64 * 1024)


def test_cancelled_run_resumes_to_the_same_bytes(tmp_path, small_bands):
    src = picture(tmp_path / "in.png", 64, 64)
    fresh = tmp_path / "fresh.png"
    tiledsr.upscale(src, fresh, preset="lanczos", scale=16)
    dst = tmp_path / "out.png"
    seen = []

    def cancel_late(ev):
        seen.append(ev)
        return not (ev.event == "progress" and ev.tile >= 2)

    with pytest.raises(tiledsr.Cancelled):
        tiledsr.upscale(src, dst, preset="lanczos", scale=16, progress=cancel_late)
    assert not dst.exists()
    work = [p for p in tmp_path.iterdir() if p.name.startswith(".tiledsr-work-")]
    assert len(work) == 1, "the finished work is kept"
    with pytest.raises(tiledsr.InputError, match="resume=True"):
        tiledsr.upscale(src, dst, preset="lanczos", scale=16)
    tiledsr.upscale(src, dst, preset="lanczos", scale=16, resume=True)
    assert dst.read_bytes() == fresh.read_bytes()
    assert not any(p.name.startswith(".tiledsr-work-") for p in tmp_path.iterdir())


def test_work_dir_and_restart(tmp_path, small_bands):
    src, dst, work = picture(tmp_path / "in.png", 64, 64), tmp_path / "out.png", tmp_path / "work"
    work.mkdir()
    with pytest.raises(tiledsr.Cancelled):
        tiledsr.upscale(src, dst, preset="lanczos", scale=16, work_dir=work,
                        progress=lambda ev: ev.event != "progress")
    assert any(work.iterdir())
    tiledsr.upscale(src, dst, preset="lanczos", scale=16, work_dir=work, restart=True)
    assert dst.is_file() and not any(work.iterdir())


def test_preview_keyword(tmp_path):
    src, dst, pv = picture(tmp_path / "in.png"), tmp_path / "out.png", tmp_path / "pv.jpg"
    events = []
    tiledsr.upscale(src, dst, preset="lanczos", scale=2, preview=pv, preview_every=0, progress=events.append)
    shown = [e for e in events if e.event == "preview"]
    assert shown and shown[-1].rows == 80 and shown[-1].preview == str(pv.resolve())
    assert Image.open(pv).format == "JPEG"
    with pytest.raises(tiledsr.InputError, match="preview"):
        tiledsr.upscale(src, tmp_path / "out2.png", preset="lanczos", scale=2, preview=src)


def test_overwrite_and_input_protection(tmp_path):
    src = picture(tmp_path / "in.png")
    before = src.read_bytes()
    with pytest.raises(tiledsr.InputError):
        tiledsr.upscale(src, src, preset="lanczos", scale=2)
    assert src.read_bytes() == before
    dst = tmp_path / "out.png"
    dst.write_bytes(b"mine")
    with pytest.raises(tiledsr.InputError):
        tiledsr.upscale(src, dst, preset="lanczos", scale=2)
    assert dst.read_bytes() == b"mine"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiledsr.upscale(src, dst, preset="lanczos", scale=2, overwrite=True).close()
    assert Image.open(dst).size == (112, 80)
