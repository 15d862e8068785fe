"""GPU benchmark of the `sr` stage (torch backend): time and peak VRAM, tiled vs untiled, fp16 vs fp32.

Run:  python tests/benchmarks/bench_sr_cuda.py [--size 512] [--model x4plus]
Peak VRAM is torch.cuda.max_memory_allocated over one run; times are medians of 3 after a warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from tiledsr import Pipeline


def photo(size: int) -> np.ndarray:
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def measure(pipe: Pipeline, img: np.ndarray, repeats: int = 3) -> tuple[float, int, np.ndarray]:
    pipe.load()
    pipe.run_array(img[:32, :32])
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = pipe.run_array(img)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), torch.cuda.max_memory_allocated(), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--model", default="x4plus")
    args = ap.parse_args()
    img = photo(args.size)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, model {args.model},"
          f" astronaut {args.size}x{args.size} -> x4")
    print("| precision | tile (output px) | tiles | batch | time | peak VRAM | max diff vs untiled fp32 |")
    print("|---|---|---|---|---|---|---|")
    ref = None
    for precision in ("fp32", "fp16"):
        for tile, batch in ((100000, 1), (1024, 1), (512, 1), (512, 4), (256, 8)):
            pipe = Pipeline([{"type": "sr", "model": args.model, "backend": "torch", "tile": tile,
                              "overlap": 32, "batch": batch}], device="cuda", precision=precision)
            n = len(pipe.plan((args.size, args.size)).stages[0].grid)
            t, peak, out = measure(pipe, img)
            if ref is None:
                ref = out
            diff = np.abs(out - ref).max() * 255
            label = "untiled" if tile == 100000 else str(tile)
            print(f"| {precision} | {label} | {n} | {batch} | {t:.3f} s | {peak / 2**20:.0f} MiB | {diff:.2f} / 255 |")
            del pipe
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
