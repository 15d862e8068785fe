"""Benchmark the tiled VAE against the untiled one on an SD-size random-weight AutoencoderKL.

Run:  .venv/bin/python tests/benchmarks/bench_vae.py [--size 512] [--tile 256] [--overlap 32] [--no-attention]
      .venv/bin/python tests/benchmarks/bench_vae.py --contexts 0,2,4,8 [--no-attention]   (context sweep)

The VAE has the SD VAE's architecture (block_out_channels 128/256/512/512, 2 layers per
block, 83.7M parameters) with seeded random weights: cost does not depend on the weights,
closeness does (random attention mixes far more globally than a trained one may). A real
photo (skimage's astronaut, area-downscaled to --size) is encoded untiled; those latents are
decoded untiled and tiled. Each job runs in its own subprocess so that its peak RSS
(ru_maxrss) is its own. Prints a markdown table of, for encode and decode each:
  * seconds, untiled vs tiled with per-tile GroupNorm statistics vs shared (exact) statistics,
    found in one lockstep pass (every tile pauses at each GroupNorm) or by one sweep per GroupNorm;
  * closeness to untiled: PSNR of the decoded image (8-bit scale), or relative RMSE of latents;
  * the largest per-tile tone difference: mean over each tile's core (the region it owns) of
    tiled minus untiled, largest over tiles and channels, in 8-bit levels (latents: in latent stds);
  * peak RSS of the process, and its rise above the loaded model. Children run with glibc's
    MALLOC_MMAP_THRESHOLD_=65536: with the default, glibc keeps freed blocks of up to 32 MB in
    its heap, and the hundreds of tile runs of the shared mode then inflate the peak RSS by a
    few hundred MB that no live tensor uses.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tiny_models

# how the GroupNorm statistics are found: untiled run, per tile, shared in one lockstep pass, shared by sweeps
HOWS = ("untiled", "per-tile", "one-pass", "sweeps")
JOBS = [(what, how) for what in ("encode", "decode") for how in HOWS]


def build_vae(attention: bool):
    from tiny_models import autoencoder

    return autoencoder((128, 256, 512, 512), layers_per_block=2, attention=attention)


def photo(size: int) -> torch.Tensor:
    """skimage's astronaut, area-downscaled: (1, 3, size, size) float32 in [-1, 1]."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BOX)
    return torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)[None].contiguous()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def run_job(args) -> None:
    """Child process: one job; saves its tensor and prints seconds and memory as JSON."""
    from tiledsr.diffusion.vae import tiled_decode, tiled_encode

    vae = build_vae(not args.no_attention)
    sf = vae.config.scaling_factor
    what, how = args.job.split(":")
    src = photo(args.size) if what == "encode" else torch.load(os.path.join(args.dir, "encode-untiled.pt")) / sf
    loaded = rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        if how == "untiled":
            out = vae.encode(src).latent_dist.mode() * sf if what == "encode" else vae.decode(src).sample
        else:
            fn = tiled_encode if what == "encode" else tiled_decode
            out = fn(vae, src, tile=args.tile, overlap=args.overlap, shared_norm=how != "per-tile",
                     one_pass=how == "one-pass", context=args.context)
    seconds = time.perf_counter() - t0
    torch.save(out, os.path.join(args.dir, f"{what}-{how}.pt"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak, "loaded_mb": loaded}))


def tile_tone(diff: torch.Tensor, grid, f: int) -> float:
    """Largest |mean| of ``diff`` (1, C, H, W) over a tile's owned region, over tiles and channels."""
    from tiledsr.diffusion.vae import _owned

    rows = _owned(grid.ys, grid.tile_h, grid.height)
    cols = _owned(grid.xs, grid.tile_w, grid.width)
    return max(float(diff[0, :, a * f:b * f, c * f:d * f].mean((1, 2)).abs().max()) for a, b in rows for c, d in cols)


def metrics(what: str, out: torch.Tensor, ref: torch.Tensor, grid) -> tuple[str, str]:
    """(closeness, worst tile tone) of a tiled result against the untiled one."""
    if what == "decode":
        a, b = ((out.clamp(-1, 1) + 1) * 127.5), ((ref.clamp(-1, 1) + 1) * 127.5)
        mse = float(((a - b) ** 2).mean())
        return f"{10 * np.log10(255 ** 2 / max(mse, 1e-12)):.1f} dB", f"{tile_tone(a - b, grid, 8):.2f} levels"
    rel = float((out - ref).pow(2).mean().sqrt() / ref.std())
    return f"{rel:.3f} rel. RMSE", f"{tile_tone(out - ref, grid, 1) / float(ref.std()):.3f} stds"


def child(args, d: str, job: str, context: int) -> dict:
    """Run one job in a subprocess of its own; its JSON result."""
    cmd = [sys.executable, __file__, "--job", job, "--dir", d, "--size", str(args.size),
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--context", str(context)]
    cmd += ["--no-attention"] if args.no_attention else []
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors go back to the OS
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def area_ratio(grid, context: int) -> float:
    """Sum of the windows' areas over the image's (the work the tiles do, against an untiled run)."""
    from tiledsr.diffusion.vae import _windows

    return sum(yh * xw for _, (_, yh, _), (_, xw, _), _ in _windows(grid, context)) / (grid.height * grid.width)


def max_levels(what: str, out: torch.Tensor, ref: torch.Tensor) -> str:
    """Largest difference: 8-bit levels of the decoded image, or latent stds."""
    if what == "decode":
        return f"{float(((out.clamp(-1, 1) - ref.clamp(-1, 1)).abs().max()) * 127.5):.1f} levels"
    return f"{float((out - ref).abs().max() / ref.std()):.3f} stds"


def run_contexts(args, grid) -> list[str]:
    """Untiled, then one-pass shared statistics at every context of ``args.contexts``; one row each."""
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for what in ("encode", "decode"):
            base = child(args, d, f"{what}:untiled", 0)
            ref = torch.load(os.path.join(d, f"{what}-untiled.pt"))
            rows.append(f"| {what} | untiled | 1.00 | {base['seconds']:.1f} | 1.00x | reference | - | - |")
            for c in [int(v) for v in args.contexts.split(",")]:
                res = child(args, d, f"{what}:one-pass", c)
                out = torch.load(os.path.join(d, f"{what}-one-pass.pt"))
                close, tone = metrics(what, out, ref, grid)
                rows.append(f"| {what} | {c} ({c * 8} px) | {area_ratio(grid, c):.2f} | {res['seconds']:.1f} | "
                            f"{res['seconds'] / base['seconds']:.2f}x | {close} | {max_levels(what, out, ref)} | "
                            f"{tone} |")
    return rows


def run_all(args, grid, norms: dict[str, int]) -> list[str]:
    """Every job in a subprocess of its own; one markdown table row each."""
    rows, seconds = [], {}
    with tempfile.TemporaryDirectory() as d:
        for what, how in [(w, h) for w, h in JOBS if h in args.hows.split(",")]:
            res = child(args, d, f"{what}:{how}", args.context)
            seconds[what, how] = res["seconds"]
            out = torch.load(os.path.join(d, f"{what}-{how}.pt"))
            close, tone = ("reference", "-") if how == "untiled" else metrics(
                what, out, torch.load(os.path.join(d, f"{what}-untiled.pt")), grid)
            runs = {"untiled": 1, "sweeps": len(grid) * (norms[what] + 1)}.get(how, len(grid))
            rows.append(f"| {what} | {how} | {runs} | {res['seconds']:.1f} | "
                        f"{res['seconds'] / seconds[what, 'untiled']:.1f}x | {close} | {tone} | "
                        f"{res['peak_mb']:.0f} | {res['peak_mb'] - res['loaded_mb']:.0f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--context", type=int, default=8, help="latent pixels of context around each tile")
    p.add_argument("--contexts", help="comma-separated contexts to sweep (one-pass shared statistics only)")
    p.add_argument("--hows", default=",".join(HOWS), help=f"comma-separated subset of {','.join(HOWS)}")
    p.add_argument("--no-attention", action="store_true", help="drop the mid-block attention (shows what is left)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.job:
        return run_job(args)

    from tiledsr.diffusion.groupnorm import count_group_norms
    from tiledsr.diffusion.vae import _latent_grid

    # 1. The grid and the model's shape
    grid = _latent_grid(args.size // 8, args.size // 8, args.tile, args.overlap, 8)
    vae = build_vae(not args.no_attention)
    params = sum(p.numel() for p in vae.parameters()) / 1e6
    norms = {"encode": count_group_norms(vae.encoder), "decode": count_group_norms(vae.decoder)}
    del vae
    # 2. The jobs
    rows = run_contexts(args, grid) if args.contexts else run_all(args, grid, norms)
    # 3. The report
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# bench_vae: tiled vs untiled SD-size VAE ({params:.1f}M params, random weights, "
          f"{'no attention' if args.no_attention else 'with mid-block attention'})\n")
    print(f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"- machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}")
    print(f"- command: `{' '.join([os.path.relpath(sys.executable)] + sys.argv)}`")
    print(f"- image: astronaut {args.size}x{args.size}; tile {args.tile} px, overlap {args.overlap} px, "
          f"context {args.contexts or args.context} latent px: {len(grid)} tiles of {grid.tile_h * 8} px; "
          f"GroupNorms: encoder {norms['encode']}, decoder {norms['decode']}\n")
    if args.contexts:
        print("| job | context (latent px) | windows / image area | seconds | vs untiled | closeness to untiled | "
              "largest difference | worst tile tone |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        return
    print("| job | GroupNorm stats | tile passes | seconds | vs untiled | closeness to untiled | worst tile tone | "
          "peak RSS MB | above loaded MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
