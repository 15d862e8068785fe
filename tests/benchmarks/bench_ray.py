"""The Ray engine against the local one: wall time of whole CLI runs, interleaved, and whether
the files are the same bytes.

    .venv/bin/python tests/benchmarks/bench_ray.py [REPEATS]

Cases: a batch of 6 photos of 128 px through ``fast-x4`` (one Ray task per image), and one
256 px photo through ``fast-x4 --tile 256`` (its 16 tiles spread over Ray actors). Each run is a
fresh ``python -m tiledsr`` process; ``--engine ray`` starts (and shuts down) a local Ray with
every CPU of this machine, which is part of what it costs. Prints one Markdown row per case:
median seconds local, median seconds Ray, their ratio, and the byte comparison.
"""
from __future__ import annotations

import filecmp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def photos(folder: Path, n: int, side: int) -> Path:
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    base = Image.fromarray(data.astronaut())
    for k in range(n):
        box = (k * 40, k * 30, k * 40 + 320, k * 30 + 320)
        base.crop(box).resize((side, side), Image.Resampling.LANCZOS).save(folder / f"p{k}.png")
    return folder


def timed(args) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tiledsr", *map(str, args), "--progress", "none", "--overwrite"],
                       env=env, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: tiledsr {' '.join(map(str, args))}\n{r.stderr}")
    return time.perf_counter() - t0


def same(a: Path, b: Path) -> bool:
    files = sorted(p.name for p in a.iterdir())
    return files == sorted(p.name for p in b.iterdir()) and all(filecmp.cmp(a / f, b / f, shallow=False)
                                                                 for f in files)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        batch = photos(tmp / "batch", 6, 128)
        one = photos(tmp / "one", 1, 256) / "p0.png"
        cases = {
            "batch of 6 x 128 px, fast-x4": (["upscale", batch, "--preset", "fast-x4", "--out-dir"], "dir"),
            "one 256 px, fast-x4 --tile 256 (16 tiles)": (["upscale", one, "--preset", "fast-x4", "--tile", "256",
                                                           "--out-dir"], "dir"),
        }
        print("| case | local (s) | ray (s) | ray / local | same bytes |")
        print("|---|---|---|---|---|")
        for name, (args, _) in cases.items():
            times = {"local": [], "ray": []}
            outs = {k: tmp / f"out-{k}-{abs(hash(name))}" for k in times}
            for _ in range(repeats):  # interleaved: local, ray, local, ray, ...
                for engine in ("local", "ray"):
                    times[engine].append(timed([*args, outs[engine], "--engine", engine]))
            local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
            print(f"| {name} | {local:.1f} | {ray:.1f} | {ray / local:.2f} | {same(outs['local'], outs['ray'])} |")


if __name__ == "__main__":
    main()
