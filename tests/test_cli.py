"""The command line: bad input fails with one line and exit code 2, good input works end to end."""
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiledsr.cli import main
from tiledsr.io import read_image


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def png_header_only(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def bad_files(tmp_path, photo):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "random.png").write_bytes(os.urandom(2000))
    (tmp_path / "text.jpg").write_text("this is not a jpeg\n" * 20)
    good = photo.read_bytes()
    (tmp_path / "trunc.png").write_bytes(good[: len(good) // 2])
    Image.open(photo).save(tmp_path / "full.jpg", quality=90)
    j = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(j[: len(j) // 2])
    png_header_only(tmp_path / "bomb.png", 100000, 100000)
    (tmp_path / "folder.png").mkdir()
    return ["empty.png", "random.png", "text.jpg", "trunc.png", "trunc.jpg", "bomb.png", "folder.png", "missing.png"]


def test_bad_image_files_exit_2_with_one_line_and_no_output(tmp_path, photo, capsys):
    for name in bad_files(tmp_path, photo):
        out = tmp_path / f"out-{name}.png"
        code, _, err = run(capsys, "upscale", tmp_path / name, "-o", out, "--preset", "lanczos")
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tiledsr: error:"), (name, err)
        assert "Traceback" not in err and name in err
        assert not out.exists()
        assert {p.name for p in tmp_path.iterdir() if p.name.startswith("out-")} == set()


@pytest.mark.parametrize("preset,needle", [
    ("stages: [{type: sr, tlie: 5}]", "did you mean 'tile'"),
    ("stages: [{type: upscale-magic}]", "unknown stage type"),
    ("tile: 64\noverlap: 64\nstages: [{type: sr}]", "must be smaller than tile"),
    ("stages: [{type: sr\n", "not valid YAML"),
    ("stages: !!python/object/apply:os.system ['touch {marker}']", "not valid YAML"),
])
def test_bad_presets_exit_2(tmp_path, photo, capsys, preset, needle):
    marker = tmp_path / "ran"
    p = tmp_path / "my.yaml"
    p.write_text(preset.replace("{marker}", str(marker)))
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--preset", p)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists() and not marker.exists()


@pytest.mark.parametrize("args,needle", [
    (["--scale", "-2"], "--scale"),
    (["--scale", "abc"], "--scale"),
    (["--tile", "0"], "--tile"),
    (["--preset", "photo-x5"], "unknown preset 'photo-x5'"),
    (["--device", "tpu"], "--device"),
    (["--size", "12by4"], "--size"),
    (["--scale", "2", "--width", "9"], "not both"),
])
def test_bad_arguments_exit_2(tmp_path, photo, capsys, args, needle):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", *args)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_output_equal_to_input_is_refused_and_input_kept(photo, capsys):
    before = photo.read_bytes()
    code, _, err = run(capsys, "upscale", photo, "-o", photo, "--preset", "lanczos")
    assert code == 2 and "--overwrite" in err
    assert photo.read_bytes() == before


def test_existing_output_is_refused_without_overwrite(tmp_path, photo, capsys):
    out = tmp_path / "o.png"
    out.write_bytes(b"keep")
    code, _, err = run(capsys, "upscale", photo, "-o", out, "--preset", "lanczos")
    assert code == 2 and out.read_bytes() == b"keep"
    assert run(capsys, "upscale", photo, "-o", out, "--preset", "lanczos", "--overwrite")[0] == 0
    assert read_image(out)[1].width == 4 * 64


def test_unavailable_cuda_device_exits_2(tmp_path, photo, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--device", "cuda", "--preset", "fast-x4")
    assert code == 2 and "cuda" in err and not (tmp_path / "o.png").exists()


def test_missing_model_file_exits_3(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--set", "sr.model=/no/such/model.pth")
    assert code == 3 and "model.pth" in err and len(err.strip().splitlines()) == 1


def test_fast_x4_end_to_end_with_json_progress(tmp_path, photo, capsys):
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "upscale", photo, "-o", out, "--preset", "fast-x4", "--tile", "128",
                       "--overlap", "16", "--progress", "json")
    assert code == 0, err
    events = [json.loads(line) for line in err.strip().splitlines()]
    # 128 px tiles: a redundancy warning; the first conversion for openvino in this session: a note
    kinds = [e["event"] for e in events if e["event"] not in ("warning", "note")]
    assert kinds[0] == "start" and kinds[-1] == "done" and "stage" in kinds
    prog = [e for e in events if e["event"] == "progress"]
    assert prog[-1]["tile"] == prog[-1]["tiles"] > 1 and all("eta" in e for e in prog)
    assert all(e["stage"] == "sr" and e["stages"] == 1 for e in prog)
    img, info = read_image(out)
    assert (info.width, info.height, info.channels) == (256, 192, 3)


def test_json_error_event(tmp_path, capsys):
    code, _, err = run(capsys, "upscale", tmp_path / "missing.png", "--progress", "json")
    assert code == 2
    ev = json.loads(err.strip())
    assert ev["event"] == "error" and ev["code"] == 2 and "missing.png" in ev["message"]


def test_16bit_rgba_and_grey_keep_depth_and_channels(tmp_path, capsys):
    from tiledsr.io import write_image

    rng = np.random.default_rng(0)
    for name, c in (("rgba.png", 4), ("grey.png", 1), ("rgba.tif", 4)):
        src = tmp_path / name
        write_image(src, (rng.integers(0, 65536, (20, 30, c)) / 65535).astype(np.float32), bit_depth=16)
        out = tmp_path / f"up-{name}"
        code, _, err = run(capsys, "upscale", src, "-o", out, "--preset", "fast-x4", "--progress", "none")
        assert code == 0, err
        img, info = read_image(out)
        assert (info.width, info.height, info.channels, info.bit_depth) == (120, 80, c, 16)


def test_folder_batch_and_target_size(tmp_path, photo, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(2):
        Image.open(photo).save(d / f"im{i}.png")
    code, _, err = run(capsys, "upscale", d, "--out-dir", tmp_path / "out", "--preset", "lanczos",
                       "--size", "100x50", "--progress", "none")
    assert code == 0, err
    outs = sorted((tmp_path / "out").iterdir())
    assert len(outs) == 2 and all(read_image(p)[1].width == 100 and read_image(p)[1].height == 50 for p in outs)


def test_scale_two_from_x4_model(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.jpg", "--preset", "fast-x4", "--scale", "2",
                       "--progress", "none")
    assert code == 0, err
    info = read_image(tmp_path / "o.jpg")[1]
    assert (info.format, info.width, info.height) == ("JPEG", 128, 96)


def test_plan_presets_models(tmp_path, photo, capsys):
    code, out, err = run(capsys, "plan", photo, "--preset", "photo-x4", "--tile", "128", "--preview",
                         tmp_path / "grid.png")
    assert code == 0, err
    assert "64x48 -> 256x192" in out and "tiles: 3 x 2" in out and "redundant compute" in out
    assert read_image(tmp_path / "grid.png")[1].width >= 1024
    code, out, _ = run(capsys, "presets")
    assert code == 0 and "photo-x4" in out and "lanczos" in out
    code, out, _ = run(capsys, "presets", "show", "fast-x4")
    assert code == 0 and "animevideov3" in out
    code, out, _ = run(capsys, "models")
    assert code == 0 and "x4plus" in out and "available" in out


def test_stdin_to_stdout_subprocess(photo):
    """A real process: python -m tiledsr reading stdin and writing stdout."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "tiledsr", "upscale", "-", "-o", "-", "--preset", "lanczos",
                        "--progress", "none"], input=photo.read_bytes(), capture_output=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout[:8] == b"\x89PNG\r\n\x1a\n"
    r = subprocess.run([sys.executable, "-m", "tiledsr", "upscale", "-", "-o", "-", "--preset", "lanczos"],
                       input=b"garbage", capture_output=True, env=env, timeout=120)
    assert r.returncode == 2 and b"Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == b""
