"""SR backends on the CPU, side by side on the same Real-ESRGAN weights, and the default CLI path
against ncnn run directly.

    .venv/bin/python tests/benchmarks/bench_backends.py [--models x4plus animevideov3] [--sizes 256 512]
        [--repeats 3] [--threads 2] [--skip-cli] [--cli-size 384] [--skip-backends]

Part 1: for every model and input size, every backend in its own fresh process, interleaved
round by round: ``ncnn-direct`` (ncnn's own Net on the whole image, as realesrgan-ncnn-vulkan
runs it on the CPU), and tiledsr's runners ``ncnn``, ``torch-nchw`` (the torch port in the
default memory format, the torch backend before channels_last), ``torch`` (channels_last) and
``openvino``. Each process loads the model, runs a 64 px tile once (so loading, conversion and
compilation are not timed), then runs the whole image once: that time is reported (median over
the rounds), with the process's peak RSS (``os.wait4``'s ru_maxrss), the working set per output
pixel ((peak RSS - RSS after the warm-up) / output pixels: what ``plan`` counts per backend), and
the largest difference from ncnn-direct's output (in 8-bit levels, values clipped to [0, 1]).

Part 2: ``tiledsr upscale --preset photo-x4`` (the default path: backend auto, the planner's tile)
against ncnn-direct's whole-image run, on skimage's astronaut resized to ``--cli-size``, each
in a fresh process, interleaved: wall time of the whole command and of the reference's process
(both including start-up and model loading), peak RSS, and the PSNR of our output against ncnn's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ["ncnn-direct", "ncnn", "torch-nchw", "torch", "openvino"]


def photo(size: int) -> np.ndarray:
    """skimage's astronaut, area-resized to size x size: float32 (H, W, 3) in [0, 1]."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _ncnn_direct(model, threads: int):
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    param, binf = model.ncnn_files
    net.load_param(str(param))
    net.load_model(str(binf))

    def run(nchw: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(nchw[0])  # ncnn.Mat borrows it: keep it alive
        ex = net.create_extractor()
        ex.input(net.input_names()[0], ncnn.Mat(chw))
        _, out = ex.extract(net.output_names()[0])
        return np.array(out)[None]

    return run


def worker(backend: str, name: str, size: int, threads: int, out: str) -> None:
    """One measurement in this process: prints a JSON line {seconds, rss_loaded_kib}."""
    import torch

    sys.path.insert(0, str(ROOT))
    from tiledsr.models import load_sr_model, make_runner
    from tiledsr.models.runner import TorchRunner

    torch.set_num_threads(threads)
    model = load_sr_model(name)
    if backend == "ncnn-direct":
        run = _ncnn_direct(model, threads)
    elif backend == "torch-nchw":
        TorchRunner.memory_format = property(lambda self: torch.contiguous_format)  # the format before
        run = make_runner(model, backend="torch", threads=threads)
    else:
        run = make_runner(model, backend=backend, threads=threads)
    x = np.ascontiguousarray(photo(size).transpose(2, 0, 1)[None])
    run(np.ascontiguousarray(x[:, :, :64, :64]))  # load, convert, compile: not timed
    loaded = _rss_kib()
    t0 = time.perf_counter()
    y = run(x)
    seconds = time.perf_counter() - t0
    np.save(out, np.clip(y[0].transpose(1, 2, 0), 0, 1).astype(np.float32))
    print(json.dumps({"seconds": seconds, "rss_loaded_kib": loaded}))


def _spawn(args: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in KiB, stdout) of a child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out, err = b"", b""
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    out, err = p.stdout.read(), p.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {err.decode()[-2000:]}")
    return wall, usage.ru_maxrss, out.decode()


def backends(models: list[str], sizes: list[int], repeats: int, threads: int, tmp: Path) -> None:
    print(f"## backends, whole image, {threads} threads, median of {repeats} interleaved rounds")
    print("| model | input -> output | backend | time | vs ncnn-direct | peak RSS | working set per output px "
          "| max diff vs ncnn-direct |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        for size in sizes:
            got: dict[str, list] = {b: [] for b in BACKENDS}
            for _ in range(repeats):
                for b in BACKENDS:
                    out = tmp / f"{b}.npy"
                    _, rss, text = _spawn([sys.executable, __file__, "--worker", b, name, str(size), str(threads),
                                           str(out)])
                    line = json.loads(text.strip().splitlines()[-1])
                    got[b].append((line["seconds"], rss, line["rss_loaded_kib"]))
            ref = np.load(tmp / "ncnn-direct.npy")
            base = statistics.median(s for s, _, _ in got["ncnn-direct"])
            px = (size * 4) ** 2
            for b in BACKENDS:
                secs = statistics.median(s for s, _, _ in got[b])
                peak = statistics.median(r for _, r, _ in got[b])
                work = statistics.median((r - loaded) * 1024 / px for _, r, loaded in got[b])
                diff = np.abs(np.load(tmp / f"{b}.npy") - ref).max() * 255
                print(f"| {name} | {size} -> {size * 4} | {b} | {secs:.2f} s | {secs / base:.2f} | {peak / 1024:.0f} MB "
                      f"| {work:.0f} B | {diff:.2f} |", flush=True)


def cli(size: int, repeats: int, threads: int, tmp: Path) -> None:
    from PIL import Image

    src = tmp / "photo.png"
    Image.fromarray(np.rint(photo(size) * 255).astype(np.uint8)).save(src)
    ours_cmd = [sys.executable, "-m", "tiledsr", "upscale", str(src), "-o", str(tmp / "ours.png"), "--preset",
                "photo-x4", "--overwrite", "--progress", "none"]
    ref_cmd = [sys.executable, __file__, "--reference", str(src), str(threads), str(tmp / "ref.npy")]
    times = {"ours": [], "ref": []}
    for _ in range(repeats):
        for kind, cmd in (("ref", ref_cmd), ("ours", ours_cmd)):
            wall, rss, _ = _spawn(cmd)
            times[kind].append((wall, rss))
    ours = np.asarray(Image.open(tmp / "ours.png"), dtype=np.float32) / 255
    ref = np.rint(np.load(tmp / "ref.npy") * 255) / 255
    mse = float(np.mean((ours - ref) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(1 / mse)
    o, r = (statistics.median(w for w, _ in times[k]) for k in ("ours", "ref"))
    orss, rrss = (statistics.median(m for _, m in times[k]) / 1024 for k in ("ours", "ref"))
    plan = subprocess.run([sys.executable, "-m", "tiledsr", "plan", str(src), "--preset", "photo-x4"], cwd=ROOT,
                          capture_output=True, text=True).stdout
    stage = next((ln.strip() for ln in plan.splitlines() if ln.startswith("stage 1")), "")
    tiles = next((ln.strip() for ln in plan.splitlines() if ln.strip().startswith("tiles:")), "")
    print(f"## photo-x4 CLI vs ncnn-direct, {size}x{size} -> {4 * size}x{4 * size}, whole processes, "
          f"median of {repeats} interleaved")
    print(f"plan: {stage}; {tiles}")
    print(f"tiledsr upscale --preset photo-x4: {o:.1f} s, peak RSS {orss:.0f} MB")
    print(f"ncnn direct (whole image, same weights): {r:.1f} s, peak RSS {rrss:.0f} MB")
    print(f"time ratio {o / r:.2f}, PSNR of ours against ncnn's {psnr:.1f} dB")


def reference(src: str, threads: int, out: str) -> None:
    """ncnn-direct on a whole image file (the CLI comparison's reference process)."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from tiledsr.models import load_sr_model

    img = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255
    run = _ncnn_direct(load_sr_model("x4plus"), threads)
    y = run(np.ascontiguousarray(img.transpose(2, 0, 1)[None]))
    np.save(out, np.clip(y[0].transpose(1, 2, 0), 0, 1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        b, name, size, threads, out = sys.argv[2:7]
        return worker(b, name, int(size), int(threads), out)
    if len(sys.argv) > 1 and sys.argv[1] == "--reference":
        return reference(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["x4plus", "animevideov3"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cli-size", type=int, default=384)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--skip-backends", action="store_true")
    args = ap.parse_args()
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_backends:
            backends(args.models, args.sizes, args.repeats, args.threads, Path(tmp))
        if not args.skip_cli:
            cli(args.cli_size, args.repeats, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
