"""Time and memory of one img2img tile: SD 1.5, SD 1.5 + ControlNet, SDXL, SDXL + ControlNet.

Run:  .venv/bin/python tests/benchmarks/bench_diffusion_models.py [--device cpu|cuda] [--tile 64]
          [--steps 2] [--guidance 7.5] [--threads 1] [--only sd,sd+cn,sdxl,sdxl+cn] [--out bench.md]

Real-size architectures with random weights (cost does not depend on the weights): the SD 1.5
UNet (859.5M parameters), SDXL base 1.0's published UNet config (2.57B), and ControlNets made
from each UNet with diffusers' ``ControlNetModel.from_unet`` (the layout of the SD 1.5 tile
ControlNet and of full SDXL tile ControlNets such as xinsir's). One tile of ``--tile`` latent
pixels (64 = 512 px), denoised by ``tiledsr.diffusion.img2img.img2img_latents`` with random
prompt embeddings of the real shapes (77 x 768; SDXL 77 x 2048 + pooled 1280 + time ids),
classifier-free guidance (UNet batch 2), DDIM, strength 1.

Each case is a fresh subprocess, so one case's allocations cannot hide another's. Time: of the
LAST step (the first pays one-off kernel selection), wall and (on cpu) process CPU time, which
other jobs on a shared machine inflate far less. Memory on cpu: the weights (parameter bytes) and
the working set (peak resident size over the run, the high-water mark reset through
/proc/self/clear_refs once the models are built, minus the resident size just before it); on cuda
torch's max_memory_allocated minus what was allocated before. Prints markdown; ratios are against
plain SD at the same tile.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its siblings

from bench_diffusion import _status_kib, gib  # noqa: E402

CASES = ("sd", "sd+cn", "sdxl", "sdxl+cn")


def build(case: str, device: str):
    """(unet, controlnet or None) with real-size layouts and random weights, eval mode, on ``device``."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from tiny_models import sdxl_unet

    torch.manual_seed(0)
    if case.startswith("sdxl"):
        unet = sdxl_unet((320, 640, 1280), 2, (1, 2, 10), (5, 10, 20), 2048, 256, 1280,
                         ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                         ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    else:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768).eval()  # SD 1.5's layout
    net = ControlNetModel.from_unet(unet).eval() if case.endswith("+cn") else None
    return unet.to(device), (net.to(device) if net is not None else None)


def child(cfg: dict) -> dict:
    import torch
    from diffusers import DDIMScheduler

    from tiledsr.diffusion.conditioning import TileControl, TimeIds
    from tiledsr.diffusion.img2img import img2img_latents
    from tiledsr.diffusion.text import PromptEmbeds

    dev, case, tile = cfg["device"], cfg["case"], cfg["tile"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    unet, net = build(case, dev)
    weights = sum(p.numel() * p.element_size() for m in (unet, net) if m is not None for p in m.parameters())
    g = torch.Generator().manual_seed(0)
    xl = case.startswith("sdxl")
    width = 2048 if xl else 768
    embeds = PromptEmbeds(torch.randn(1, 77, width, generator=g), torch.randn(1, 77, width, generator=g),
                          *((torch.randn(1, 1280, generator=g), torch.randn(1, 1280, generator=g)) if xl else ()))
    init = torch.randn(1, 4, tile, tile, generator=g)
    control = TileControl(net, torch.rand(1, 3, tile * 8, tile * 8, generator=g), factor=8) if net else None
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
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
    out = img2img_latents(unet, scheduler, init.to(dev), embeds, steps=cfg["steps"], strength=1.0,
                          guidance=cfg["guidance"], seed=0, tile=tile, overlap=0, progress=progress,
                          time_ids=TimeIds(8) if xl else None, control=control)
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else _status_kib("VmHWM") * 1024
    before = stamps[-2] if len(stamps) > 1 else t0
    return {"case": case, "weights": weights, "step_s": stamps[-1][0] - before[0],
            "step_cpu_s": stamps[-1][1] - before[1], "working": peak - base, "finite": bool(out.isfinite().all())}


def run_child(cfg: dict) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                         env=env, check=False)
    if res.returncode != 0:
        raise SystemExit(f"child failed for {cfg}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tile", type=int, default=64, help="tile side in latent pixels (64 = 512 px)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases among " + ", ".join(CASES))
    ap.add_argument("--out", help="also write the markdown here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    cases = [c for c in args.only.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; choose among {', '.join(CASES)}")
    rows = []
    for case in cases:
        cfg = {"device": args.device, "case": case, "tile": args.tile, "steps": args.steps,
               "guidance": args.guidance, "threads": args.threads}
        rows.append(run_child(cfg))
        print(f"done {case}: {rows[-1]}", file=sys.stderr)
    import torch

    key = "step_cpu_s" if args.device == "cpu" else "step_s"
    ref = next((r for r in rows if r["case"] == "sd"), None)
    lines = [f"{time.strftime('%Y-%m-%d')}, {_cpu_name()}, torch "
             f"{torch.__version__}, device {args.device}, {args.threads or torch.get_num_threads()} thread(s); "
             f"one {args.tile}x{args.tile} latent tile ({8 * args.tile} px), guidance {args.guidance:g}, "
             f"{args.steps} steps; `{' '.join(['tests/benchmarks/bench_diffusion_models.py'] + sys.argv[1:])}`",
             "", "| case | weights | last step, wall | last step, CPU | vs SD | working memory | vs SD |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        vs_t = f"{r[key] / ref[key]:.2f}x" if ref else "-"
        vs_m = f"{r['working'] / ref['working']:.2f}x" if ref else "-"
        cpu = f"{r['step_cpu_s']:.1f} s" if args.device == "cpu" else "-"
        lines.append(f"| {r['case']} | {gib(r['weights'])} | {r['step_s']:.1f} s | {cpu} | {vs_t} | "
                     f"{gib(r['working'])} | {vs_m} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
