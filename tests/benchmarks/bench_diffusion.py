"""Benchmark the tiled diffusion core with a real-size, random-weight x2 latent upscaler UNet.

Run:  .venv/bin/python tests/benchmarks/bench_diffusion.py [--device cpu|cuda] [--canvas 64] [--tile 32]
          [--overlap 8] [--steps 2] [--batch 4] [--threads 1] [--out bench.md]

The UNet has the published sd-x2-latent-upscaler architecture (372.6M parameters,
random weights: cost does not depend on them), guidance 0, Euler. Five runs:
untiled and tiled at a canvas of ``--canvas`` output-latent pixels, the same at
twice the side (4x the area) with the same tile, and the large canvas with tile
``2 * --tile`` (overlap/tile = 1/8, the presets' default ratio 128/1024).

Each run is a fresh subprocess (model built, then measured), so one run's
allocations cannot hide another's. Memory:
  * cpu: peak resident set size (VmHWM) over the denoising run, after resetting
    the high-water mark through /proc/self/clear_refs once the model is built;
    "working" is that peak minus the resident size just before the run (weights,
    Python and the allocator's retained pages are in the baseline). Linux only.
  * cuda: torch.cuda.max_memory_allocated over the run (after reset_peak_memory_stats);
    "working" is that minus the memory allocated before the run (the weights).
Time: of the LAST step (the first pays one-off kernel selection): wall time (on
cuda synchronised) and, on cpu, the process's CPU time, which other jobs on a
shared machine inflate far less than wall time (1 thread by default, so CPU
time is the work done). Ratios are taken on CPU time on cpu, wall time on cuda.
Prints markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tiny_models


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def build_unet(device: str):
    from tiny_models import latent_upscaler_unet

    return latent_upscaler_unet((384, 384, 768, 768), 4, attention_head_dim=64, cross_attention_dim=768).to(device)


def child(cfg: dict) -> dict:
    """One measured run; returns the numbers as a dict."""
    import torch
    import torch.nn.functional as F
    from diffusers import EulerDiscreteScheduler

    from tiledsr.diffusion.latent_upscale import upscale_latents
    from tiledsr.diffusion.loop import latent_grid, unet_multiple
    from tiledsr.diffusion.text import PromptEmbeds

    dev, canvas, tile, overlap = cfg["device"], cfg["canvas"], cfg["tile"], cfg["overlap"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    unet = build_unet(dev)
    g = torch.Generator().manual_seed(0)
    embeds = PromptEmbeds(torch.randn(1, 77, 768, generator=g), pooled=torch.randn(1, 768, generator=g))
    low = F.interpolate(torch.randn(1, 4, 4, 4, generator=g), size=(canvas // 2,) * 2, mode="bicubic")
    grid = latent_grid(canvas, canvas, tile, overlap, unet_multiple(unet))
    stamps: list[tuple[float, float]] = []

    def progress(step, steps, done, tiles):
        if done == tiles:
            if dev == "cuda":
                torch.cuda.synchronize()
            stamps.append((time.perf_counter(), time.process_time()))

    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _status_kib("VmRSS") * 1024
    t0 = (time.perf_counter(), time.process_time())
    out = upscale_latents(unet, EulerDiscreteScheduler(prediction_type="sample"), low, embeds,
                          steps=cfg["steps"], seed=0, tile=tile, overlap=overlap, batch=cfg["batch"],
                          progress=progress)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else _status_kib("VmHWM") * 1024
    before = stamps[-2] if len(stamps) > 1 else t0
    return {"tiles": len(grid), "tile_px": grid.tile_h, "redundancy": grid.redundancy,
            "step_s": stamps[-1][0] - before[0], "step_cpu_s": stamps[-1][1] - before[1], "base": base,
            "peak": peak, "finite": bool(out.isfinite().all())}


def run_child(cfg: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed for {cfg}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--canvas", type=int, default=64, help="small canvas side, output-latent pixels")
    ap.add_argument("--tile", type=int, default=32, help="tile side, output-latent pixels")
    ap.add_argument("--overlap", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4, help="tiles per UNet call (on cpu, batching amortises "
                    "streaming the 1.5 GB of weights: 9 tiles of 16 px took 6.6 s per step at batch 1, 3.1 s at 9)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default). On a shared 2-core machine 2 threads ran a step "
                         "5x slower than 1 (OpenMP spin-waiting against other jobs)")
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import torch

    s, t, o = args.canvas, args.tile, args.overlap
    runs = [("small, untiled", s, s, o), ("small, tiled", s, t, o), ("large (4x area), untiled", 2 * s, 2 * s, o),
            ("large (4x area), tiled, same tile", 2 * s, t, o),
            ("large, tiled, tile x2, overlap 1/8 tile (the presets' ratio)", 2 * s, 2 * t, 2 * t // 8)]
    load0 = os.getloadavg()
    res = {}
    for name, canvas, tile, overlap in runs:
        cfg = dict(device=args.device, canvas=canvas, tile=tile, overlap=overlap, steps=args.steps, batch=args.batch,
                   threads=args.threads)
        res[name] = (canvas, overlap, run_child(cfg))
    load1 = os.getloadavg()

    dev = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    lines = [f"## Tiled diffusion core: x2 latent upscaler UNet (372.6M params, random weights), {args.device}",
             "",
             f"{time.strftime('%Y-%m-%d')}, {dev}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{args.threads or torch.get_num_threads()} torch threads, {args.steps} Euler steps, guidance 0, "
             f"tile batch {args.batch}; "
             f"load average {load0[0]:.1f} before, {load1[0]:.1f} after (other jobs share this machine).",
             "",
             "| run | canvas (latent) | tiles, overlap | redundancy | last step, wall | last step, CPU | peak memory "
             "| working memory |",
             "|---|---|---|---|---|---|---|---|"]
    cpu = (lambda r: "n/a") if args.device == "cuda" else (lambda r: f"{r['step_cpu_s']:.2f} s")  # noqa: E731
    for name, (canvas, overlap, r) in res.items():
        lines.append(f"| {name} | {canvas}x{canvas} | {r['tiles']} x {r['tile_px']}px, {overlap} | "
                     f"{r['redundancy']:.2f} | "
                     f"{r['step_s']:.2f} s | {cpu(r)} | {gib(r['peak'])} | "
                     f"{gib(r['peak'] - r['base'])} |")
    small_u, small_t = res[runs[0][0]][2], res[runs[1][0]][2]
    large_u, large_t, large_d = (res[runs[i][0]][2] for i in (2, 3, 4))
    work = lambda r: r["peak"] - r["base"]  # noqa: E731
    key = "step_s" if args.device == "cuda" else "step_cpu_s"
    clock = "wall" if args.device == "cuda" else "CPU"
    lines += ["", "| goal | measured |", "|---|---|",
              f"| peak memory grows < 1.2x when the area grows 4x (fixed tile {t}) | peak {large_t['peak'] / small_t['peak']:.2f}x, "
              f"working {work(large_t) / work(small_t):.2f}x (untiled: peak {large_u['peak'] / small_u['peak']:.2f}x, "
              f"working {work(large_u) / work(small_u):.2f}x) |",
              f"| tiling costs <= 1.3x untiled time at the default overlap (1/8 tile), {clock} time | "
              f"{large_d[key] / large_u[key]:.2f}x at {2 * s}x{2 * s}, tile {2 * t}, overlap {2 * t // 8} |",
              f"| (tile {t}, overlap {o}: a heavier overlap ratio) | {small_t[key] / small_u[key]:.2f}x at "
              f"{s}x{s}, {large_t[key] / large_u[key]:.2f}x at {2 * s}x{2 * s} |"]
    if not all(r["finite"] for _, _, r in res.values()):
        lines.append("\nWARNING: a run produced non-finite latents.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
