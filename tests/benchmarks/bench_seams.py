"""Seam scores of the bundled presets that run offline on a real photo, and what measuring them costs.

    .venv/bin/python tests/benchmarks/bench_seams.py [--photo astronaut|chelsea] [--repeats 3]

Part 1 runs each offline preset (lanczos, fast-x4, photo-x4, anime-x4; the diffusion presets need
hub models and are skipped), plus fast-x4 with --overlap 0, with --tile 256 and with --tile 256
--overlap 0, file to file on ``skimage.data`` photo (as ``tiledsr upscale`` runs it) and prints
each stage's seam report (:mod:`tiledsr.seams`), and the same for a deliberately bad tiling
(fast-x4, tile 256, overlap 0, ``sr.context=0``) before and after a ``seamfix`` stage.

Part 0 (:func:`calibrate`) measures the score on cases whose answer is known: untiled outputs,
exact tilings, tiles without context, tone-shifted tiles (the table in docs/seams.md).

Part 2 times ``--preset fast-x4`` on the 512x512 astronaut (and with ``--tile 256``) with the seam
meter and without it (the meter switched off in-process), interleaved, and prints the best
and median wall times and their ratio.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

OFFLINE = ["lanczos", "fast-x4", "photo-x4", "anime-x4"]
SKIPPED = ["sd-latent-x2", "sd-x4", "refine", "poster-x8", "txt2img-x4", "refine-xl", "poster-x8-xl"]


def photo(name: str, folder: Path) -> Path:
    from PIL import Image
    from skimage import data

    path = folder / f"{name}.png"
    Image.fromarray(getattr(data, name)()).save(path)
    return path


def run(src: Path, dst: Path, preset: str, **kw) -> tuple[float, list]:
    import tiledsr

    t0 = time.perf_counter()
    out = tiledsr.upscale(str(src), str(dst), preset=preset, overwrite=True, **kw)
    wall = time.perf_counter() - t0
    return wall, out.info["tiledsr_seams"]


def scores(src: Path, folder: Path) -> None:
    from tiledsr.seams import report_line

    print(f"## seam scores, {src.name}")
    cases = [(p, {}) for p in OFFLINE] + [("fast-x4", {"overlap": 0}), ("fast-x4", {"tile": 256}),
                                          ("fast-x4", {"tile": 256, "overlap": 0})]
    for preset, kw in cases:
        wall, seams = run(src, folder / "out.png", preset, **kw)
        flags = " ".join(f"--{k} {v}" for k, v in kw.items())
        lines = "; ".join(report_line(d) for d in seams) or "no tiled stage"
        print(f"{preset} {flags}".strip() + f" ({wall:.1f} s): {lines}")
    bad = folder / "bad.yaml"
    for tile in (256, 64):
        bad.write_text(f"tile: {tile}\noverlap: 0\nstages:\n  - {{type: sr, model: animevideov3, context: 0}}\n"
                       "  - {type: seamfix}\n")
        wall, seams = run(src, folder / "out.png", str(bad))
        print(f"bad tiling (fast-x4 model, tile {tile}, overlap 0, context 0) + seamfix ({wall:.1f} s): "
              + "; ".join(report_line(d) for d in seams))
    print(f"skipped (their hub models are not available offline): {', '.join(SKIPPED)}")


CROPS = {"astronaut": (0, 180, 128, 128), "astronaut-2": (200, 200, 128, 128), "chelsea": (60, 100, 128, 128),
         "chelsea-2": (100, 150, 128, 128), "coffee": (100, 200, 128, 128), "rocket": (150, 150, 128, 128)}


def calibrate() -> None:
    """The score on 128x128 photo crops upscaled x4 by fast-x4's network (512x512 out): the untiled
    output at every 4th row and column (128 px spans) and at a 64 px grid with overlap 16 (tiled
    equals untiled), tiles computed without context (64 and 128 px, no overlap), and tiles of the
    untiled output shifted in tone by +-0.01 / +-0.02 (64 px, no overlap)."""
    from skimage import data

    from tiledsr import Pipeline
    from tiledsr.seams import Seam, measure_store, seam_lines
    from tiledsr.tiling import make_grid
    from tiledsr.tiling.store import ArrayStore

    def sr(img, **tiling):
        pipe = Pipeline([{"type": "sr", "model": "animevideov3", **tiling}], device="cpu")
        return pipe.run_array(img), pipe

    def summary(values) -> str:
        v = np.array([x for x in values if x is not None])
        return f"worst {v.max():.2f}, 99th pct {np.percentile(v, 99):.2f}, median {np.median(v):.2f} over {len(v)}"

    print("## calibration: 128x128 crops x4 by fast-x4's network; worst / 99th percentile / median")
    every, rng = [], np.random.default_rng(0)
    for name, (y, x, h, w) in CROPS.items():
        img = np.ascontiguousarray(getattr(data, name.split("-")[0])()[y:y + h, x:x + w], dtype=np.float32) / 255
        whole, _ = sr(img, tile=4096)
        ref, out = ArrayStore(img), ArrayStore(whole)
        lines = [Seam(a, p, s, s + 128) for a in "hv" for p in range(12, 500, 4) for s in range(0, 512, 128)]
        every += [s.score for s in measure_store(out, lines, ref)]
        def tiled(**tiling) -> str:
            return summary(r.score for r in sr(img, **tiling)[1].seams[0].scores)

        row = [f"untiled at a 64 px grid, overlap 16: {tiled(tile=64, overlap=16)}"]
        for tile in (64, 128):
            row.append(f"no context, tile {tile}: {tiled(tile=tile, overlap=0, context=0)}")
        grid = make_grid(512, 512, 64, 0)
        for amount in (0.01, 0.02):
            shifted = whole.copy()
            for t in grid.tiles:
                shifted[t.slices] += rng.choice([-amount, amount])
            got = measure_store(ArrayStore(np.clip(shifted, 0, 1)), seam_lines(grid, 512, 512), ref)
            row.append(f"tones +-{amount}: {summary(s.score for s in got)}")
        print(f"{name}: " + "; ".join(row))
    print(f"untiled, every 4th row and column of all crops: {summary(every)}")


def cost(folder: Path, repeats: int) -> None:
    from PIL import Image

    from tiledsr import pipeline

    src = photo("astronaut", folder)
    metered = pipeline._SeamBook.meter
    print("## meter cost, astronaut 512x512 -> 2048x2048, fast-x4, file to file")
    for kw in ({}, {"tile": 256}):
        times = {"on": [], "off": []}
        run(src, folder / "warm.png", "fast-x4", **kw)  # load and warm up
        for _ in range(repeats):
            for mode in ("on", "off"):
                pipeline._SeamBook.meter = metered if mode == "on" else (lambda *a, **k: None)
                try:
                    times[mode].append(run(src, folder / f"{mode}.png", "fast-x4", **kw)[0])
                finally:
                    pipeline._SeamBook.meter = metered
        on, off = times["on"], times["off"]
        inside = _meter_time(src, folder, kw)
        flags = " ".join(f"--{k} {v}" for k, v in kw.items()) or "(default tile)"
        print(f"fast-x4 {flags}: with meter best {min(on):.2f} s median {statistics.median(on):.2f} s; "
              f"without best {min(off):.2f} s median {statistics.median(off):.2f} s; ratio best "
              f"{min(on) / min(off):.3f}, median {statistics.median(on) / statistics.median(off):.3f}; "
              f"time inside the meter {inside[0]:.3f} s of a {inside[1]:.2f} s run "
              f"({100 * inside[0] / inside[1]:.1f}%)")
        same = np.array_equal(np.asarray(Image.open(folder / "on.png")), np.asarray(Image.open(folder / "off.png")))
        assert same, "the meter changed the output"


def _meter_time(src: Path, folder: Path, kw: dict) -> tuple[float, float]:
    """(seconds spent in SeamMeter.feed, the run's wall seconds) for one run: the meter's own cost,
    free of the run-to-run noise of the network."""
    from tiledsr.seams import SeamMeter

    feed, spent = SeamMeter.feed, [0.0]

    def timed(self, band):
        t0 = time.perf_counter()
        try:
            return feed(self, band)
        finally:
            spent[0] += time.perf_counter() - t0

    SeamMeter.feed = timed
    try:
        wall = run(src, folder / "timed.png", "fast-x4", **kw)[0]
    finally:
        SeamMeter.feed = feed
    return spent[0], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photo", default="astronaut", choices=["astronaut", "chelsea"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-scores", action="store_true")
    ap.add_argument("--skip-calibration", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_calibration:
            calibrate()
        if not args.skip_scores:
            scores(photo(args.photo, folder), folder)
        if not args.skip_cost:
            cost(folder, args.repeats)


if __name__ == "__main__":
    main()
