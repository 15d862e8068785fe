"""Seam scores (tiledsr.seams): the seam lines of a grid, the score on constructed cases (constant,
an exact tiled stage, a deliberately bad tiling, a natural edge on a seam line) and on a real photo
through fast-x4 with and without overlap, streaming in bands, and the reports (CLI, JSON, Python)."""
import json
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import tiledsr
from tiledsr import Pipeline
from tiledsr.cli import main
from tiledsr.stages.seamfix import SeamfixConfig
from tiledsr.seams import Seam, SeamMeter, measure_store, offsets, report_line, rescaled, seam_lines
from tiledsr.tiling import make_grid
from tiledsr.tiling.store import ArrayStore

DEFAULT_THRESHOLD = SeamfixConfig().threshold  # seams above it are repaired by default


def photo(name="chelsea", box=(60, 150, 64, 96)) -> np.ndarray:
    from skimage import data

    y, x, h, w = box
    return np.ascontiguousarray(getattr(data, name)()[y:y + h, x:x + w], dtype=np.float32) / 255


def fast_x4(img: np.ndarray, **tiling) -> tuple[np.ndarray, Pipeline]:
    pipe = Pipeline([{"type": "sr", "model": "animevideov3", **tiling}], device="cpu")
    return pipe.run_array(img), pipe


def shifted_tiles(out: np.ndarray, grid, amount: float, seed: int = 0) -> np.ndarray:
    """``out`` with each tile of a no-overlap ``grid`` moved up or down in tone: a bad tiling."""
    rng = np.random.default_rng(seed)
    bad = out.copy()
    for t in grid.tiles:
        bad[t.slices] += rng.choice([-amount, amount])
    return np.clip(bad, 0, 1)


def worst(scores) -> float:
    return max(s.score for s in scores)


def test_seam_lines_are_the_interior_tile_edges():
    g = make_grid(100, 150, 64, 0)
    seams = seam_lines(g, 100, 150)
    rows = sorted({s.pos for s in seams if s.axis == "h"})
    cols = sorted({s.pos for s in seams if s.axis == "v"})
    assert rows == list(g.ys[1:]) and cols == list(g.xs[1:])  # no overlap: one line per neighbour pair
    for pos in rows:  # each line is cut into one span per tile along it, covering the image once
        spans = [(s.start, s.stop) for s in seams if s.axis == "h" and s.pos == pos]
        assert spans[0][0] == 0 and spans[-1][1] == 150 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    g = make_grid(100, 150, 64, 16)
    both = seam_lines(g, 100, 150)
    assert {s.pos for s in both if s.axis == "v"} == {e for x in g.xs for e in (x, x + g.tile_w) if 0 < e < 150}
    assert len({s.pos for s in both if s.axis == "v"}) == 2 * (len(g.xs) - 1)  # start and end of each overlap
    assert seam_lines(make_grid(60, 60, 64, 0), 60, 60) == () and seam_lines(None, 10, 10) == ()
    # a grid over the network's canvas of an sr stage resized afterwards is scaled to the image
    assert {s.pos for s in seam_lines(make_grid(128, 128, 64, 0), 96, 96)} == {48}
    assert rescaled([Seam("h", 64, 0, 128)], (128, 128), (256, 256)) == (Seam("h", 128, 0, 256),)


def test_texture_lines_follow_the_input_pixels():
    assert offsets(1) == (3, 4, 5, 6) and offsets(None) == (3, 4, 5, 6) and offsets(1.5) == (3, 4, 5, 6)
    assert offsets(4) == (4, 8) and offsets(2) == (4, 6, 8) and offsets(8) == (8,)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_constant_image_scores_exactly_zero(channels):
    shape = (200, 300, channels)
    seams = seam_lines(make_grid(200, 300, 64, 16), 200, 300)
    for ref in (None, ArrayStore(np.full((50, 75, channels), 0.25, np.float32))):
        meter = SeamMeter(seams, shape, ref)
        for y0, y1 in [(0, 7), (7, 71), (71, 72), (72, 200)]:  # bands of any height
            meter.feed(np.full((y1 - y0, 300, channels), 0.6, np.float32))
        assert {s.score for s in meter.result()} == {0.0}


def test_scores_do_not_depend_on_how_the_rows_are_cut():
    rng = np.random.default_rng(1)
    img = rng.random((130, 170, 3), dtype=np.float32)
    ref = ArrayStore(rng.random((65, 85, 3), dtype=np.float32))
    seams = seam_lines(make_grid(130, 170, 48, 8), 130, 170)
    whole = measure_store(ArrayStore(img), seams, ref, rows=130)
    meter = SeamMeter(seams, img.shape, ref)
    for y in range(0, 130, 13):
        meter.feed(img[y:y + 13])
    assert meter.result() == whole and all(s.score is not None for s in whole)
    assert measure_store(ArrayStore((img * 255).round().astype(np.uint8)), seams, ref)  # 8-bit bands too


def test_an_exact_tiled_stage_scores_near_zero():
    img = photo()
    tiled, pipe = fast_x4(img, tile=64, overlap=16)
    whole, _ = fast_x4(img, tile=4096)
    assert np.abs(tiled - whole).max() <= 1 / 255  # tiled output equals untiled
    (report,) = pipe.seams
    assert report.stage == "sr" and report.count == len(seam_lines(pipe.stages[0].grid(64, 96), 256, 384)) > 100
    assert report.median <= 0.05 and report.worst < DEFAULT_THRESHOLD  # seamfix would leave it alone
    # the untiled output at the same lines scores the same: what is measured is the tiling, not the photo
    again = measure_store(ArrayStore(whole), [s.seam for s in report.scores], ArrayStore(img))
    assert [s.score for s in again] == pytest.approx([s.score for s in report.scores], abs=0.05)


def test_a_deliberately_bad_tiling_scores_clearly_positive():
    img = photo()
    whole, _ = fast_x4(img, tile=4096)
    grid = make_grid(256, 384, 64, 0)
    seams = seam_lines(grid, 256, 384)
    exact = measure_store(ArrayStore(whole), seams, ArrayStore(img))
    bad = worst(measure_store(ArrayStore(shifted_tiles(whole, grid, 0.03)), seams, ArrayStore(img)))
    assert worst(exact) < 1 and bad >= 5 and bad >= 10 * worst(exact)
    # tiles computed without context, overlap or feathering: the network sees each tile's border,
    # and a grid shows all over the picture (a blur band and a step at every tile edge)
    _, pipe = fast_x4(img, tile=64, overlap=0, context=0)
    (report,) = pipe.seams
    assert report.worst > DEFAULT_THRESHOLD > 2 * worst(exact)
    assert report.median >= 0.3 and np.median([s.score for s in exact]) <= 0.05


def test_a_natural_edge_on_a_seam_line_is_not_a_seam():
    """An edge of the input that the output keeps on a tile boundary is explained by the input."""
    img = np.full((32, 32, 3), 0.2, np.float32)
    img[:, 16:] = 0.8  # an edge at input column 16 -> output column 64, a tile edge
    out = np.repeat(np.repeat(img, 4, axis=0), 4, axis=1)
    seams = [s for s in seam_lines(make_grid(128, 128, 64, 0), 128, 128) if s.axis == "v"]
    assert worst(measure_store(ArrayStore(out), seams, ArrayStore(img))) == 0.0
    assert worst(measure_store(ArrayStore(out), seams, None)) > 100  # a purely local statistic calls it a seam


def events_of(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("overlap", [16, 0])
def test_real_photo_through_fast_x4_with_and_without_overlap(tmp_path, capsys, overlap):
    src = tmp_path / "in.png"
    Image.fromarray(np.rint(photo() * 255).astype(np.uint8)).save(src)
    args = ["upscale", str(src), "-o", str(tmp_path / "out.png"), "--preset", "fast-x4", "--tile", "64",
            "--overlap", str(overlap)]
    code = main([*args, "--progress", "json"])
    err = capsys.readouterr().err
    assert code == 0, err
    done = events_of(err)[-1]
    assert done["event"] == "done"
    (entry,) = done["seams"]
    assert entry["stage"] == "sr" and entry["stage_index"] == 0 and entry["count"] == (134 if overlap else 38)
    assert 0 <= entry["median"] <= 0.05 and entry["worst"] < DEFAULT_THRESHOLD
    # human mode: one plan-style line per stage measured, after the run
    code = main([*args, "--overwrite", "--progress", "bar"])
    err = capsys.readouterr().err
    assert code == 0
    assert f"seams: stage 1 sr: worst {entry['worst']:.2f}, median {entry['median']:.2f} over {entry['count']} " \
           "seams" in err.splitlines()


def test_python_api_and_pipeline_report_the_seams():
    img = photo(box=(60, 150, 40, 56))
    events = []
    out = tiledsr.upscale(Image.fromarray(np.rint(img * 255).astype(np.uint8)), preset="fast-x4", tile=64,
                          overlap=16, progress=events.append)
    seams = out.info["tiledsr_seams"]
    assert seams and seams[0]["stage"] == "sr" and seams[0]["count"] > 0
    assert events[-1].event == "done" and events[-1].seams == seams
    pipe = Pipeline.from_preset("fast-x4", overrides={"tile": 64, "overlap": 16}, device="cpu")
    assert pipe.seams == []
    result = pipe(Image.fromarray(np.rint(img * 255).astype(np.uint8)))
    assert [r.to_dict() for r in pipe.seams] == result.info["tiledsr_seams"] == seams
    assert pipe.seams[0].scores[0].seam.axis in ("h", "v")
    lanczos = Pipeline.from_preset("lanczos", device="cpu")
    lanczos.run_array(img)
    assert lanczos.seams == []  # nothing tiled, nothing measured


def test_report_lines():
    d = {"stage": "sr", "stage_index": 0, "worst": 0.1234, "median": 0.03, "count": 24}
    assert report_line(d) == "seams: stage 1 sr: worst 0.12, median 0.03 over 24 seams"
    d = {"stage": "seamfix", "stage_index": 1, "worst": 0.5, "median": 0.0, "count": 24, "repaired": 3,
         "worst_before": 5.25, "median_before": 0.1}
    assert report_line(d).endswith("over 24 seams; repaired 3 (worst before 5.25)")
    assert report_line({"stage": "seamfix", "stage_index": 0, "worst": None, "median": None, "count": 0,
                        "repaired": 0, "worst_before": None}) == "seams: stage 1 seamfix: no seams measured; repaired 0"


def test_the_meter_holds_rows_around_the_lines_not_the_image():
    h, w, rows = 2048, 2048, 64
    seams = seam_lines(make_grid(h, w, 256, 32), h, w)
    ref = ArrayStore(np.full((512, 512, 3), 0.5, np.float32))
    meter = SeamMeter(seams, (h, w, 3), ref)
    band = np.random.default_rng(0).random((rows, w, 3), dtype=np.float32)  # 1.5 MB; the image is 48 MB
    tracemalloc.start()
    try:
        for _ in range(0, h, rows):
            meter.feed(band)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert all(s.score is not None for s in meter.result())
    assert peak < 8 << 20, peak
