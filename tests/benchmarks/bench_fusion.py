"""Benchmark overlapped vs shifted fusion against an untiled run, on one latent canvas, CPU.

Run:  .venv/bin/python tests/benchmarks/bench_fusion.py [--unet tiny|mid] [--canvas 64] [--tile 32]
          [--overlap 8] [--steps 20] [--strength 0.5] [--repeats 3] [--threads 1] [--seed 0]

img2img (``tiledsr.diffusion.img2img.img2img_latents``, DDIM, guidance 1) of smooth latents
(bicubic upsampling of a 4x4 random grid) with a random-weight SD-style UNet built in memory:
``tiny`` is the test suite's (blocks 32, 64; size multiple 2), ``mid`` a 3-level one (blocks 64,
128, 256, 2 layers each; multiple 4). Runs:

* untiled: one tile covering the canvas (the diffusers-equal path);
* overlap: ``--tile`` tiles overlapping by ``--overlap``, fused every step (the default);
* shifted: ``--tile`` tiles, no overlap, the grid moved every step by the seed's offsets;
* fixed, no overlap: ``--tile`` tiles abutting on a grid that never moves (the seams shifted
  fusion is meant to remove; a reference, not an option anyone should run).

Repeats are interleaved (untiled, overlap, shifted, fixed, untiled, ...) so a change in the
machine's load hits every run alike; the median CPU time of the whole denoising run is reported
(process CPU time: other jobs on a shared machine inflate it far less than wall time) with its
ratio to the untiled run's, and the median wall time. Every repeat must give the same latents.

Seams, scored with :class:`tiledsr.seams.SeamMeter` at two sets of lines placed by
:func:`tiledsr.seams.seam_lines`: the overlap grid's tile edges (@ov), and the lines of the
shifted base grid (@base: offset 0, which is also the fixed run's grid, where its seams are).
Two images are scored: the decoded pixels (the latents decoded whole by a random-weight tiny VAE,
8x), and the latent tiling error (latents - the untiled run's latents, channels 0-2, / 8 + 0.5, at
latent resolution), in which the noise both runs share cancels, so a step that the tiling made
stands out. Units: multiples of the local texture step (see :mod:`tiledsr.seams`): 0 means no
seam; shown as "worst / median (count)".

RANDOM WEIGHTS MAKE THE SEAM MEASURE ONLY A ROUGH INDICATION. A random UNet does not denoise, so
the decoded pixels are noise-like texture that hides steps (their scores come out near 0 for
every run, the fixed grid's included; the decoded error image, tried too, scored 0 everywhere,
as the random VAE spreads a latent step over 8 px), and the latent error shows only how this
model's tile context changes its output, not how a seam would look with trained weights. Timing
does not depend on the weights.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tiny_models


def build_unet(kind: str):
    """A seeded random-weight SD-style UNet2DConditionModel (4 channels, cross-attention width 32), eval mode."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if kind == "tiny":
        return UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                    layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                    attention_head_dim=8, norm_num_groups=32).eval()
    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(64, 128, 256),
                                layers_per_block=2,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32).eval()


def seam_summary(pixels, grid) -> str:
    """'worst / median (count)' seam scores of ``pixels`` (H, W, 3) float32 in [0, 1] at ``grid``'s lines
    (a latent grid, scaled to the pixels)."""
    from tiledsr.seams import SeamMeter, SeamReport, seam_lines

    lines = seam_lines(grid, *pixels.shape[:2])
    if not lines:
        return "no lines"
    meter = SeamMeter(lines, pixels.shape)
    meter.feed(pixels)
    rep = SeamReport("bench", 0, meter.result())
    return "n/a" if rep.worst is None else f"{rep.worst:.2f} / {rep.median:.2f} ({rep.count})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--unet", default="mid", choices=["tiny", "mid"])
    ap.add_argument("--canvas", type=int, default=64, help="canvas side, latent pixels (x8 for the image)")
    ap.add_argument("--tile", type=int, default=32, help="tile side, latent pixels")
    ap.add_argument("--overlap", type=int, default=8, help="overlap of the overlap run, latent pixels")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--strength", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDIMScheduler

    from tiledsr.diffusion.img2img import img2img_latents
    from tiledsr.diffusion.loop import latent_grid, shifted_grid, shifted_redundancy, unet_multiple
    from tiledsr.diffusion.text import PromptEmbeds
    from tiny_models import autoencoder

    if args.threads:
        torch.set_num_threads(args.threads)
    # 1. Models, conditioning and the canvas
    unet, vae = build_unet(args.unet), autoencoder()
    m = unet_multiple(unet)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    embeds = PromptEmbeds(torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1)))
    n, t, o = args.canvas, args.tile, args.overlap
    init = F.interpolate(torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(args.seed)), size=(n, n),
                         mode="bicubic", align_corners=True)
    runs = {  # name: img2img keyword arguments
        "untiled": dict(tile=n, overlap=0),
        "overlap": dict(tile=t, overlap=o),
        "shifted": dict(tile=t, overlap=0, fusion="shifted"),
        "fixed, no overlap": dict(tile=t, overlap=0),
    }

    # 2. Interleaved repeats
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
    outs: dict[str, torch.Tensor] = {}
    load0 = os.getloadavg()
    for _ in range(args.repeats):
        for name, kw in runs.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = img2img_latents(unet, scheduler, init, embeds, steps=args.steps, strength=args.strength,
                                  guidance=1.0, seed=args.seed, **kw)
            times[name].append((time.process_time() - c0, time.perf_counter() - w0))
            if not torch.equal(outs.setdefault(name, out), out):
                raise SystemExit(f"{name}: a repeat gave other latents (not deterministic)")
    load1 = os.getloadavg()

    # 3. Decode; score the seams of the pixels and of the latent tiling error at both sets of lines
    with torch.no_grad():
        pixels = {k: ((vae.decode(v / vae.config.scaling_factor).sample[0].permute(1, 2, 0).numpy() + 1) / 2)
                  .clip(0, 1).astype(np.float32) for k, v in outs.items()}
    error = {k: ((v - outs["untiled"])[0, :3].permute(1, 2, 0).numpy() / 8 + 0.5).clip(0, 1).astype(np.float32)
             for k, v in outs.items()}
    over_grid, base_grid = latent_grid(n, n, t, o, m), shifted_grid(n, n, t, m)

    # 4. Report
    cpu0 = statistics.median(c for c, _ in times["untiled"])
    print(f"bench_fusion {time.strftime('%Y-%m-%d')}: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s), load "
          f"{load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"UNet {args.unet} ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M params, random weights, "
          f"multiple {m}); img2img strength {args.strength:g}, {args.steps} DDIM steps "
          f"({int(args.steps * args.strength)} run), guidance 1; canvas {n}x{n} latent = {8 * n}x{8 * n} px; "
          f"{args.repeats} interleaved repeats; seed {args.seed}")
    print(f"grids: overlap {len(over_grid.xs)}x{len(over_grid.ys)} tiles of {over_grid.tile_w} (overlap {o}), "
          f"redundancy {over_grid.redundancy:.2f}; shifted {base_grid.tile_w}-px tiles, {len(base_grid)} at offset 0, "
          f"mean redundancy over the offsets {shifted_redundancy(n, n, t, m):.2f}")
    print("seams: worst / median (count) at the overlap grid's lines (@ov) and the shifted base grid's (@base); "
          "random weights: a rough indication only")
    cols = ("pixels @ov", "pixels @base", "latent error @ov", "latent error @base")
    head = f"{'run':<18} {'CPU s':>7} {'vs untiled':>10} {'wall s':>7}  " + " ".join(f"{c:<18}" for c in cols)
    print(head)
    print("-" * len(head))
    for name in runs:
        cpu = statistics.median(c for c, _ in times[name])
        wall = statistics.median(w for _, w in times[name])
        seams = (seam_summary(pixels[name], over_grid), seam_summary(pixels[name], base_grid),
                 seam_summary(error[name], over_grid), seam_summary(error[name], base_grid))
        print(f"{name:<18} {cpu:>7.2f} {cpu / cpu0:>9.2f}x {wall:>7.2f}  " + " ".join(f"{v:<18}" for v in seams))
    diff = {k: float((outs[k] - outs["untiled"]).abs().mean()) for k in runs if k != "untiled"}
    print("mean |latents - untiled|: " + ", ".join(f"{k} {v:.4f}" for k, v in diff.items())
          + f" (latent std {float(outs['untiled'].std()):.3f})")


if __name__ == "__main__":
    main()
