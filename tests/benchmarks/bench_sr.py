"""Benchmark the `sr` stage on a real photo against ncnn running the same weights directly.

Run:  .venv/bin/python tests/benchmarks/bench_sr.py [--size 256] [--repeats 3] [--model x4plus]

Prints, measured in this one run on this machine:
  * tiledsr's default path (Pipeline.from_preset, run_array) vs ncnn's own Net on the whole
    image, interleaved A/B, median seconds and their ratio;
  * tiled (small tiles) vs untiled (one tile) through tiledsr: time, max abs difference, PSNR;
All times are medians over --repeats runs after the model is loaded and warmed up.
  * the torch backend's time for the same job.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np


def photo(size: int) -> np.ndarray:
    """skimage's astronaut, area-downscaled to size x size: float32 (H, W, 3) in [0, 1]."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def ncnn_direct(param: str, binf: str, threads: int):
    """A function running ncnn on the whole image: (H, W, 3) float32 -> (4H, 4W, 3)."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    net.load_param(param)
    net.load_model(binf)

    def run(img: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(img.transpose(2, 0, 1))  # ncnn.Mat borrows it: keep it alive
        ex = net.create_extractor()
        ex.input("data", ncnn.Mat(chw))
        _, out = ex.extract("output")
        return np.array(out).transpose(1, 2, 0)

    return run


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def median_timed(fn, arg, repeats: int):
    runs = [timed(fn, arg) for _ in range(repeats)]
    return statistics.median(t for t, _ in runs), runs[-1][1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256, help="input side in pixels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="x4plus")
    ap.add_argument("--tiled-tile", type=int, nargs="+", default=[512, 256],
                    help="output tile sizes for the tiled-vs-untiled runs (overlap 32)")
    args = ap.parse_args()

    import torch
    from tiledsr import Pipeline
    from tiledsr.models import load_sr_model

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    img = photo(args.size)
    model = load_sr_model(args.model)
    direct = ncnn_direct(*map(str, model.ncnn_files), threads)
    preset = {"photo-x4": "x4plus", "anime-x4": "x4plus-anime", "fast-x4": "animevideov3"}
    name = next(k for k, v in preset.items() if v == args.model)
    ours = Pipeline.from_preset(name, device="cpu")
    ours.load()
    backend = ours.stages[0].backend

    # 1. Default path vs ncnn direct, interleaved so drift hits both alike.
    direct(img[:32, :32]); ours.run_array(img[:32, :32])  # warm-up
    t_direct, t_ours = [], []
    for _ in range(args.repeats):
        t, ref = timed(direct, img)
        t_direct.append(t)
        t, out = timed(ours.run_array, img)
        t_ours.append(t)
    md, mo = statistics.median(t_direct), statistics.median(t_ours)

    # 2. Tiled vs untiled through tiledsr (same backend, models loaded and warmed first).
    def loaded(tile: int, overlap: int):
        pipe = Pipeline.from_preset(name, device="cpu", overrides={"tile": tile, "overlap": overlap})
        pipe.load()
        pipe.run_array(img[:16, :16])
        return pipe

    t_un, a = median_timed(loaded(100000, 0).run_array, img, args.repeats)
    tiled_rows = []
    for tile in args.tiled_tile:
        pipe = loaded(tile, 32)
        st = pipe.plan((args.size, args.size)).stages[0]
        t, b = median_timed(pipe.run_array, img, args.repeats)
        tiled_rows.append((tile, len(st.grid), st.redundancy, t, np.abs(a - b).max() * 255, psnr(a, b)))

    # 3. The torch backend for the same job.
    torch_pipe = Pipeline.from_preset(name, device="cpu", sets=["sr.backend=torch"])
    torch_pipe.load()
    torch_pipe.run_array(img[:32, :32])
    t_torch, c = median_timed(torch_pipe.run_array, img, args.repeats)

    print(f"date {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {threads} threads,"
          f" torch {torch.__version__}, model {args.model}, input {args.size}x{args.size} astronaut")
    print(f"| measure | value |\n|---|---|")
    print(f"| ncnn direct, whole image (median of {args.repeats}) | {md:.2f} s |")
    print(f"| tiledsr default ({name}, backend {backend}) | {mo:.2f} s |")
    print(f"| ratio tiledsr / ncnn direct | {mo / md:.3f} |")
    print(f"| tiledsr default vs ncnn direct: max abs diff | {np.abs(np.clip(out,0,1) - np.clip(ref,0,1)).max() * 255:.2f} / 255 |")
    print(f"| untiled (one tile) | {t_un:.2f} s |")
    for tile, n, red, t, diff, db in tiled_rows:
        print(f"| tiled, {n} tiles of {tile} px, overlap 32, redundant compute {red:.2f}x | {t:.2f} s"
              f" ({t / t_un:.2f}x untiled); max diff {diff:.2f} / 255, PSNR {db:.1f} dB |")
    print(f"| torch backend, default tiling | {t_torch:.2f} s ({t_torch / md:.2f}x ncnn) |")
    print(f"| torch vs ncnn: max abs diff | {np.abs(np.clip(c,0,1) - np.clip(ref,0,1)).max() * 255:.2f} / 255 |")


if __name__ == "__main__":
    main()
