"""The command line tried as a hostile user would: every bad input, signal, pipe and full disk
ends with a documented exit code, one line on stderr (only JSON lines with --progress json),
no traceback, no temporary or partial file, and every input and unrelated file unchanged."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_cli import run
from tiledsr.io import probe, read_image, write_image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def spawn(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "tiledsr", *map(str, argv)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


# 1. plan --preview follows the rules of every output.

def test_plan_preview_never_replaces_a_file_without_overwrite(tmp_path, photo, capsys):
    other = tmp_path / "notes.png"
    other.write_bytes(b"precious")
    before = snapshot(tmp_path)
    for target in (photo, other):
        code, _, err = run(capsys, "plan", photo, "--preset", "lanczos", "--preview", target)
        assert code == 2 and "--overwrite" in one_line(err)
    assert snapshot(tmp_path) == before
    code, _, err = run(capsys, "plan", photo, "--preset", "lanczos", "--preview", other, "--overwrite")
    assert code == 0, err
    assert read_image(other)[1].width >= 1024


# 2. Outputs of one run never land on each other or on an input; folders skip earlier outputs.

def test_batch_output_over_a_later_input_is_refused_even_with_overwrite(tmp_path, photo, capsys):
    b = tmp_path / "b"
    b.mkdir()
    Image.open(photo).save(b / "a.png")
    Image.open(photo).rotate(90, expand=True).save(b / "a_x4.png")
    before = snapshot(b)
    code, _, err = run(capsys, "upscale", b / "a.png", b / "a_x4.png", "--preset", "lanczos", "--overwrite",
                       "--progress", "none")
    line = one_line(err)
    assert code == 2 and "a.png" in line and "a_x4.png" in line
    assert snapshot(b) == before


def test_batch_outputs_colliding_with_each_other_are_refused_before_any_work(tmp_path, photo, capsys):
    Image.open(photo).save(tmp_path / "photo.jpg")
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "upscale", photo, tmp_path / "photo.jpg", "--format", "png", "--out-dir",
                           tmp_path / "o", "--preset", "lanczos", "--progress", "json", *extra)
        events = [json.loads(line) for line in err.strip().splitlines()]
        assert code == 2 and [e["event"] for e in events] == ["error"], err
        assert "photo.png" in events[0]["message"] and "photo.jpg" in events[0]["message"]
        assert not (tmp_path / "o").exists()


def test_second_run_over_a_folder_skips_the_first_runs_outputs(tmp_path, photo, capsys):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("a.png", "b.png"):
        Image.open(photo).save(d / name)
    assert run(capsys, "upscale", d, "--preset", "lanczos", "--progress", "none")[0] == 0
    assert sorted(p.name for p in d.iterdir()) == ["a.png", "a_x4.png", "b.png", "b_x4.png"]
    assert probe(d / "a_x4.png").software.startswith("tiledsr")
    code, _, err = run(capsys, "upscale", d, "--preset", "lanczos", "--progress", "none", "--overwrite")
    assert code == 0, err
    assert "skipped 2 image(s)" in err
    assert sorted(p.name for p in d.iterdir()) == ["a.png", "a_x4.png", "b.png", "b_x4.png"]


def test_output_names_follow_the_final_size_when_the_scale_is_not_whole(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "--preset", "lanczos", "--size", "300x225", "--progress", "none")
    assert code == 0, err
    assert (tmp_path / "photo_300x225.png").is_file()
    code, _, err = run(capsys, "upscale", photo, "--preset", "lanczos", "--scale", "2", "--progress", "none")
    assert code == 0, err
    assert (tmp_path / "photo_x2.png").is_file()


# 3. Signals: SIGINT, SIGTERM and SIGHUP clean up, say one line and exit 128 + N.

def _big_input(tmp_path) -> Path:
    src = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    write_image(src, rng.random((512, 512, 3), dtype=np.float32))
    return src


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_while_writing_leaves_no_temporary_file(tmp_path, sig):
    src = _big_input(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    p = spawn("upscale", src, "-o", out / "poster.tif", "--preset", "lanczos", "--scale", "8",
              "--set", "output.bit_depth=16", "--progress", "none")
    deadline = time.monotonic() + 120

    def writing() -> bool:  # the output's temporary file beside the work directory (the checks before
        names = [f.name for f in out.iterdir()]  # the work also make a short-lived one)
        return any(n.endswith(".tmp") for n in names) and any(n.startswith(".tiledsr-work-") for n in names)

    while not writing() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode in (128 + sig, 0), err  # 0: it finished before the signal arrived
    left = sorted(f.name for f in out.iterdir())
    if p.returncode and "poster.tif" not in left:  # (it may have been published just before the signal)
        line = one_line(err.decode())
        assert "interrupted" in line and "--resume" in line, (left, line)
        assert len(left) == 1 and left[0].startswith(".tiledsr-work-"), left  # only the work, for --resume
    elif p.returncode:
        assert "interrupted" in one_line(err.decode())
    else:
        assert [f.name for f in out.iterdir()] == ["poster.tif"]


def test_stale_temporary_files_are_removed_by_the_next_run(tmp_path, photo, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from tiledsr.io.files import HOST

    stale = tmp_path / f".tiledsr-{HOST}-{dead.pid}-abcdef.tmp"
    stale.write_bytes(b"x" * 1000)
    old_style = tmp_path / ".photo_x4.png.k3j4h5g6.tmp"
    old_style.write_bytes(b"")
    mine = tmp_path / f".tiledsr-{HOST}-{os.getpid()}-zzzzzz.tmp"  # a live process's: kept
    mine.write_bytes(b"")
    assert run(capsys, "upscale", photo, "--preset", "lanczos", "--progress", "none")[0] == 0
    assert not stale.exists() and not old_style.exists() and mine.exists()


def test_ctrl_c_during_start_up_prints_no_traceback():
    for delay in (0.1, 0.2, 0.35, 0.6):
        p = spawn("plan", "--preset", "lanczos", "nothing.png")
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        assert b"Traceback" not in err and len(err.strip().splitlines()) <= 1, err
        assert p.returncode in (130, 2, -signal.SIGINT), (delay, p.returncode, err)


def test_ctrl_c_takes_effect_within_seconds_during_a_long_tile(tmp_path):
    """photo-x4 on ncnn spends many seconds on one tile; the signal must not wait for it."""
    from skimage import data

    src = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::2, ::2]).save(src)  # 256 px: one 1024 px tile of x4plus, 10 s or more
    p = spawn("upscale", src, "-o", tmp_path / "o.png", "--tile", "1024", "--progress", "json")
    line = p.stderr.readline()
    while line and json.loads(line)["event"] != "stage":
        line = p.stderr.readline()
    time.sleep(1.0)
    sent = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    waited = time.monotonic() - sent
    assert p.returncode == 130 and waited < 3, (p.returncode, waited, err)  # about 0.2 s when idle
    last = json.loads(err.decode().strip().splitlines()[-1])
    assert last["event"] == "error" and last["code"] == 130 and "--resume" in last["message"]
    left = [f.name for f in tmp_path.iterdir() if f.name != "astronaut.png"]  # only the work kept for --resume
    assert len(left) == 1 and left[0].startswith(".tiledsr-work-"), left


# 5. Input at fault: exit 2 and one line naming it.

@pytest.mark.parametrize("args,needle", [
    (["--size", "99999999999999999999x1"], "--size"),
    (["--width", "100000000000000000000"], "--width"),
    (["--width", "1e20"], "--width"),
    (["--scale", "nan"], "--scale"),
    (["--scale", "inf"], "--scale"),
    (["--scale", "1e20"], "scale"),
    (["--tile", "99999999999999999999999"], "--tile"),
    (["--seed", "99999999999999999999999"], "--seed"),
    (["--tile", "1", "--overlap", "0", "--preset", "photo-x4"], "smallest useful tile"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, photo, capsys, args, needle):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--preset", "lanczos", *args)
    line = one_line(err)
    assert code == 2 and needle in line, line
    assert "tiledsr: error: tiledsr" not in line
    assert not (tmp_path / "o.png").exists()


def test_out_dir_that_is_a_file_or_under_a_file_or_unwritable(tmp_path, photo, capsys):
    f = tmp_path / "f"
    f.write_bytes(b"keep")
    for out_dir, needle in ((f, "is a file"), (f / "sub", "cannot create"), ("/proc/tiledsr-test", "cannot")):
        code, _, err = run(capsys, "upscale", photo, "--out-dir", out_dir, "--preset", "lanczos")
        assert code == 2 and needle in one_line(err), err
    assert f.read_bytes() == b"keep"


def test_long_names(tmp_path, capsys):
    """A legal long output name works; an input whose derived output name is too long is refused first."""
    src = tmp_path / ("n" * 240 + ".png")
    write_image(src, np.full((8, 8, 3), 0.5, np.float32))
    code, _, err = run(capsys, "upscale", src, "-o", tmp_path / ("o" * 251 + ".png"), "--preset", "lanczos",
                       "--progress", "none")
    assert code == 0, err
    long_in = tmp_path / ("m" * 250 + ".png")
    write_image(long_in, np.full((8, 8, 3), 0.5, np.float32))
    code, _, err = run(capsys, "upscale", long_in, "--preset", "lanczos", "--progress", "none")
    assert code == 2 and "bytes long" in one_line(err)
    assert len(list(tmp_path.iterdir())) == 3


def test_odd_file_names_work_or_fail_in_one_line(tmp_path, photo, capsys):
    for name in ("with space.png", "new\nline.png", "ünï cödé.png", "-dash.png", b"bad\xffbyte.png"):
        path = os.path.join(os.fsencode(tmp_path), name) if isinstance(name, bytes) else str(tmp_path / name)
        path = os.fsdecode(path)
        Image.open(photo).save(path)
        code, out, err = run(capsys, "upscale", "--preset", "lanczos", "--progress", "none", "--", path)
        assert code == 0, (name, err)
        code, out, err = run(capsys, "plan", "--preset", "lanczos", "--", path)
        assert code == 0 and "64x48" in out, (name, err)


def test_closed_stdout_is_refused_before_any_work(photo):
    r = subprocess.run([sys.executable, "-m", "tiledsr", "upscale", str(photo), "-o", "-", "--format", "png",
                        "--preset", "lanczos", "--progress", "json"], env=ENV, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=120, preexec_fn=lambda: os.close(1))
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and json.loads(lines[0])["event"] == "error", r.stderr


# 7. stdout: a reader that goes away means a failed run, not a truncated success.

def test_reader_going_away_is_an_error(photo):
    p = spawn("upscale", photo, "-o", "-", "--format", "tiff", "--preset", "lanczos", "--scale", "8",
              "--progress", "none")
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 1 and "stdout" in one_line(err)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, photo):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small file system here (ENOSPC is also tested in test_io_hostile)")
    try:
        r = subprocess.run([sys.executable, "-m", "tiledsr", "upscale", str(photo), "-o", str(small / "o.tif"),
                            "--preset", "lanczos", "--scale", "8", "--progress", "none"], env=ENV,
                           capture_output=True, timeout=120)
        line = one_line(r.stderr.decode()).lower()
        assert r.returncode == 1 and ("disk" in line or "space" in line), line
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)])


# 8. FIFOs and process substitution.

def test_fifo_input(tmp_path, photo, capsys):
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    data = photo.read_bytes()

    def feed():
        with open(fifo, "wb") as fh:
            fh.write(data)
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    code, _, err = run(capsys, "upscale", fifo, "-o", tmp_path / "o.png", "--preset", "lanczos", "--progress", "none")
    t.join(5)
    assert code == 0, err
    assert read_image(tmp_path / "o.png")[1].width == 256


def test_process_substitution(tmp_path, photo):
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m tiledsr upscale <(cat "{photo}") '
                        f'-o "{tmp_path}/o.png" --preset lanczos --progress none'], env=ENV,
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_image(tmp_path / "o.png")[1].width == 256


# 9. JSON mode: every stderr line is a JSON event, warnings included.

def test_json_mode_stderr_is_only_json(tmp_path, photo):
    import tifffile

    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, np.zeros((16, 16, 3), np.uint8), photometric="rgb", description='{"shape": [1, 2, 3]}')
    for src in (odd, photo):
        r = subprocess.run([sys.executable, "-m", "tiledsr", "upscale", str(src), "-o", str(tmp_path / "o.webp"),
                            "--preset", "lanczos", "--progress", "json", "--overwrite"], env=ENV,
                           capture_output=True, timeout=120)
        events = [json.loads(line) for line in r.stderr.decode().splitlines()]
        assert r.returncode == 0 and events[-1]["event"] == "done", r.stderr


# 10. Everything plan can check happens before the first model loads.

def test_output_beyond_the_format_is_refused_before_any_work(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.webp", "--preset", "lanczos",
                       "--size", "20000x100", "--progress", "json")
    events = [json.loads(line) for line in err.strip().splitlines()]
    assert code == 2 and [e["event"] for e in events] == ["error"] and "tiff" in events[0]["message"].lower()


def test_memory_far_beyond_the_machine_is_refused_up_front(tmp_path, photo, capsys):
    # Streamed, a 1000000x1000000 Lanczos output needs a band of memory, but its finished work needs disk.
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.tif", "--preset", "lanczos",
                       "--size", "1000000x1000000", "--progress", "json")
    events = [json.loads(line) for line in err.strip().splitlines()]
    assert code == 1 and [e["event"] for e in events] == ["error"]
    assert "GB" in events[0]["message"] and "disk" in events[0]["message"]
    assert not list(tmp_path.glob(".tiledsr-*"))
    code, out, _ = run(capsys, "plan", photo, "--preset", "lanczos", "--size", "1000000x1000000")
    assert code == 0 and "estimated peak memory" in out


def test_every_missing_model_is_named(tmp_path, photo, capsys):
    p = tmp_path / "two.yaml"
    p.write_text("stages:\n  - {type: img2img, model: /nowhere/sd}\n  - {type: sr, model: /nowhere/x.pth}\n")
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--preset", p)
    line = one_line(err)
    assert code == 3 and "/nowhere/sd" in line and "/nowhere/x.pth" in line


def test_plan_and_upscale_agree_on_generating_presets(tmp_path, photo, capsys):
    for cmd in (["upscale", photo, "-o", tmp_path / "o.png"], ["plan", photo]):
        code, _, err = run(capsys, *cmd, "--preset", "txt2img-x4")
        assert code == 2 and "give no INPUT" in one_line(err)


# 13, 14 and the rest: messages, tilings, help.

def test_models_fetch_arguments(capsys):
    code, out, err = run(capsys, "models", "fetch", "../../../etc/passwd")
    assert code == 2 and "not a Hugging Face model id" in one_line(err)
    code, out, err = run(capsys, "models", "fetch", "x4plus")
    assert code == 0 and "bundled" in out


def test_models_lists_every_model_the_presets_use(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    for model in ("x4plus", "stabilityai/stable-diffusion-x4-upscaler", "stabilityai/sd-x2-latent-upscaler",
                  "stable-diffusion-v1-5/stable-diffusion-v1-5"):
        assert model in out


def test_plan_warns_about_wasteful_tilings(photo, capsys):
    code, out, _ = run(capsys, "plan", photo, "--preset", "photo-x4", "--tile", "64", "--overlap", "16")
    assert code == 0 and "warning:" in out and "larger --tile" in out


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("tiledsr ")
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "to come" not in out
    code, out, _ = run(capsys, "upscale", "--help")
    text = " ".join(out.split())
    for flag, words in (("--seed", "random seed"), ("--progress", "progress on stderr"),
                        ("--precision", "model precision")):
        assert flag in text and words in text, flag


def test_set_reaches_output_keys(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "--out-dir", tmp_path / "o", "--preset", "lanczos",
                       "--set", "output.format=tiff", "--progress", "none")
    assert code == 0, err
    assert probe(tmp_path / "o" / "photo_x4.tif").format == "TIFF"


def test_jpeg_with_sixteen_bits_is_refused(tmp_path, photo, capsys):
    code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.jpg", "--preset", "lanczos",
                       "--set", "output.bit_depth=16")
    assert code == 2 and "8" in one_line(err)


def test_model_names_and_files_at_fault_are_bad_input(tmp_path, photo, capsys):
    """An unknown model name or an invalid model file is exit 2; a model that cannot be had is 3."""
    (tmp_path / "garbage.pth").write_bytes(os.urandom(3000))
    (tmp_path / "png.pth").write_bytes(photo.read_bytes())
    (tmp_path / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    for spec, code_wanted in (("nosuchmodel", 2), (tmp_path / "garbage.pth", 2), (tmp_path / "png.pth", 2),
                              (tmp_path / "garbage.safetensors", 2), (tmp_path / "missing.pth", 3),
                              ("https://example.com/x.pth", 3)):
        code, _, err = run(capsys, "upscale", photo, "-o", tmp_path / "o.png", "--set", f"sr.model={spec}")
        assert code == code_wanted, (spec, err)
        one_line(err)
    assert not (tmp_path / "o.png").exists()


def test_a_file_named_both_alone_and_through_its_folder_runs_once(tmp_path, photo, capsys):
    b = tmp_path / "b"
    b.mkdir()
    Image.open(photo).save(b / "a.png")
    code, _, err = run(capsys, "upscale", f"{b}/./a.png", b, "--out-dir", tmp_path / "o", "--preset", "lanczos",
                       "--progress", "none")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "o").iterdir()] == ["a_x4.png"]


def test_a_stream_read_twice_gives_the_new_data(tmp_path, photo):
    """Streams are read once per use: a second read of the same FIFO sees what was written next."""
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    other = tmp_path / "other.png"
    Image.open(photo).rotate(180).save(other)
    for source in (photo, other):
        t = threading.Thread(target=lambda s=source: fifo.write_bytes(s.read_bytes()), daemon=True)
        t.start()
        image, _ = read_image(fifo)
        t.join(5)
        assert np.array_equal(image, read_image(source)[0])


def test_models_fetch_knows_every_alias_of_the_bundled_models(capsys):
    for alias in ("RealESRGAN_x4plus", "realesr-animevideov3", "X4PLUS-ANIME"):
        code, out, err = run(capsys, "models", "fetch", alias)
        assert code == 0 and "bundled" in out, (alias, err)


def test_an_interrupt_python_can_only_ignore_is_sent_again_not_printed():
    """SIGINT landing in a callback whose exceptions Python ignores (the import machinery's weakref
    callbacks, a __del__) is re-delivered: no 'Exception ignored' traceback, and the run still stops."""
    code = ("import gc, signal, sys\n"
            "from tiledsr import signals\n"
            "signals.install()\n"
            "class Boom:\n"
            "    def __del__(self):\n"
            "        raise signals.Interrupted(signal.SIGINT)\n"
            "try:\n"
            "    Boom(); gc.collect()\n"
            "    for _ in range(10 ** 7):\n"
            "        pass\n"
            "    sys.exit(0)\n"
            "except KeyboardInterrupt:\n"
            "    sys.exit(130)\n")
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 130 and b"Traceback" not in p.stderr and b"Exception ignored" not in p.stderr, p.stderr
