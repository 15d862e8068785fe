"""Benchmark the low-VRAM switches (tiledsr.diffusion.lowvram): memory and time, CPU or CUDA.

Run:  .venv/bin/python tests/benchmarks/bench_lowvram.py [--quick]

Random-weight models (cost does not depend on the weights). Every job runs in its own
subprocess with glibc's MALLOC_MMAP_THRESHOLD_=65536 (freed blocks go back to the OS), and
reports the rise of its peak memory over what it held just before the measured call: on the
CPU the process's peak RSS (VmHWM, reset through /proc/self/clear_refs), on CUDA
torch.cuda.max_memory_allocated. Prints markdown tables:
  1. one attention call: the default SDPA processor, the math kernel (what SDPA falls back to),
     diffusers' SlicedAttnProcessor (its set_attention_slice) and ours (ChunkedAttnProcessor),
     for an SD 1.5 top-level self-attention (8 heads of 40, batch 2 for guidance) and the SD
     VAE's mid-block attention (1 head of 512) over one 640 px window;
  2. a UNet forward (tiny and mid-size) at two latent sizes under attention_slicing off/auto/max,
     and diffusers' set_attention_slice("max") for comparison;
  3. weights and largest layer (what sequential offload moves at once) of the published
     architectures, built on the meta device, and memory_effect's resident weights for SD 1.5;
  4. on CUDA only: a UNet forward and a tiled VAE decode under each offload mode, with the
     largest difference from the default path.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for tiny_models

MIB = 1 << 20


def _rss(field: str) -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(field))


def measure(fn) -> tuple[float, float]:
    """(peak rise in MiB, seconds) of ``fn()``."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        base = _rss("VmRSS:")
    t = time.perf_counter()
    with torch.no_grad():
        fn()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() if cuda else _rss("VmHWM:")
    return (peak - base) / MIB, seconds


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --- jobs (each in its own process) -------------------------------------------------------------


def job_attention(kind: str, processor: str, tokens: int) -> dict:
    import torch
    from diffusers.models import attention_processor as ap

    from tiledsr.diffusion.lowvram import ChunkedAttnProcessor, VAE_QUERY_CHUNK

    torch.manual_seed(0)
    if kind == "unet":  # SD 1.5's first transformer: 320 channels, 8 heads of 40, batch 2 (guidance)
        attn = ap.Attention(query_dim=320, heads=8, dim_head=40)
        x = torch.randn(2, tokens, 320)
    else:  # the SD VAE's mid-block attention over a square window of ``tokens`` latent pixels
        attn = ap.Attention(query_dim=512, heads=1, dim_head=512, norm_num_groups=32, residual_connection=True,
                            eps=1e-6, bias=True, upcast_softmax=True, _from_deprecated_attn_block=True)
        side = int(tokens ** 0.5)
        x = torch.randn(1, 512, side, side)
    attn = attn.to(device()).eval()
    x = x.to(device())
    attn.set_processor({
        "sdpa": ap.AttnProcessor2_0(), "math": ap.AttnProcessor(),
        "diffusers-max": ap.SlicedAttnProcessor(1), "diffusers-auto": ap.SlicedAttnProcessor(4),
        "ours-max": ChunkedAttnProcessor(heads=1), "ours-auto": ChunkedAttnProcessor(heads="auto"),
        "ours-queries": ChunkedAttnProcessor(queries=VAE_QUERY_CHUNK)}[processor])
    mib, s = measure(lambda: attn(x))
    return {"mib": mib, "s": s}


def _unet(size: str):
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=8), 32
    # mid-size: SD 1.5's layout at half the width, one layer per block (8 heads everywhere)
    return UNet2DConditionModel(block_out_channels=(160, 320, 640, 640), layers_per_block=1, cross_attention_dim=768,
                                attention_head_dim=8), 768


def job_unet(size: str, latent: int, slicing: str) -> dict:
    import torch

    from tiledsr.diffusion.lowvram import LowVram, apply

    torch.manual_seed(0)
    unet, ctx = _unet(size)
    unet = unet.to(device()).eval()
    if slicing == "diffusers-max":
        unet.set_attention_slice("max")
    else:
        apply({"unet": unet}, LowVram(attention_slicing=slicing), device())
    x = torch.randn(2, 4, latent, latent, device=device())
    text = torch.randn(2, 77, ctx, device=device())
    mib, s = measure(lambda: unet(x, 500, encoder_hidden_states=text))
    return {"mib": mib, "s": s, "params_m": sum(p.numel() for p in unet.parameters()) / 1e6}


def job_offload(offload: str) -> dict:
    """Weights + activations on the device for a UNet forward and a tiled decode (meant for CUDA; on the
    CPU it only checks that the job runs)."""
    import torch
    from tiny_models import autoencoder

    from tiledsr.diffusion.lowvram import LowVram, apply
    from tiledsr.diffusion.vae import tiled_decode

    dev = device()
    half = torch.float16 if dev == "cuda" else torch.float32
    torch.manual_seed(0)
    unet, ctx = _unet("mid")
    big = dev == "cuda"  # else a smoke test of this job: the tiny VAE, small sizes
    vae = autoencoder((128, 256, 512, 512), layers_per_block=2) if big else autoencoder()
    mods = {"unet": unet.to(half).eval(), "vae": vae}
    side = 64 if big else 16  # latent pixels
    x = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(1)).to(half)
    text = torch.randn(2, 77, ctx, generator=torch.Generator().manual_seed(2)).to(half)
    z = torch.randn(1, 4, side + side // 2, side + side // 2, generator=torch.Generator().manual_seed(3))
    if offload == "none":
        for m in mods.values():
            m.to(dev)
    off = apply(mods, LowVram(offload=offload), dev)
    out = {}

    def denoise():
        with off.phase("denoise"):
            unet = mods["unet"]
            out["unet"] = unet(x.to(dev), 500, encoder_hidden_states=text.to(dev)).sample.float().cpu()

    def decode():
        with off.phase("vae"):
            out["vae"] = tiled_decode(mods["vae"], z, tile=6 * side, overlap=side, one_pass=False)

    held = torch.cuda.memory_allocated() / MIB if dev == "cuda" else 0.0
    (u_mib, u_s), (v_mib, v_s) = measure(denoise), measure(decode)
    torch.save(out, f"/tmp/bench_lowvram_{offload}.pt")
    return {"held_mib": held, "unet_mib": u_mib, "unet_s": u_s, "vae_mib": v_mib, "vae_s": v_s}


def weights_table() -> list[str]:
    import torch
    from diffusers import UNet2DConditionModel
    from tiny_models import autoencoder, latent_upscaler_unet
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiledsr.diffusion.lowvram import LowVram, largest_layer_bytes, memory_effect, weight_bytes

    with torch.device("meta"):
        models = {
            "SD 1.5 UNet (fp16)": ("unet", UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280),
                                                                layers_per_block=2, cross_attention_dim=768,
                                                                attention_head_dim=8).half()),
            "x2 upscaler UNet (fp16)": ("unet", latent_upscaler_unet((384, 384, 768, 768), 4, 64, 768).half()),
            "SD VAE (fp32)": ("vae", autoencoder((128, 256, 512, 512), layers_per_block=2)),
            "CLIP ViT-L text encoder (fp16)": ("text_encoder", CLIPTextModel(CLIPTextConfig(
                hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                max_position_embeddings=77, vocab_size=49408, projection_dim=768)).half()),
        }
    rows = ["| model | weights | largest layer | share |", "|---|---|---|---|"]
    sd15 = {}
    for label, (name, m) in models.items():
        w, layer = weight_bytes(m), largest_layer_bytes(m)
        rows.append(f"| {label} | {w / MIB:.1f} MiB | {layer / MIB:.1f} MiB | {100 * layer / w:.2f}% |")
        if "x2" not in label:
            sd15[name] = w
    rows += ["", "| SD 1.5 offload | weights on the device (memory_effect) |", "|---|---|"]
    for offload in ("none", "model", "sequential"):
        eff = memory_effect(LowVram(offload=offload), {"tile": 0, "canvas": 0}, sd15)
        rows.append(f"| {offload} | {eff['weights'] / MIB:.1f} MiB |")
    return rows


# --- driver ---------------------------------------------------------------------------------------


def run_job(name: str, *args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--job", json.dumps([name, *args])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes only")
    args = parser.parse_args()
    if args.job:
        name, *rest = json.loads(args.job)
        print(json.dumps(globals()[f"job_{name}"](*rest)))
        return
    import torch

    print(f"device {device()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| attention | tokens | processor | peak rise | seconds |\n|---|---|---|---|---|")
    for kind, tokens, procs in [("unet", 4096, ("sdpa", "math", "diffusers-max", "diffusers-auto", "ours-max",
                                                "ours-auto")),
                                ("vae", 6400, ("sdpa", "math", "ours-queries"))]:
        for p in procs:
            r = run_job("attention", kind, p, tokens)
            print(f"| {kind} | {tokens} | {p} | {r['mib']:.1f} MiB | {r['s']:.3f} |")
    print("\n| UNet | latent | attention_slicing | peak rise | seconds |\n|---|---|---|---|---|")
    sizes = [("tiny", 64), ("mid", 64)] if args.quick else [("tiny", 64), ("tiny", 128), ("mid", 64), ("mid", 96)]
    for size, latent in sizes:
        for slicing in ("off", "auto", "max", "diffusers-max"):
            r = run_job("unet", size, latent, slicing)
            print(f"| {size} ({r['params_m']:.0f}M) | {latent} | {slicing} | {r['mib']:.1f} MiB | {r['s']:.2f} |")
    print()
    print("\n".join(weights_table()))
    if torch.cuda.is_available():
        print("\npeak = held before + rise\n")
        print("| offload | held before | UNet forward rise | s | tiled decode rise | s | max diff |")
        print("|---|---|---|---|---|---|---|")
        for offload in ("none", "model", "sequential"):
            r = run_job("offload", offload)
            ref, out = (torch.load(f"/tmp/bench_lowvram_{o}.pt") for o in ("none", offload))
            diff = max(float((out[k] - ref[k]).abs().max()) for k in ref)
            print(f"| {offload} | {r['held_mib']:.0f} MiB | {r['unet_mib']:.0f} MiB | {r['unet_s']:.2f} | "
                  f"{r['vae_mib']:.0f} MiB | {r['vae_s']:.2f} | {diff:.2g} |")


if __name__ == "__main__":
    main()
