"""Work directories and --resume: a run killed half-way continues bit-identically."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tiledsr.cli import main
from tiledsr.io import read_image, write_image

ROOT = Path(__file__).resolve().parents[1]


def picture(path: Path, h: int, w: int) -> Path:
    from skimage import data

    write_image(path, data.astronaut()[100:100 + h, 150:150 + w].astype(np.float32) / 255)
    return path


def env(**more) -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TILEDSR_CHECKPOINT_EVERY="0", PYTHONPATH=str(ROOT), **more)
    e.pop("TILEDSR_FAIL_OOM", None)
    return e


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiledsr", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=600, **kw)


def kill_when(args, ready) -> int:
    """Run the CLI with --progress json; SIGKILL it as soon as ``ready(event)``; returns its exit status."""
    proc = subprocess.Popen([sys.executable, "-m", "tiledsr", *map(str, args), "--progress", "json"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env())
    try:
        for line in proc.stderr:
            ev = json.loads(line)
            assert ev["event"] != "error", ev
            if ready(ev):
                proc.send_signal(signal.SIGKILL)
                break
        return proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()


def work_dirs(folder: Path) -> list[Path]:
    return sorted(folder.glob(".tiledsr-work-*"))


def test_sr_run_killed_half_way_resumes_bit_identically(tmp_path):
    src = picture(tmp_path / "in.png", 72, 88)
    args = ["upscale", src, "--preset", "fast-x4", "--tile", "64"]
    whole = tmp_path / "whole.png"
    assert cli(*args, "-o", whole).returncode == 0
    assert not work_dirs(tmp_path)  # a finished run removes its work
    out = tmp_path / "out.png"
    status = kill_when([*args, "-o", out], lambda ev: ev["event"] == "progress" and ev["tile"] >= ev["tiles"] // 2)
    assert status == -signal.SIGKILL
    assert not out.exists()  # a killed run leaves no output (its temporary file goes with the next run)
    kept = work_dirs(tmp_path)
    assert len(kept) == 1 and json.loads((kept[0] / "progress.json").read_text())["stages"]["0"]["rows"] > 0
    again = cli(*args, "-o", out)  # without --resume: refused, nothing touched
    assert again.returncode == 2 and "--resume" in again.stderr and len(again.stderr.splitlines()) == 1
    done = cli(*args, "-o", out, "--resume")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == whole.read_bytes()
    assert not work_dirs(tmp_path) and not list(tmp_path.glob(".tiledsr-*.tmp"))


def test_fused_diffusion_killed_half_way_resumes_bit_identically(tmp_path):
    pytest.importorskip("diffusers")
    from tiny_models import build_tiny_sd

    sd = build_tiny_sd(tmp_path / "sd")
    src = picture(tmp_path / "in.png", 96, 96)
    args = ["upscale", src, "--preset", "refine", "--set", f"img2img.model={sd}", "--set", "img2img.steps=12",
            "--set", "img2img.strength=1", "--tile", "48", "--overlap", "16", "--seed", "3"]
    whole = tmp_path / "whole.png"
    first = cli(*args, "-o", whole)
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out.png"
    status = kill_when([*args, "-o", out], lambda ev: ev["event"] == "progress" and ev.get("step", 0) >= 4)
    assert status == -signal.SIGKILL and not out.exists()
    (kept,) = work_dirs(tmp_path)
    assert (kept / "stage0.steps").exists()  # the per-step state of the fused img2img stage
    done = cli(*args, "-o", out, "--resume", "--progress", "json")
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line).get("step") for line in done.stderr.splitlines()]
    assert min(s for s in steps if s) >= 4  # it continued, it did not start again
    assert out.read_bytes() == whole.read_bytes()


def test_restart_discards_the_unfinished_work(tmp_path):
    src = picture(tmp_path / "in.png", 40, 40)
    out = tmp_path / "out.png"
    args = ["upscale", src, "-o", out, "--preset", "lanczos", "--progress", "none"]
    assert main(list(map(str, args))) == 0
    # The work directory a killed run of the same command would have left.
    from tiledsr.batch import plan_jobs
    from tiledsr.pipeline import Pipeline

    pipe = Pipeline.from_preset("lanczos")
    out.unlink()
    job = plan_jobs(pipe, [str(src)], output=str(out), out_dir=None, format=None, overwrite=False,
                    max_pixels=2**28, work={"resume": False, "restart": False, "work_dir": None}).jobs[0]
    job.work.folder.mkdir()
    (job.work.folder / "stage0.uint8").write_bytes(b"junk")
    assert main(list(map(str, args))) == 2
    assert main(list(map(str, [*args, "--restart"]))) == 0
    assert not job.work.folder.exists()
    assert read_image(out)[0].shape == (160, 160, 3)


def test_work_dir_option_and_resume_without_work(tmp_path):
    src = picture(tmp_path / "in.png", 40, 40)
    keep = tmp_path / "keep"
    keep.mkdir()
    out = tmp_path / "o.tif"
    assert main([*map(str, ["upscale", src, "-o", out, "--preset", "lanczos", "--work-dir", keep, "--resume",
                             "--progress", "none"])]) == 0
    assert out.exists() and not any(keep.iterdir())


def test_ctrl_c_keeps_the_work_and_says_how_to_resume(tmp_path):
    src = picture(tmp_path / "in.png", 72, 88)
    out = tmp_path / "out.png"
    proc = subprocess.Popen([sys.executable, "-m", "tiledsr", "upscale", str(src), "-o", str(out), "--preset",
                             "fast-x4", "--tile", "64", "--progress", "json"], stderr=subprocess.PIPE, text=True,
                            env=env())
    lines = []
    for line in proc.stderr:
        lines.append(line)
        ev = json.loads(line)
        if ev["event"] == "progress" and ev["tile"] >= 2:
            proc.send_signal(signal.SIGINT)
            break
    lines += proc.stderr.readlines()
    assert proc.wait(timeout=60) == 130
    last = json.loads(lines[-1])
    assert last["event"] == "error" and "--resume" in last["message"]
    assert not out.exists() and not list(tmp_path.glob(".tiledsr-*.tmp")) and len(work_dirs(tmp_path)) == 1
