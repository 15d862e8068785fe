"""tiledsr.io tried as a hostile user would: temporary files, output checks made before any work,
stdout that goes away, full disks, FIFOs and pipes, third-party chatter, messages, odd files from
the real world, seeded random damage, and the Software marker. Every file is built in code."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

import tiledsr.io as tio
from tiledsr.errors import InputError, TiledsrError
from tiledsr.io import read as read_module
from tiledsr.io import source as source_module
from tiledsr.io import files as files_module
from tiledsr.io import write as write_module

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
TEMP_NAME = re.compile(r"\.tiledsr-[0-9a-f]{4}-\d+-[a-z0-9]{6}\.tmp")
HOST = files_module.HOST
OTHER, OLD_OTHER = [h for h in ("ffff", "eeee", "dddd") if h != HOST][:2]  # other machines
EXTS = ("png", "jpg", "tif", "webp")
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
         (1, 0, 2, 1))


def picture(height: int = 24, width: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A float32 image in [0, 1] with smooth parts and noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [x / width, y / height, (x + y) / (width + height), 0.6 + 0.3 * np.sin(x / 5)]
    noise = np.random.default_rng(seed).random((height, width, channels), dtype=np.float32)
    return (0.8 * np.stack(planes[:channels], -1) + 0.2 * noise).astype(np.float32)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder``, hidden ones included, and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def child(code: str, **kw) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh Python that can import tiledsr."""
    return subprocess.run([sys.executable, "-c", code], env=ENV, timeout=60, **kw)


def exif_blob(**tags) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8769] = {0x9003: "2024:05:06 07:08:09"}
    for key, value in tags.items():
        exif[int(key[1:])] = value
    return exif.tobytes()


@contextlib.contextmanager
def watchdog(seconds: int):
    """Fail instead of hanging forever."""
    def bark(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, bark)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def flush_c_stdio() -> None:
    ctypes.CDLL(None).fflush(None)


# --- 1. temporary files ----------------------------------------------------------------------

class Interrupted(BaseException):
    """What a CLI raises from its SIGTERM / SIGHUP handler."""


@pytest.mark.parametrize("ext", EXTS)
def test_long_legal_output_names_work_and_temp_names_are_short(tmp_path, ext, monkeypatch):
    made = []
    real = files_module._create_temp
    monkeypatch.setattr(files_module, "_create_temp", lambda p: made.append(p) or real(p))
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = "n" * (limit - len(ext) - 1) + "." + ext  # exactly the longest legal name
    notes = tio.write_image(tmp_path / name, picture())
    assert (tmp_path / name).is_file() and isinstance(notes, tuple)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert made and all(TEMP_NAME.fullmatch(p.name) and len(p.name) <= 32 for p in made)
    assert all(p.parent == tmp_path for p in made)


@pytest.mark.parametrize("where", ["probe", "created", "encoding", "fsync", "publish"])
@pytest.mark.parametrize("ext", ["png", "tif"])
@pytest.mark.parametrize("kind", [KeyboardInterrupt, Interrupted])
def test_any_base_exception_after_the_temp_exists_removes_it(tmp_path, monkeypatch, where, ext,
                                                              kind):
    (tmp_path / f"out.{ext}").write_bytes(b"precious")
    before = snapshot(tmp_path)
    real_create, real_fsync = files_module._create_temp, os.fsync

    class Breaking(io.FileIO):
        def write(self, data):
            super().write(bytes(data[:7]))
            raise kind

    calls = []

    def create(path):  # the first call is check_output's probe of the folder
        calls.append(path)
        if where == "encoding":
            return Breaking(path, "x+")
        fh = real_create(path)
        if where == "probe" or where == "created" and len(calls) == 2:
            fh.close()
            raise kind
        return fh

    monkeypatch.setattr(files_module, "_create_temp", create)
    if where == "fsync":
        monkeypatch.setattr(files_module.os, "fsync", lambda fd: (_ for _ in ()).throw(kind()))
    if where == "publish":
        monkeypatch.setattr(files_module, "_publish", lambda *a: (_ for _ in ()).throw(kind()))
    with pytest.raises(kind):
        tio.write_image(tmp_path / f"out.{ext}", picture(), overwrite=True)
    monkeypatch.setattr(files_module.os, "fsync", real_fsync)
    assert len(calls) == (1 if where == "probe" else 2)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{ext}"]


@pytest.mark.parametrize("ext", EXTS)
def test_temp_file_exists_only_while_bytes_are_written(tmp_path, monkeypatch, ext):
    seen = []
    fmt = tio.output_format(f"a.{ext}", None)
    real = write_module._ENCODERS[fmt]

    def spy(fh, **kw):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))
        real(fh, **kw)

    monkeypatch.setitem(write_module._ENCODERS, fmt, spy)
    tio.write_image(tmp_path / f"a.{ext}", picture())
    if fmt in ("PNG", "TIFF"):  # streamed: encoded straight into the temporary file
        assert len(seen[0]) == 1 and TEMP_NAME.fullmatch(seen[0][0])
    else:  # encoded in memory first; the file comes after
        assert seen == [[]]
    assert [p.name for p in tmp_path.iterdir()] == [f"a.{ext}"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_remove_stale_temps_removes_only_dead_runs_files(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = dead_pid()
        out = tmp_path / "poster.tif"
        files = {
            f".tiledsr-{HOST}-{dead}-abc123.tmp": True,  # a killed run's
            f".tiledsr-{HOST}-99999999999-zzzzzz.tmp": True,  # no such process can exist
            f".tiledsr-{HOST}-{os.getpid()}-abc123.tmp": False,  # this process's, live
            f".tiledsr-{HOST}-{live.pid}-abc123.tmp": False,  # another live process's
            ".poster.tif.k3_9abxy.tmp": True,  # the old naming of this output
            ".other.tif.k3_9abxy.tmp": False,  # the old naming of another output
            ".poster.tif.k3_9ab.tmp": False,  # not 8 characters
            f".tiledsr-{HOST}-{dead}-abc12.tmp": False,  # not 6 characters
            f"tiledsr-{HOST}-{dead}-abc123.tmp": False,  # not hidden
            f".tiledsr-{HOST}-{dead}-abc123.tmp.bak": False,
            "poster.tif": False, "notes.txt": False,
            f".tiledsr-{OTHER}-{dead}-abc123.tmp": False,  # another machine's, recent
            f".tiledsr-{OLD_OTHER}-{dead}-abc123.tmp": True,  # another machine's, untouched for two days
        }
        for name in files:
            (tmp_path / name).write_bytes(b"x")
        two_days_ago = time.time() - 2 * 86400
        os.utime(tmp_path / f".tiledsr-{OLD_OTHER}-{dead}-abc123.tmp", (two_days_ago, two_days_ago))
        (tmp_path / f".tiledsr-{HOST}-{dead}-dir000.tmp").mkdir()  # a folder: never removed
        (tmp_path / f".tiledsr-{HOST}-{dead}-link00.tmp").symlink_to(tmp_path / "notes.txt")
        assert tio.remove_stale_temps(out) == sum(files.values())
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {n for n, gone in files.items() if not gone} | {
            f".tiledsr-{HOST}-{dead}-dir000.tmp", f".tiledsr-{HOST}-{dead}-link00.tmp"}
        (tmp_path / f".tiledsr-{HOST}-{dead}-qwerty.tmp").write_bytes(b"x")
        (tmp_path / ".notes.txt.abcdefgh.tmp").write_bytes(b"x")
        assert tio.remove_stale_temps(tmp_path) == 1  # a folder: the old naming needs a name
        assert (tmp_path / ".notes.txt.abcdefgh.tmp").exists()
        assert tio.remove_stale_temps("-") == 0
        assert tio.remove_stale_temps(tmp_path / "no" / "x") == 0
    finally:
        live.kill()
        live.wait()


def test_a_killed_writer_leaves_a_temp_that_the_next_run_removes(tmp_path):
    out = tmp_path / "big.tif"
    code = f"""
import time, numpy as np
from tiledsr.io import write as w
real = w._ENCODERS["TIFF"]
def slow(fh, **kw):
    fh.write(b"II*\\x00partial")
    fh.flush()
    time.sleep(60)
w._ENCODERS["TIFF"] = slow
w.write_image({str(out)!r}, np.zeros((8, 8, 3), np.float32))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV)
    try:
        deadline = time.monotonic() + 30
        while not any(TEMP_NAME.fullmatch(p.name) for p in tmp_path.iterdir()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert tio.remove_stale_temps(out) == 1
    assert list(tmp_path.iterdir()) == []


# --- 2. every output check before any work ---------------------------------------------------

def test_check_output_returns_the_format_and_creates_nothing(tmp_path):
    before = snapshot(tmp_path)
    assert tio.check_output(tmp_path / "a.png") == "PNG"
    assert tio.check_output(tmp_path / "a.out", format="jpg", size=(100, 65500)) == "JPEG"
    assert tio.check_output(tmp_path / "a.tif", size=(10**6, 10**6), bit_depth=16) == "TIFF"
    assert tio.check_output(tmp_path / "a.webp", size=(16383, 16383), channels=4) == "WEBP"
    assert snapshot(tmp_path) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ext,size", [("webp", (10, 16384)), ("webp", (16384, 10)),
                                      ("jpg", (65501, 3)), ("jpeg", (3, 70000))])
def test_sizes_beyond_the_format_are_refused_suggesting_tiff(tmp_path, ext, size):
    with pytest.raises(InputError) as caught:
        tio.check_output(tmp_path / f"o.{ext}", size=size)
    assert "tiff" in one_line(caught.value) and f"{size[1]}x{size[0]}" in str(caught.value)


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_sixteen_bits_requested_from_an_eight_bit_format_is_refused(tmp_path, fmt):
    with pytest.raises(InputError, match="8 bits.*png or tiff"):
        tio.check_output(tmp_path / "o", format=fmt, bit_depth=16)
    assert tio.check_output(tmp_path / "o", format=fmt, bit_depth=8)
    with pytest.raises(InputError, match="bit depth 12"):
        tio.check_output(tmp_path / "o.png", bit_depth=12)


def bad_destinations(tmp_path: Path) -> dict[str, tuple[Path, dict, str]]:
    """name -> (destination, keywords, a phrase the message must hold)."""
    (tmp_path / "afile").write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "exists.png").write_bytes(b"precious")
    (tmp_path / "in.png").write_bytes(b"input")
    os.mkfifo(tmp_path / "fifo.png")
    long = "n" * (os.pathconf(tmp_path, "PC_NAME_MAX") + 1) + ".png"
    return {
        "folder": (tmp_path / "folder.png", {}, "folder"),
        "missing parent": (tmp_path / "nowhere" / "a.png", {}, "does not exist"),
        "parent is a file": (tmp_path / "afile" / "a.png", {}, "is a file"),
        "grandparent is a file": (tmp_path / "afile" / "x" / "a.png", {}, "is a file"),
        "name too long": (tmp_path / long, {}, "bytes long"),
        "existing": (tmp_path / "exists.png", {}, "--overwrite"),
        "input": (tmp_path / "sub" / ".." / "in.png",
                  {"inputs": [tmp_path / "in.png"]}, "input file"),
        "fifo": (tmp_path / "fifo.png", {"overwrite": True}, "not a regular file"),
        "device": (Path("/dev/null"), {"overwrite": True, "format": "png"}, "not a regular file"),
        "nul": (tmp_path / "a\x00b.png", {}, "null"),
    }


def test_bad_destinations_are_one_line_input_errors_and_write_image_agrees(tmp_path):
    (tmp_path / "sub").mkdir()
    cases = bad_destinations(tmp_path)
    before = snapshot(tmp_path)
    for case, (dst, kw, phrase) in cases.items():
        with pytest.raises(InputError) as checked:
            tio.check_output(dst, **kw)
        with pytest.raises(InputError) as written:
            tio.write_image(dst, picture(), **kw)
        assert phrase in one_line(checked.value), case
        assert str(checked.value) == str(written.value), case
    assert snapshot(tmp_path) == before
    assert not any(TEMP_NAME.fullmatch(p.name) for p in tmp_path.iterdir())


@pytest.mark.parametrize("code,phrase", [(errno.EACCES, "not writable"),
                                         (errno.EROFS, "read-only file system"),
                                         (errno.ENOSPC, "full"), (errno.EIO, "cannot take")])
def test_a_folder_that_refuses_new_files_is_found_before_any_work(tmp_path, monkeypatch, code,
                                                                  phrase):
    def refuse(path):
        raise OSError(code, os.strerror(code), str(path))
    monkeypatch.setattr(files_module, "_create_temp", refuse)
    for call in (lambda: tio.check_output(tmp_path / "a.png"),
                 lambda: tio.write_image(tmp_path / "a.png", picture())):
        with pytest.raises(InputError) as caught:
            call()
        assert phrase in one_line(caught.value) and str(tmp_path) in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_for_real(tmp_path):
    """A folder without write permission, or (as root, who may write anywhere) a read-only mount."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            with pytest.raises(InputError, match="not writable"):
                tio.check_output(folder / "a.png")
        finally:
            folder.chmod(0o700)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("root without permission to mount: a read-only folder cannot be made here")
    try:
        with pytest.raises(InputError, match="read-only file system"):
            tio.check_output(folder / "a.png")
    finally:
        subprocess.run(["umount", str(folder)])


def test_closed_or_terminal_stdout_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(InputError, match="closed"):
        tio.check_output("-", format="png")
    with pytest.raises(InputError, match="closed"):
        tio.write_image("-", picture(), format="png")
    master, slave = os.openpty()
    try:
        monkeypatch.setattr(sys, "stdout", open(slave, "w", closefd=False))
        with pytest.raises(InputError, match="terminal.*redirect"):
            tio.check_output("-", format="png")
        reading = os.open(os.devnull, os.O_RDONLY)
        monkeypatch.setattr(sys, "stdout", open(reading, "w", closefd=False))
        with pytest.raises(InputError, match="reading only"):
            tio.write_image("-", picture(), format="png")
        os.close(reading)
    finally:
        os.close(master)
        os.close(slave)


def test_stdout_closed_at_start_is_one_line_exit_two():
    code = """
import numpy as np, sys
from tiledsr.errors import TiledsrError
from tiledsr.io import write_image
try:
    write_image("-", np.zeros((4, 4, 3), np.float32), format="png")
except TiledsrError as err:
    print(err, file=sys.stderr); sys.exit(err.exit_code)
"""
    proc = subprocess.run(["/bin/sh", "-c", f'exec "{sys.executable}" -c "$0" 1>&-', code],
                          env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "closed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- 3. stdout that goes away or fills up ----------------------------------------------------

STDOUT_CHILD = """
import sys, numpy as np
from tiledsr.errors import TiledsrError
from tiledsr.io import write_image
image = np.random.default_rng(0).random((700, 700, 3), dtype=np.float32)
try:
    write_image("-", image, format="png")
except TiledsrError as err:
    print(err, file=sys.stderr)
    sys.exit(err.exit_code)
"""


def test_a_reader_that_goes_away_is_an_error_not_success():
    proc = subprocess.Popen([sys.executable, "-c", STDOUT_CHILD], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = proc.stdout.read(10)
    proc.stdout.close()  # like `| head -c 10`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and head == b"\x89PNG\r\n\x1a\n\x00\x00"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(r"stdout was closed after [\d,]+ (of [\d,]+ )?bytes; the output is incomplete",
                     lines[0])


def test_stdout_on_a_full_disk_is_one_line():
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([sys.executable, "-c", STDOUT_CHILD], env=ENV, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk is full" in lines[0] and "incomplete" in lines[0], proc.stderr


def test_short_writes_to_stdout_are_completed_and_a_stalled_one_is_an_error(tmp_path,
                                                                           monkeypatch):
    target = tmp_path / "stdout.png"
    stream = open(target, "w")
    monkeypatch.setattr(sys, "stdout", stream)
    real = os.write
    fd = stream.fileno()
    monkeypatch.setattr(os, "write", lambda f, data: real(f, data[:997] if f == fd else data))
    print("text first", end="")  # buffered text goes out before the image
    tio.write_image("-", picture(), format="png")
    stream.flush()
    data = target.read_bytes()
    assert data.startswith(b"text first\x89PNG")
    assert tio.read_image(_saved(tmp_path, data[10:]))[0].shape == (24, 32, 3)
    monkeypatch.setattr(os, "write", lambda f, data: 0 if f == fd else real(f, data))
    with pytest.raises(TiledsrError) as caught:
        tio.write_image("-", picture(), format="png")
    assert "incomplete" in one_line(caught.value) and not isinstance(caught.value, InputError)
    stream.close()


def _saved(folder: Path, data: bytes) -> Path:
    path = folder / "copy.png"
    path.write_bytes(data)
    return path


# --- 4. full disks -------------------------------------------------------------------------

class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""

    room = 0
    code = errno.ENOSPC

    def write(self, data):
        if self.tell() + len(data) > self.room:
            raise OSError(self.code, os.strerror(self.code))
        return super().write(data)


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("room", [0, 100, 3000])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_one_line_and_leaves_everything_as_it_was(tmp_path, monkeypatch, ext, room,
                                                                 code):
    dst = tmp_path / f"out.{ext}"
    dst.write_bytes(b"the previous result")
    before = snapshot(tmp_path)
    made = []

    def create(path):
        made.append(path)
        return type("Full", (FullDisk,), {"room": room, "code": code})(path, "x+")

    monkeypatch.setattr(files_module, "_create_temp", create)
    with pytest.raises(TiledsrError) as caught:
        tio.write_image(dst, picture(120, 160, 4), bit_depth=16 if ext in ("png", "tif") else 8,
                        icc_profile=SRGB, exif=exif_blob(), dpi=(300, 300), overwrite=True)
    assert "disk is full" in one_line(caught.value) and str(dst) in str(caught.value)
    assert caught.value.exit_code == 1
    assert snapshot(tmp_path) == before and made  # temp files (the probe's too) removed


# --- 5. FIFOs, pipes, devices, stdin ---------------------------------------------------------

def encoded(ext: str, **kw) -> bytes:
    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.TextIOWrapper(buffer)) as stream:
        tio.write_image("-", picture(), format=ext, **kw)
        stream.flush()
        return buffer.getvalue()


def feed(fifo_or_fd, data: bytes) -> threading.Thread:
    """A writer thread for a FIFO path or a pipe's write end; it survives a reader that leaves."""
    def run():
        try:
            with (open(fifo_or_fd, "wb") if isinstance(fifo_or_fd, Path)
                  else os.fdopen(fifo_or_fd, "wb")) as fh:
                if callable(data):
                    data(fh)
                else:
                    fh.write(data)
        except (BrokenPipeError, OSError):
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("ext", EXTS)
def test_a_fifo_is_read_once_and_probe_then_read_both_work(tmp_path, ext):
    data = encoded(ext, exif=exif_blob())
    regular = _saved(tmp_path, data)
    fifo = tmp_path / f"in.{ext}"
    os.mkfifo(fifo)
    writer = feed(fifo, data)
    with watchdog(20):
        info = tio.probe(fifo)
        pixels, again = tio.read_image(fifo)  # no writer any more: must come from the bytes read
    writer.join(5)
    expected, _ = tio.read_image(regular)
    assert np.array_equal(pixels, expected) and info == again
    assert (info.width, info.height, info.format) == (32, 24, tio.output_format(f"a.{ext}", None))


@pytest.mark.parametrize("ext", EXTS)
def test_process_substitution_pipes_are_not_called_corrupt(tmp_path, ext):
    data = encoded(ext)
    read_end, write_end = os.pipe()
    writer = feed(write_end, data)
    try:
        with watchdog(20):
            info = tio.probe(f"/dev/fd/{read_end}")
            pixels, _ = tio.read_image(f"/dev/fd/{read_end}")
    finally:
        os.close(read_end)
        writer.join(5)
    assert pixels.shape == (24, 32, 3) and info.width == 32


def test_endless_or_huge_streams_are_refused_by_the_cap(tmp_path):
    with watchdog(20):
        for device in ("/dev/zero", "/dev/urandom"):
            with pytest.raises(InputError, match="not a PNG, JPEG"):
                tio.read_image(device)
        with pytest.raises(InputError, match="empty"):
            tio.read_image("/dev/null")
        header = encoded("png")[:100]

        def endless(fh):
            fh.write(header)
            block = b"\x00" * 2**16
            while True:
                fh.write(block)

        fifo = tmp_path / "endless.png"
        os.mkfifo(fifo)
        writer = feed(fifo, endless)
        started = time.monotonic()
        with pytest.raises(InputError) as caught:
            tio.probe(fifo, max_pixels=64 * 64)
        assert "goes on past" in one_line(caught.value) and "4,096 pixels" in str(caught.value)
        assert time.monotonic() - started < 10
    writer.join(5)


def test_stdin_that_is_closed_or_a_terminal_is_refused(monkeypatch):
    monkeypatch.setattr(source_module, "_STREAMS", {})
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(InputError, match="stdin.*closed"):
        tio.probe("-")
    master, slave = os.openpty()
    try:
        monkeypatch.setattr(sys, "stdin", open(slave, "r", closefd=False))
        with watchdog(10), pytest.raises(InputError, match="terminal"):
            tio.read_image("-")
    finally:
        os.close(master)
        os.close(slave)


def test_stdin_is_probed_then_read(monkeypatch):
    monkeypatch.setattr(source_module, "_STREAMS", {})
    data = encoded("tiff")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert tio.probe("-").format == "TIFF"
    assert tio.read_image("-")[0].shape == (24, 32, 3)


# --- 6. no third-party lines on stdout or stderr ---------------------------------------------

def tiff_with_bad_tags() -> bytes:
    """A TIFF whose extra tag has an invalid data type (tifffile logs a warning on it)."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((4, 5, 3), np.uint8), photometric="rgb",
                     extratags=[(65000, "s", 0, "hello", True)], metadata=None)
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for i in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", data, at)[0] == 65000:
            struct.pack_into("<H", data, at + 2, 99)  # no such TIFF type
    return bytes(data)


def jpeg_with_corrupt_exif() -> bytes:
    buffer = io.BytesIO()
    exif = bytearray(exif_blob(t274=6))
    exif[-6:] = b"\xff" * 6  # the last entry's value points past the end
    Image.fromarray((picture() * 255).astype(np.uint8)).save(buffer, "JPEG", exif=bytes(exif))
    return buffer.getvalue()


def adam7_png16(pixels: np.ndarray) -> bytes:
    """An interlaced 16-bit PNG of H x W x C uint16 (unfiltered rows)."""
    height, width, channels = pixels.shape
    rows = [b"\x00" + row.astype(">u2").tobytes()
            for y, x, dy, dx in ADAM7 for row in pixels[y::dy, x::dx] if row.size]
    ihdr = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"".join(rows))) + _chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_odd_files_print_nothing(tmp_path, capfd):
    files = {"tags.tif": tiff_with_bad_tags(), "exif.jpg": jpeg_with_corrupt_exif(),
             "i16.png": adam7_png16(np.arange(13 * 11 * 3, dtype=np.uint16).reshape(13, 11, 3))}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        tio.probe(tmp_path / name)
        tio.read_image(tmp_path / name)
    flush_c_stdio()
    assert capfd.readouterr() == ("", "")


def test_reading_an_interlaced_16_bit_png_leaves_stdout_clean(tmp_path):
    """libpng's warnings go through C stdio, flushed at exit: they would end up in an image
    written to stdout."""
    pixels = np.random.default_rng(3).integers(0, 65536, (13, 11, 4), dtype=np.uint16)
    (tmp_path / "i.png").write_bytes(adam7_png16(pixels))
    code = f"""
import sys
from tiledsr.io import read_image, write_image
image, info = read_image({str(tmp_path / "i.png")!r})
write_image("-", image, bit_depth=16, format="png")
"""
    proc = child(code, capture_output=True)
    assert proc.returncode == 0 and proc.stderr == b""
    (tmp_path / "back.png").write_bytes(proc.stdout)
    assert proc.stdout.endswith(_chunk(b"IEND", b""))  # nothing after the image
    back, info = tio.read_image(tmp_path / "back.png")
    assert info.bit_depth == 16 and np.array_equal(np.round(back * 65535), pixels)


# --- 7. messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("size,limit,words", [
    ((64, 64), 1000, ("4,096 pixels", "1,000 pixels")),
    ((2000, 1000), 999_999, ("2,000,000 pixels", "999,999 pixels")),
    ((4000, 3000), 10**6, ("12 megapixels", "1 megapixels")),
    ((16384, 16385), 2**28, ("268.5 megapixels", "268.4 megapixels")),
    ((16384, 16384), 2**28 - 1, ("268,435,456 pixels", "268,435,455 pixels")),
])
def test_pixel_limits_are_said_in_numbers_that_differ(tmp_path, size, limit, words):
    path = tmp_path / "a.png"
    tio.write_image(path, picture(8, 8))
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, *size)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as caught:
        tio.probe(path, max_pixels=limit)
    text = one_line(caught.value)
    assert " 0 megapixels" not in text and all(word in text for word in words), text


def malformed_tiffs() -> list[bytes]:
    """Classic TIFFs with one IFD entry's type, count or value damaged, in many ways."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, picture(16, 16, 3).__mul__(255).astype(np.uint8), photometric="rgb",
                     compression="zlib", metadata=None)
    base = buffer.getvalue()
    ifd = struct.unpack_from("<I", base, 4)[0]
    count = struct.unpack_from("<H", base, ifd)[0]
    out = []
    for i in range(count):
        for field, value in ((2, 0), (2, 13), (4, 0), (4, 2**31), (8, 0), (8, 2**32 - 1)):
            data = bytearray(base)
            at = ifd + 2 + 12 * i + field
            struct.pack_into("<H" if field == 2 else "<I", data, at, value)
            out.append(bytes(data))
    return out


def test_malformed_tiffs_get_a_reason_in_words(tmp_path):
    for i, data in enumerate(malformed_tiffs()):
        path = tmp_path / f"m{i}.tif"
        path.write_bytes(data)
        try:
            tio.read_image(path)
        except InputError as err:
            text = one_line(err)
            reason = re.search(r"corrupt or unsupported \((.*)\); re-export", text)
            assert reason is None or sum(c.isalpha() for c in reason.group(1)) >= 4, text
            assert "of None per pixel" not in text and "()" not in text, text


def test_a_terse_exception_is_named():
    assert read_module.reason(KeyError(0)) == "KeyError: 0"
    assert read_module.reason(ValueError("")) == "ValueError"
    assert read_module.reason(ValueError("the strip is short")) == "the strip is short"


# --- 8. real-world odd files -----------------------------------------------------------------

def pillow_reads(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255


def old_style_jpeg_tiff() -> bytes:
    """A TIFF with compression 6 (old-style JPEG): the JPEG stream whole, found through
    JPEGInterchangeFormat; YCbCr."""
    buffer = io.BytesIO()
    Image.fromarray((picture() * 255).astype(np.uint8)).save(buffer, "JPEG", quality=95,
                                                              subsampling=0)
    jpeg = buffer.getvalue()
    short, long = (lambda v: struct.pack("<H", v)), (lambda v: struct.pack("<I", v))
    return classic_tiff([(256, 3, 1, short(32)), (257, 3, 1, short(24)), (258, 3, 1, short(8)),
                         (259, 3, 1, short(6)), (262, 3, 1, short(6)), (273, 4, 1, long(8)),
                         (277, 3, 1, short(3)), (278, 3, 1, short(24)),
                         (279, 4, 1, long(len(jpeg))), (513, 4, 1, long(8)),
                         (514, 4, 1, long(len(jpeg)))], jpeg)


def test_tiffs_our_reader_refuses_but_pillow_decodes_are_read(tmp_path):
    rgb = (picture() * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "lab.tif", rgb, photometric="cielab", metadata=None)
    tifffile.imwrite(tmp_path / "ycbcr.tif", rgb, photometric="ycbcr", metadata=None)
    Image.fromarray(rgb).convert("YCbCr").save(tmp_path / "pil_ycbcr.tif")
    Image.fromarray(rgb).convert("LAB").save(tmp_path / "pil_lab.tif")
    (tmp_path / "ojpeg.tif").write_bytes(old_style_jpeg_tiff())
    for name in ("lab.tif", "ycbcr.tif", "pil_ycbcr.tif", "pil_lab.tif", "ojpeg.tif"):
        pixels, info = tio.read_image(tmp_path / name)
        assert (info.width, info.height, info.channels, info.format) == (32, 24, 3, "TIFF"), name
        assert np.abs(pixels - pillow_reads(tmp_path / name)).max() <= 1 / 255 + 1e-6, name
        assert tio.probe(tmp_path / name) == info


def classic_tiff(entries: list[tuple[int, int, int, bytes]], payload: bytes) -> bytes:
    """A little-endian TIFF: ``payload`` at offset 8, then one IFD of ``entries`` (tag, type,
    count, value bytes; values over 4 bytes go after the IFD)."""
    pad = len(payload) % 2
    ifd_at = 8 + len(payload) + pad
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    table, extra = b"", b""
    for tag, kind, count, data in sorted(entries):
        if len(data) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + data.ljust(4, b"\x00")
        else:
            table += struct.pack("<HHII", tag, kind, count, extra_at + len(extra))
            extra += data + b"\x00" * (len(data) % 2)
    return (b"II*\x00" + struct.pack("<I", ifd_at) + payload + b"\x00" * pad
            + struct.pack("<H", len(entries)) + table + b"\x00" * 4 + extra)


def one_bit_palette_tiff() -> bytes:
    """10 x 8, 1 bit per pixel, palette red / blue, columns alternating."""
    bits = np.packbits((np.arange(80).reshape(8, 10) % 2).astype(bool), axis=1).tobytes()
    short, long = (lambda v: struct.pack("<H", v)), (lambda v: struct.pack("<I", v))
    return classic_tiff([(256, 3, 1, short(10)), (257, 3, 1, short(8)), (258, 3, 1, short(1)),
                         (259, 3, 1, short(1)), (262, 3, 1, short(3)), (273, 4, 1, long(8)),
                         (277, 3, 1, short(1)), (278, 3, 1, short(8)),
                         (279, 4, 1, long(len(bits))),
                         (320, 3, 6, struct.pack("<6H", 65535, 0, 0, 0, 0, 65535))], bits)


def test_a_one_bit_palette_tiff_is_read(tmp_path):
    (tmp_path / "p.tif").write_bytes(one_bit_palette_tiff())
    pixels, info = tio.read_image(tmp_path / "p.tif")
    assert pixels.shape == (8, 10, 3) and info.channels == 3
    assert np.array_equal(pixels[0, :3], [[1, 0, 0], [0, 0, 1], [1, 0, 0]])


def test_a_multi_page_tiff_uses_its_first_page_and_says_so(tmp_path):
    pages = [Image.new("P", (10, 8), 1), Image.new("RGB", (3, 3), "green"), Image.new("L", (5, 2))]
    pages[0].putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pages[0].save(tmp_path / "multi.tif", save_all=True, append_images=pages[1:])
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tif:
        tif.write(np.zeros((6, 7), np.uint16))
        tif.write(np.full((20, 30, 3), 9, np.uint8), photometric="rgb")
    pixels, info = tio.read_image(tmp_path / "multi.tif")
    assert pixels.shape == (8, 10, 3) and np.allclose(pixels[0, 1], [0, 0, 1])
    assert any("3 pages" in note for note in info.notes)
    assert info == tio.probe(tmp_path / "multi.tif")
    pixels, info = tio.read_image(tmp_path / "stack.tif")
    assert pixels.shape == (6, 7, 1) and any("2 pages" in note for note in info.notes)


def raw_exif(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian EXIF block with IFD0 ``entries`` (tag, type, count, value or data)."""
    table, data = b"", b""
    start = 8 + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in entries:
        if len(value) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\x00")
        else:
            table += struct.pack("<HHII", tag, kind, count, start + len(data))
            data += value + b"\x00" * (len(value) % 2)
    return (b"Exif\x00\x00II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
            + table + b"\x00" * 4 + data)


def jpeg_with(exif: bytes, jfif: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((picture() * 255).astype(np.uint8)).save(buffer, "JPEG", exif=exif)
    data = buffer.getvalue()
    if not jfif and data[2:4] == b"\xff\xe0":  # drop JFIF, so the DPI comes from EXIF
        size = struct.unpack(">H", data[4:6])[0]
        data = data[:2] + data[4 + size:]
    return data


def unkeepable_exif_jpegs() -> dict[str, bytes]:
    rational = lambda n, d: struct.pack("<II", n, d)  # noqa: E731
    gps = raw_exif([(0x8825, 4, 1, struct.pack("<I", 26))])[:-4]
    return {
        # XResolution as text, with an orientation tag (re-serialising it raised TypeError)
        "dpi_text": jpeg_with(raw_exif([(282, 2, 8, b"300300\x02\x00"), (283, 2, 4, b"300\x02"),
                                        (296, 3, 1, b"\x02\x00"), (274, 3, 1, b"\x06\x00")])),
        # a resolution of 4294967295 dpi: beyond what PNG and JPEG can store
        "dpi_huge": jpeg_with(raw_exif([(282, 5, 1, rational(2**32 - 1, 1)),
                                        (283, 5, 1, rational(2**32 - 1, 1)),
                                        (296, 3, 1, b"\x02\x00")])),
        # a GPS IFD pointer into nowhere and a negative-looking rational
        "gps": jpeg_with(gps + b"\x00" * 4),
        "garbage": jpeg_with(b"Exif\x00\x00" + bytes(range(256)) * 3),
    }


def test_metadata_that_cannot_be_kept_is_dropped_never_fatal(tmp_path):
    for name, data in unkeepable_exif_jpegs().items():
        src = tmp_path / f"{name}.jpg"
        src.write_bytes(data)
        pixels, info = tio.read_image(src)
        assert pixels.shape[:2] in ((24, 32), (32, 24)) and info == tio.probe(src), name
        for ext in EXTS:
            notes = tio.write_image(tmp_path / f"{name}_out.{ext}", pixels,
                                    icc_profile=info.icc_profile, exif=info.exif, dpi=info.dpi)
            assert isinstance(notes, tuple)
            assert all(isinstance(n, str) and n and "\n" not in n for n in notes)
            back = tio.probe(tmp_path / f"{name}_out.{ext}")
            assert back.software == tio.software_name(), (name, ext)
    info = tio.probe(tmp_path / "dpi_huge.jpg")
    notes = tio.write_image(tmp_path / "huge_again.png", picture(), dpi=info.dpi)
    assert any("DPI" in n for n in notes) and tio.probe(tmp_path / "huge_again.png").dpi is None


def test_exif_values_that_cannot_be_written_again_are_dropped_one_by_one(tmp_path):
    exif = raw_exif([(0x010F, 2, 8, b"TestCam\x00"), (282, 2, 4, b"abc\x00"),
                     (274, 3, 1, b"\x01\x00")])
    src = tmp_path / "a.jpg"
    src.write_bytes(jpeg_with(exif))
    info = tio.probe(src)
    kept = Image.Exif()
    kept.load(info.exif)
    assert kept.get(0x010F) == "TestCam" and 282 not in kept and 274 not in kept
    assert any("dropped" in n for n in info.notes)


def test_tifffile_descriptions_are_not_copied(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "shaped.tif", (picture() * 255).astype(np.uint8),
                     photometric="rgb")  # tifffile writes {"shape": [24, 32, 3]}
    tifffile.imwrite(tmp_path / "imagej.tif", (picture()[..., 0] * 255).astype(np.uint8),
                     imagej=True)
    for name in ("shaped.tif", "imagej.tif"):
        pixels, info = tio.read_image(tmp_path / name)
        tio.write_image(tmp_path / f"out_{name}", pixels, exif=info.exif)
        with tifffile.TiffFile(tmp_path / f"out_{name}") as tif:
            description = tif.pages.first.tags.valueof(270)
            assert tif.pages.first.tags.valueof(305) == tio.software_name()
        assert description is None or "shape" not in description and "ImageJ" not in description
    a = np.zeros((5, 6, 3), np.float32)
    tio.write_image(tmp_path / "plain.tif", a, exif=exif_blob(t270="a real caption"))
    with tifffile.TiffFile(tmp_path / "plain.tif") as tif:
        assert tif.pages.first.tags.valueof(270) == "a real caption"


# --- 8b. seeded random damage ----------------------------------------------------------------

def seed_files() -> dict[str, bytes]:
    """Small valid files of every kind we read, with EXIF, ICC, alpha and 16 bits."""
    files = {}
    for ext, channels, depth in (("png", 4, 8), ("png", 3, 16), ("jpg", 3, 8), ("tif", 4, 16),
                                 ("tif", 1, 8), ("webp", 4, 8)):
        buffer = io.BytesIO()
        with contextlib.redirect_stdout(io.TextIOWrapper(buffer)) as stream:
            tio.write_image("-", picture(20, 28, channels), format=ext, bit_depth=depth,
                            icc_profile=SRGB, exif=exif_blob(t274=3), dpi=(150, 150))
            stream.flush()
        files[f"{ext}{channels}_{depth}"] = buffer.getvalue()
    files["png_i16"] = adam7_png16(np.arange(9 * 7 * 3, dtype=np.uint16).reshape(9, 7, 3) * 97)
    files["png_palette"] = _pillow_bytes(Image.new("P", (9, 7), 3), "PNG", transparency=3)
    files["jpg_progressive"] = _pillow_bytes(Image.fromarray((picture() * 255).astype(np.uint8)),
                                             "JPEG", progressive=True, exif=exif_blob())
    files["jpg_cmyk"] = _pillow_bytes(Image.new("CMYK", (9, 7), (0, 50, 200, 10)), "JPEG")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (picture(32, 32) * 65535).astype(np.uint16), photometric="rgb",
                     tile=(16, 16), compression="zlib")
    files["tif_tiled"] = buffer.getvalue()
    files["tif_ojpeg"] = old_style_jpeg_tiff()
    files["webp_lossless"] = _pillow_bytes(Image.fromarray((picture() * 255).astype(np.uint8)),
                                           "WEBP", lossless=True)
    return files


def _pillow_bytes(im: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random kind of damage: byte flips (often in the header), a cut, a duplicated or
    deleted slice, an extreme 32-bit value."""
    data = bytearray(data)
    op = rng.integers(5) if len(data) > 16 else 0
    if op == 0:
        span = 200 if rng.random() < 0.6 else len(data)
        for _ in range(rng.integers(1, 9)):
            data[rng.integers(min(span, len(data)))] ^= 1 << int(rng.integers(8))
    elif op == 1:
        data = data[: rng.integers(1, len(data))]
    elif op == 2:
        start = int(rng.integers(8, len(data)))
        piece = data[start: start + int(rng.integers(4, 200))]
        at = int(rng.integers(8, len(data)))
        data[at:at] = piece
    elif op == 3:
        start = int(rng.integers(8, len(data)))
        del data[start: start + int(rng.integers(1, 64))]
    else:
        at = int(rng.integers(0, max(1, len(data) - 4)))
        data[at: at + 4] = struct.pack("<I", int(rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 2**16])))
    return bytes(data)


def pillow_decodes(data: bytes) -> bool:
    try:
        with warnings_off(), Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 2**20:
                return False
            im.load()
        return True
    except Exception:  # noqa: BLE001 - Pillow's own verdict
        return False


@contextlib.contextmanager
def warnings_off():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def test_seeded_random_damage_is_read_or_refused_cleanly(tmp_path, capfd):
    rng = np.random.default_rng(20261201)
    cases = []
    for name, data in seed_files().items():
        for i in range(30):
            cases.append((f"{name}_{i}", mutate(data, rng)))
    verdicts = [pillow_decodes(data) for _, data in cases]
    flush_c_stdio()
    capfd.readouterr()  # Pillow's own libtiff chatter, outside tiledsr
    started, failures, read = time.monotonic(), [], 0
    for (name, data), pillow_ok in zip(cases, verdicts):
        path = tmp_path / name
        path.write_bytes(data)
        try:
            with watchdog(20):
                tio.probe(path, max_pixels=2**20)
                tio.read_image(path, max_pixels=2**20)
            read += 1
        except InputError as err:
            one_line(err)
            if pillow_ok:
                failures.append(f"{name}: Pillow decodes it but: {err}")
        except Exception as err:  # noqa: BLE001 - exactly what must not happen
            failures.append(f"{name}: {type(err).__name__}: {err}")
        path.unlink()
    flush_c_stdio()
    out, err = capfd.readouterr()
    assert not failures, "\n".join(failures[:20])
    assert (out, err) == ("", ""), (out[:500], err[:500])
    assert len(cases) >= 300 and read > len(cases) // 5
    assert time.monotonic() - started < 60


# --- 9. tiledsr's own outputs are marked ----------------------------------------------------

@pytest.mark.parametrize("ext", EXTS)
def test_outputs_carry_the_software_marker_and_probe_reads_it(tmp_path, ext):
    assert re.fullmatch(r"tiledsr \S+", tio.software_name())
    tio.write_image(tmp_path / f"a.{ext}", picture(), exif=exif_blob(t305="GIMP 2.10"))
    tio.write_image(tmp_path / f"b.{ext}", picture())
    for name in ("a", "b"):
        info = tio.probe(tmp_path / f"{name}.{ext}")
        assert info.software == tio.software_name()
        assert tio.read_image(tmp_path / f"{name}.{ext}")[1].software == info.software
    im = Image.fromarray((picture() * 255).astype(np.uint8))
    foreign = tmp_path / f"foreign.{ext}"
    im.save(foreign, tio.output_format(foreign, None))
    assert tio.probe(foreign).software is None
    exif = Image.Exif()
    exif[0x0131] = "GIMP 2.10"
    im.save(tmp_path / f"gimp.{ext}", tio.output_format(foreign, None), exif=exif.tobytes())
    assert tio.probe(tmp_path / f"gimp.{ext}").software == "GIMP 2.10"
