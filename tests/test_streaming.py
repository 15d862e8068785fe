"""The streamed data flow: band canvases, stores, band-by-band resize and colour fix, the planner."""
import numpy as np
import pytest

from tiledsr.colorfix import colorfix, colorfix_bands
from tiledsr.resample import resize, resize_bands
from tiledsr.tiling import Canvas, run_tiled, tile_weights, window
from tiledsr.tiling.bands import BandCanvas
from tiledsr.tiling.run import output_grid, tiled_bands
from tiledsr.io.write import quantize
from tiledsr.tiling.store import ArrayStore, FileStore, StreamStore, aligned, collect, new_store, rebanded

RNG = np.random.default_rng(7)


def per_tile(b):
    """x2 nearest with a per-tile wobble: any blending mistake shows."""
    out = np.repeat(np.repeat(b, 2, axis=1), 2, axis=2)
    return out * np.float32(0.9) + np.float32(0.05) * np.sin(b.sum(axis=(1, 2, 3)))[:, None, None, None]


def whole_canvas(img, fn, scale, tile, overlap, context=0):
    """The old whole-image canvas, as the reference."""
    h, w, _ = img.shape
    g = output_grid(h, w, scale, tile, overlap)
    c = Canvas(h * scale, w * scale, img.shape[2])
    for t in g.tiles:
        (y0, yh, oy), (x0, xw, ox) = window(t.y, t.h, scale, context, h), window(t.x, t.w, scale, context, w)
        o = fn(img[None, y0:y0 + yh, x0:x0 + xw])[0]
        c.add(t.y, t.x, o[oy:oy + t.h, ox:ox + t.w], tile_weights(g, t, "cosine"))
    return c.result()


@pytest.mark.parametrize("shape", [(37, 53), (61, 17), (97, 89), (16, 200)])
def test_bands_equal_the_whole_canvas_in_any_order_and_batch(shape):
    img = RNG.random((*shape, 3), dtype=np.float32)
    ref = whole_canvas(img, per_tile, 2, 24, 8, context=2)
    n = len(output_grid(*shape, 2, 24, 8))
    for order, batch in ((None, 1), (list(RNG.permutation(n)), 3), (list(range(n))[::-1], 2)):
        out = run_tiled(img, per_tile, scale=2, tile=24, overlap=8, context=2, order=order, batch=batch)
        assert np.array_equal(out, ref)


def test_row_major_holds_one_row_of_tiles():
    img = RNG.random((300, 40, 1), dtype=np.float32)
    grid = output_grid(300, 40, 1, 32, 8)
    canvas = BandCanvas(grid, 1)
    held = 0
    out = []
    for t in grid.tiles:
        out += canvas.add(t, img[t.y:t.y + t.h, t.x:t.x + t.w], tile_weights(grid, t, "cosine"))
        held = max(held, len(canvas._acc))
    assert held <= grid.tile_h
    assert sum(len(b) for b in out) == 300


@pytest.mark.parametrize("start", [1, 29, 30, 47, 73])
def test_start_gives_the_same_rows(start):
    img = RNG.random((37, 41, 3), dtype=np.float32)
    ref = run_tiled(img, per_tile, scale=2, tile=24, overlap=8)
    tail = collect(tiled_bands(ArrayStore(img), per_tile, scale=2, tile=24, overlap=8, start=start))
    assert np.array_equal(tail, ref[start:])


def test_out_of_memory_backs_off_batch_then_tile():
    img = RNG.random((40, 44, 3), dtype=np.float32)
    calls = []

    def flaky(b):
        calls.append(b.shape)
        if len(calls) in (2, 4):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
        return np.repeat(np.repeat(b, 2, axis=1), 2, axis=2)

    notes = []
    out = run_tiled(img, flaky, scale=2, tile=32, overlap=8, batch=2, on_backoff=notes.append, min_tile=8)
    assert np.abs(out - np.repeat(np.repeat(img, 2, 0), 2, 1)).max() < 1e-6
    assert "batch of 2" in notes[0] and "px tiles" in notes[1]


def test_out_of_memory_at_the_smallest_tile_is_out_of_memory():
    from tiledsr.errors import OutOfMemory

    def never(b):
        raise MemoryError()

    with pytest.raises(OutOfMemory, match="smallest useful tile"):
        run_tiled(RNG.random((40, 40, 3), dtype=np.float32), never, scale=2, tile=32, overlap=4, min_tile=16)


def test_other_errors_are_not_backed_off():
    def broken(b):
        raise RuntimeError("shapes do not match")

    with pytest.raises(RuntimeError, match="shapes"):
        run_tiled(RNG.random((40, 40, 3), dtype=np.float32), broken, scale=2, tile=32, overlap=4)


@pytest.mark.parametrize("sizes", [((37, 53), (296, 424)), ((100, 80), (299, 240)), ((300, 200), (101, 67)),
                                   ((5, 7), (40, 56)), ((1, 9), (4, 36)), ((97, 89), (97, 89))])
@pytest.mark.parametrize("method", ["lanczos", "bicubic", "bilinear", "area", "nearest"])
def test_resize_bands_equal_the_whole_resize(sizes, method):
    (h, w), out = sizes
    img = RNG.random((h, w, 2), dtype=np.float32)
    ref = resize(img, out, method)
    bands = list(resize_bands(ArrayStore(img), out, method, rows=7))
    assert np.abs(collect(bands) - ref).max() <= 1e-6
    for start in (1, 7, 20):
        if start < out[0]:  # a resumed run computes exactly the same bands
            assert np.array_equal(collect(resize_bands(ArrayStore(img), out, method, rows=7, start=start)),
                                  collect(bands)[start:])


def test_resize_bands_read_forwards_from_a_stream():
    img = RNG.random((64, 30, 3), dtype=np.float32)
    src = StreamStore(iter(np.array_split(img, 9)), img.shape)
    assert np.abs(collect(resize_bands(src, (150, 70), "lanczos", rows=11)) - resize(img, (150, 70))).max() <= 1e-6


@pytest.mark.parametrize("method", ["wavelet", "adain"])
@pytest.mark.parametrize("shape,ref_shape", [((300, 200, 3), (75, 50, 3)), ((97, 89, 4), (40, 30, 4)),
                                             ((64, 40, 1), (16, 10, 1)), ((120, 70, 3), (30, 20, 1)),
                                             ((5, 300, 2), (2, 100, 2))])
def test_colorfix_bands_equal_the_whole_colorfix(method, shape, ref_shape):
    img, ref = RNG.random(shape, dtype=np.float32), RNG.random(ref_shape, dtype=np.float32)
    whole = colorfix(img, ref, method)
    out = collect(colorfix_bands(ArrayStore(img), ArrayStore(ref), method, rows=37))
    assert np.abs(out - whole).max() <= 1e-6
    if shape[0] > 50:
        tail = collect(colorfix_bands(ArrayStore(img), ArrayStore(ref), method, rows=37, start=50))
        assert np.abs(tail - whole[50:]).max() <= 1e-6


def test_stores_and_band_helpers(tmp_path):
    img = RNG.random((33, 17, 3), dtype=np.float32)
    fs = FileStore(tmp_path / "a.f32", img.shape)
    for y, band in zip((0, 5, 20), (img[:5], img[5:20], img[20:])):
        fs.write(y, band)
    assert np.array_equal(fs.read(0, 33), img) and np.array_equal(fs.read(3, 9, 2, 11), img[3:9, 2:11])
    fs.close()
    assert not (tmp_path / "a.f32").exists()
    q = FileStore(tmp_path / "q.u16", (4, 3, 2), keep=True, dtype=np.uint16)
    q.write(0, np.arange(24, dtype=np.uint16).reshape(4, 3, 2))
    q.close()
    again = FileStore(tmp_path / "q.u16", (4, 3, 2), create=False, dtype=np.uint16)
    assert again.read(1, 2).tolist() == [[[6, 7], [8, 9], [10, 11]]]
    assert isinstance(new_store((10, 10, 3), 1 << 20, tmp_path), ArrayStore)
    assert isinstance(new_store((1000, 1000, 3), 1 << 20, tmp_path), FileStore)
    parts = np.array_split(img, 5)
    assert [len(b) for b in rebanded(iter(parts), 8)] == [8, 8, 8, 8, 1]
    zipped = collect(aligned(iter(parts), iter(np.array_split(img[:, :, :1], 3))))
    assert np.array_equal(zipped, np.concatenate([img, img[:, :, :1]], axis=2))
    assert quantize(np.array([[[-1.0, 0.5, 2.0, np.nan]]], np.float32), 8).tolist() == [[[0, 128, 255, 0]]]


def test_pipeline_stream_equals_run_array_and_plans_within_the_budget():
    from tiledsr.pipeline import Pipeline, Target

    img = RNG.random((40, 52, 4), dtype=np.float32)
    pipe = Pipeline([{"type": "resize", "scale": 3}, {"type": "colorfix"}, {"type": "resize", "scale": 0.5}],
                    target=Target(width=77))
    shape, bands = pipe.stream(img)
    out = collect(bands)
    assert out.shape == shape == (59, 77, 4)
    assert np.array_equal(out, pipe.run_array(img))
    plan = pipe.plan((52, 40), 4)
    assert plan.budget == pipe.memory_budget() and plan.peak_memory > 0


def test_planner_shrinks_tiles_to_the_budget_and_an_explicit_tile_wins():
    from tiledsr.pipeline import Pipeline

    small = Pipeline.from_preset("photo-x4", memory_budget="1GB").plan((512, 512))
    large = Pipeline.from_preset("photo-x4", memory_budget="64GB").plan((512, 512))
    assert small.stages[0].tiling.tile < large.stages[0].tiling.tile == 1024
    assert small.peak_memory <= 1 << 30
    mine = Pipeline.from_preset("photo-x4", overrides={"tile": 512}, memory_budget="1GB").plan((512, 512))
    assert mine.stages[0].tiling.tile == 512


def test_tile_without_overlap_shrinks_the_overlap():
    from tiledsr.pipeline import Pipeline

    pipe = Pipeline.from_preset("photo-x4", overrides={"tile": 64})
    assert pipe.preset.tiling.overlap == 4
    assert pipe.plan((100, 80)).stages[0].grid is not None
    assert Pipeline.from_preset("photo-x4", overrides={"tile": 2048}).preset.tiling.overlap == 64
