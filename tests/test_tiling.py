"""Tiling invariants: geometry, blending, order independence, identity exactness."""
import numpy as np
import pytest

from tiledsr.errors import InputError
from tiledsr.tiling import BLENDS, Canvas, make_grid, output_grid, run_tiled, tile_weights, window
from tiledsr.tiling.grid import axis_starts

SIZES = [(1, 1), (7, 5), (13, 31), (37, 53), (97, 61), (64, 64), (128, 200)]


def upscale_nearest(scale):
    return lambda b: np.repeat(np.repeat(b, scale, 1), scale, 2)


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (100, 32, 8, 1), (101, 32, 8, 1), (97, 16, 15, 1), (31, 64, 8, 1), (1, 1, 0, 1),
    (400, 64, 16, 4), (404, 64, 16, 4), (4096, 1024, 64, 4), (64, 64, 0, 1),
])
def test_axis_covers_with_equal_tiles_and_min_overlap(length, tile, overlap, multiple):
    size, starts = axis_starts(length, tile, overlap, multiple)
    assert size <= min(tile, length) and size % multiple == 0 or size == length
    if len(starts) > 1:  # the fewest tiles of at most `tile` that can cover with this overlap
        step = (tile - overlap) // multiple * multiple
        assert (len(starts) - 2) * step + tile < length  # one tile fewer could not cover
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(s % multiple == 0 for s in starts)
    assert list(starts) == sorted(set(starts))
    for a, b in zip(starts, starts[1:]):
        assert a + size - b >= overlap  # neighbours overlap by at least `overlap`
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all()


@pytest.mark.parametrize("tile,overlap", [(0, 0), (-4, 0), (8, 8), (8, 9), (8, -1)])
def test_axis_rejects_bad_settings(tile, overlap):
    with pytest.raises(InputError):
        axis_starts(100, tile, overlap)


@pytest.mark.parametrize("blend", BLENDS)
def test_weights_positive_integer_and_full_on_canvas_edges(blend):
    g = make_grid(70, 90, 32, 8)
    for t in g.tiles:
        w = tile_weights(g, t, blend)
        assert w.shape == (t.h, t.w) and w.dtype == np.int64 and w.min() >= 1
    if blend != "gaussian":
        first = tile_weights(g, g.tiles[0], blend)
        assert first[0, 0] == first.max()  # the canvas corner is not feathered


def test_single_tile_has_flat_weights():
    g = make_grid(20, 30, 64, 8)
    assert len(g) == 1 and (g.tile_h, g.tile_w) == (20, 30)
    for blend in BLENDS:
        w = tile_weights(g, g.tiles[0], blend)
        assert w.min() == w.max()


def test_tiles_shrink_to_fit_instead_of_piling_up():
    size, starts = axis_starts(1024, 512, 32, 4)
    assert len(starts) == 3 and size == 364  # not three 512 px tiles overlapping by 256
    assert axis_starts(1024, 512, 0, 4) == (512, (0, 512))


def test_window_has_the_context_where_the_image_has_it_and_no_more():
    h, scale, ctx = 50, 4, 6
    g = output_grid(h, h, scale, 64, 16)
    n = g.tile_h // scale
    for y in g.ys:
        first = y // scale
        start, size, off = window(y, g.tile_h, scale, ctx, h)
        assert 0 <= start and start + size <= h
        assert off >= 0 and off + g.tile_h <= size * scale
        before, after = first - start, start + size - first - n
        assert before == min(ctx, first) and after == min(ctx, h - first - n)  # exactly the context it can have
        # asked for one size, the windows grow inwards at the border and keep their context
        start, size, off = window(y, g.tile_h, scale, ctx, h, n + 2 * ctx)
        assert size == n + 2 * ctx and 0 <= start and start + size <= h
        assert first - start >= min(ctx, first) and start + size - first - n >= min(ctx, h - first - n)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("blend", BLENDS)
def test_constant_stays_constant(h, w, blend):
    img = np.full((h, w, 3), 0.3137, np.float32)
    out = run_tiled(img, upscale_nearest(2), scale=2, tile=16, overlap=6, context=2, blend=blend)
    assert out.shape == (2 * h, 2 * w, 3)
    assert np.abs(out - 0.3137).max() < 1e-6


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_identity_is_exact_for_8_and_16_bit(h, w, bits, channels):
    rng = np.random.default_rng(h * w + bits)
    top = 2 ** bits - 1
    q = rng.integers(0, top + 1, (h, w, channels))
    img = (q / top).astype(np.float32)
    for tile, overlap, blend in [(8, 3, "linear"), (13, 5, "cosine"), (32, 0, "gaussian"), (512, 8, "cosine")]:
        out = run_tiled(img, lambda b: b, scale=1, tile=tile, overlap=overlap, blend=blend)
        assert np.array_equal(np.rint(out * top).astype(np.int64), q)


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_tiled_equals_untiled_for_local_function(scale):
    """A 3x3 box filter + nearest upscale has a receptive radius of 1: context 1 is exact."""
    rng = np.random.default_rng(scale)
    img = rng.random((41, 29, 3), dtype=np.float32)

    def fn(b):
        p = np.pad(b, ((0, 0), (1, 1), (1, 1), (0, 0)))
        box = sum(p[:, i:i + b.shape[1], j:j + b.shape[2]] for i in range(3) for j in range(3)) / 9
        return upscale_nearest(scale)(box)

    whole = fn(img[None])[0]
    tiled = run_tiled(img, fn, scale=scale, tile=12 * scale, overlap=4 * scale, context=1)
    assert np.abs(tiled - whole).max() < 1e-6


@pytest.mark.parametrize("blend", BLENDS)
def test_tile_order_and_batch_do_not_change_a_bit(blend):
    rng = np.random.default_rng(7)
    img = rng.random((45, 67, 3), dtype=np.float32)
    noisy = lambda b: upscale_nearest(2)(b) + 0.01 * np.sin(np.arange(b.shape[2] * 2))[None, None, :, None]
    n = len(output_grid(45, 67, 2, 24, 8))
    ref = run_tiled(img, noisy, scale=2, tile=24, overlap=8, blend=blend)
    for batch in (1, 3, n):
        order = rng.permutation(n)
        out = run_tiled(img, noisy, scale=2, tile=24, overlap=8, blend=blend, batch=batch, order=order)
        assert np.array_equal(out, ref)


def test_progress_reports_every_tile():
    seen = []
    img = np.zeros((30, 30, 1), np.float32)
    run_tiled(img, lambda b: b, scale=1, tile=10, overlap=2, batch=2, on_tile=lambda d, n: seen.append((d, n)))
    n = seen[-1][1]
    assert seen[-1] == (n, n) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_size_multiple_padding_is_cropped():
    img = np.random.default_rng(0).random((23, 19, 3), dtype=np.float32)

    def needs_even(b):
        assert b.shape[1] % 4 == 0 and b.shape[2] % 4 == 0
        return upscale_nearest(2)(b)

    out = run_tiled(img, needs_even, scale=2, tile=16, overlap=4, context=2, multiple=4)
    assert np.array_equal(out, upscale_nearest(2)(img[None])[0])


def test_memmap_canvas_matches_ram(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.random((33, 47, 3), dtype=np.float32)
    f = upscale_nearest(2)
    ram = run_tiled(img, f, scale=2, tile=20, overlap=6)
    disk = run_tiled(img, f, scale=2, tile=20, overlap=6, scratch_dir=str(tmp_path))
    assert np.array_equal(ram, disk)


def test_canvas_int64_accumulation_is_order_free():
    c1, c2 = Canvas(4, 4, 1), Canvas(4, 4, 1)
    a = np.full((4, 4, 1), 0.1, np.float32)
    b = np.full((4, 4, 1), 0.7, np.float32)
    w1, w2 = np.full((4, 4), 3, np.int64), np.full((4, 4), 1000, np.int64)
    c1.add(0, 0, a, w1); c1.add(0, 0, b, w2)
    c2.add(0, 0, b, w2); c2.add(0, 0, a, w1)
    assert np.array_equal(c1.result(), c2.result())
