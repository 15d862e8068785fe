"""Poster features through the command line: print sizes, out-of-memory back-off, the plan's budget."""
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from tiledsr.cli import main
from tiledsr.io import read_image, write_image


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def picture(path, h, w):
    from skimage import data

    write_image(path, data.astronaut()[:h * 4:4, :w * 4:4].astype(np.float32) / 255)
    return path


@pytest.mark.slow
def test_print_24x36in_at_300_on_a_portrait(tmp_path, capsys):
    src = picture(tmp_path / "portrait.png", 60, 40)  # 2:3
    out = tmp_path / "print.tif"
    code, _, err = run(capsys, "upscale", src, "-o", out, "--preset", "lanczos", "--print", "24x36in@300",
                       "--progress", "none")
    assert code == 0, err
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert page.shape[:2] == (10800, 7200)
        assert page.tags["XResolution"].value == (300, 1) and page.tags["ResolutionUnit"].value == 2


def test_print_size_writes_the_dpi_and_fits_other_aspects(tmp_path, capsys):
    src = picture(tmp_path / "square.png", 40, 40)
    for fmt in ("png", "jpeg", "tiff"):
        out = tmp_path / f"o.{fmt}"
        code, _, err = run(capsys, "upscale", src, "-o", out, "--preset", "lanczos", "--print", "2x3in@100",
                           "--progress", "none")
        assert code == 0, err
        im = Image.open(out)
        assert im.size == (200, 200) and tuple(round(v) for v in im.info["dpi"]) == (100, 100), fmt
    code, out, _ = run(capsys, "plan", src, "--preset", "lanczos", "--print", "2x3in@100")
    assert code == 0 and "at 100 DPI" in out and "fitted inside the print" in out
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "x.png", "--print", "24x36ft@300")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_fail_oom_backs_off_and_completes_within_one_level(tmp_path, capsys, monkeypatch):
    from tiledsr import faults

    src = picture(tmp_path / "in.png", 48, 56)
    ref = tmp_path / "ref.png"
    assert run(capsys, "upscale", src, "-o", ref, "--preset", "fast-x4", "--progress", "none")[0] == 0
    monkeypatch.setenv("TILEDSR_FAIL_OOM", "2")
    faults.reset()
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "upscale", src, "-o", out, "--preset", "fast-x4", "--progress", "json")
    assert code == 0, err
    events = [json.loads(line) for line in err.splitlines()]
    assert sum(e["event"] == "backoff" for e in events) == 2
    a, b = read_image(ref)[0], read_image(out)[0]
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6
    monkeypatch.setenv("TILEDSR_FAIL_OOM", "all")
    faults.reset()
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / "never.png", "--preset", "fast-x4",
                       "--progress", "none")
    assert code == 4 and len(err.strip().splitlines()) == 1 and "smallest useful tile" in err
    assert not (tmp_path / "never.png").exists() and not list(tmp_path.glob(".tiledsr-*"))


def test_plan_prints_the_budget_and_each_stages_tiling(tmp_path, capsys):
    src = picture(tmp_path / "in.png", 128, 128)
    code, out, _ = run(capsys, "plan", src, "--memory-budget", "500MB")  # below one 1024 px tile's need
    assert code == 0 and "memory budget 500.0 MB (--memory-budget)" in out
    assert "batch 1" in out and "estimated peak" in out
    tile = int(out.split("(tile ")[1].split(",")[0])
    assert tile < 1024  # fitted to the budget
    code, _, err = run(capsys, "plan", src, "--memory-budget", "lots")
    assert code == 2 and "--memory-budget" in err
    code, out, _ = run(capsys, "plan", src, "--tile", "64")  # the overlap shrinks with the tile
    assert code == 0 and "(tile 64, overlap 4," in out
