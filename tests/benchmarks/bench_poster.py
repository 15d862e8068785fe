"""Poster-scale benchmarks: peak RSS and time of whole CLI runs, against plan's estimate.

    .venv/bin/python tests/benchmarks/bench_poster.py poster      # 2048 -> 16384 and 512 -> 4096, lanczos, fast-x4
    .venv/bin/python tests/benchmarks/bench_poster.py budget      # photo-x4 under 1, 2, 4 GB: RSS vs plan, time
    .venv/bin/python tests/benchmarks/bench_poster.py presets     # every offline preset: RSS vs plan's estimate
    .venv/bin/python tests/benchmarks/bench_poster.py resume      # time with a work directory vs without
    .venv/bin/python tests/benchmarks/bench_poster.py inram OLD   # streamed vs the in-RAM path of a checkout OLD

Each run is a fresh ``python -m tiledsr`` process; its peak RSS comes from ``os.wait4`` (the
kernel's ru_maxrss of that child), its time from the wall clock. Inputs are skimage's astronaut
resized with Lanczos. Prints one Markdown table row per run.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def photo(path: Path, side: int) -> Path:
    if not path.exists():
        from PIL import Image
        from skimage import data

        Image.fromarray(data.astronaut()).resize((side, side), Image.Resampling.LANCZOS).save(path)
    return path


def run(args, *, pythonpath: Path = ROOT, stdout=None) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, stdout) of ``python -m tiledsr ARGS``."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "tiledsr", *map(str, args)], env=env, cwd=pythonpath,
                         stdout=stdout or subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read().decode() if stdout is None else ""
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: tiledsr {' '.join(map(str, args))}\n{err}")
    return seconds, usage.ru_maxrss * 1024, out


def estimate(args) -> int:
    """plan's 'estimated peak memory' for the same arguments, in bytes."""
    _, _, out = run(["plan", *args])
    m = re.search(r"estimated peak memory ([\d.]+) (B|KB|MB|GB|TB)", out)
    return int(float(m[1]) * 1024 ** ("B", "KB", "MB", "GB", "TB").index(m[2]))


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def row(*cells) -> None:
    print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def upscale(src: Path, dst: Path, *opts) -> tuple[float, int, int]:
    """(seconds, peak RSS, plan's estimate) of one upscale to ``dst`` (removed afterwards)."""
    est = estimate([src, *opts])
    seconds, rss, _ = run(["upscale", src, "-o", dst, "--progress", "none", "--overwrite", *opts])
    dst.unlink()
    return seconds, rss, est


def poster(tmp: Path) -> None:
    row("preset", "input", "output", "time", "peak RSS", "plan's estimate", "measured / estimate")
    row(*["---"] * 7)
    for side in (512, 2048):
        src = photo(tmp / f"in{side}.png", side)
        for preset in ("lanczos", "fast-x4"):
            s, rss, est = upscale(src, tmp / "poster.tif", "--preset", preset, "--scale", "8")
            row(preset, f"{side}x{side}", f"{8 * side}x{8 * side} TIFF", f"{s:.1f} s", gb(rss), gb(est),
                f"{rss / est:.2f}")


def budget(tmp: Path) -> None:
    src = photo(tmp / "in256.png", 256)
    row("budget", "tile chosen", "time", "peak RSS", "plan's estimate", "measured / estimate")
    row(*["---"] * 6)
    for size in ("1GB", "2GB", "4GB"):
        _, _, out = run(["plan", src, "--memory-budget", size])
        tile = re.search(r"tile (\d+), overlap", out)
        s, rss, est = upscale(src, tmp / "o.png", "--memory-budget", size)
        row(size, tile[1] if tile else "-", f"{s:.1f} s", gb(rss), gb(est), f"{rss / est:.2f}")


def presets(tmp: Path) -> None:
    src = photo(tmp / "in256.png", 256)
    row("preset", "input", "time", "peak RSS", "plan's estimate", "measured / estimate")
    row(*["---"] * 6)
    for preset in ("lanczos", "fast-x4", "anime-x4", "photo-x4"):
        s, rss, est = upscale(src, tmp / "o.png", "--preset", preset)
        row(preset, "256x256", f"{s:.1f} s", gb(rss), gb(est), f"{rss / est:.2f}")


def resume(tmp: Path) -> None:
    row("preset", "output", "with a work directory", "without (-o -)", "ratio")
    row(*["---"] * 5)
    for preset, side in (("lanczos", 1024), ("fast-x4", 512)):
        src = photo(tmp / f"in{side}.png", side)
        times = {}
        for kind in ("work", "stdout", "work", "stdout"):  # interleaved, best of two
            if kind == "work":
                s, _, _ = upscale(src, tmp / "o.png", "--preset", preset, "--scale", "8")
            else:
                with open(tmp / "o.png", "wb") as fh:
                    s, _, _ = run(["upscale", src, "-o", "-", "--format", "png", "--progress", "none",
                                   "--preset", preset, "--scale", "8"], stdout=fh)
            times[kind] = min(times.get(kind, s), s)
        row(preset, f"{8 * side}x{8 * side} PNG", f"{times['work']:.1f} s", f"{times['stdout']:.1f} s",
            f"{times['work'] / times['stdout']:.3f}")


def inram(tmp: Path, old: Path) -> None:
    row("preset", "input", "streamed (this tree)", "in RAM (" + old.name + ")", "time ratio", "peak RSS")
    row(*["---"] * 6)
    for preset, side, opts in (("photo-x4", 256, ()), ("lanczos", 1024, ("--scale", "8"))):
        src = photo(tmp / f"in{side}.png", side)
        new, old_t, rss = [], [], []
        for tree in (ROOT, old, ROOT, old):
            args = ["upscale", src, "-o", tmp / "o.tif", "--overwrite", "--progress", "none", "--preset", preset,
                    *opts]
            s, r, _ = run(args, pythonpath=tree)
            (new if tree == ROOT else old_t).append(s)
            rss.append(r)
            (tmp / "o.tif").unlink()
        row(preset, f"{side}x{side}", f"{min(new):.1f} s", f"{min(old_t):.1f} s", f"{min(new) / min(old_t):.3f}",
            f"{gb(max(rss[0], rss[2]))} vs {gb(max(rss[1], rss[3]))}")


def main() -> None:
    what = sys.argv[1] if len(sys.argv) > 1 else "poster"
    with tempfile.TemporaryDirectory(prefix="tiledsr-bench-") as d:
        tmp = Path(d)
        if what == "inram":
            inram(tmp, Path(sys.argv[2]).resolve())
        else:
            {"poster": poster, "budget": budget, "presets": presets, "resume": resume}[what](tmp)


if __name__ == "__main__":
    main()
