"""Hostile model specs, files and memory limits (issue 7, defects 12, 13 and 15).

Classes covered:
- model specs and files (defect 13): every spec or file content raises exactly the expected
  TiledsrError subclass, with one line: a model file that is not valid is InputError (2), an
  unknown name is InputError (2) naming the bundled models, and only what cannot be obtained
  (a missing file, a package, a URL offline) is ModelNotAvailable (3);
- out of memory (defect 12): an allocation failure in any backend is OutOfMemory (4) with one
  line, and ncnn's own C++ output never reaches stderr;
- runners called from a worker thread (defect 15) give the same result as from the main one.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tiledsr.errors import InputError, ModelNotAvailable, OutOfMemory, TiledsrError, as_out_of_memory
from tiledsr.models import load_sr_model, make_runner
from tiledsr.models.srvgg import SRVGGNetCompact

try:
    import ncnn  # noqa: F401

    HAVE_NCNN = True
except ImportError:
    HAVE_NCNN = False
needs_ncnn = pytest.mark.skipif(not HAVE_NCNN, reason="ncnn not installed (pip install tiledsr[ncnn])")

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4
RANDOM = np.random.default_rng(7).bytes(4096)


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SRVGGNetCompact(num_feat=8, num_conv=2, upscale=4).state_dict()


def _safetensors(path: Path) -> bytes:
    save_file(_state(), path)
    return path.read_bytes()


def _torch_bytes(path: Path, obj: object, legacy: bool = False) -> bytes:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


class _Code:
    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


def _bundled_pair(tmp: Path, stem: str = "net") -> tuple[Path, Path]:
    param, bin_ = load_sr_model("animevideov3").ncnn_files
    return Path(shutil.copy(param, tmp / f"{stem}.param")), Path(shutil.copy(bin_, tmp / f"{stem}.bin"))


def _write(name: str, data: bytes | Callable[[Path], bytes]) -> Callable[[Path], str]:
    """A case that writes ``data`` (or ``data(scratch path)``) to tmp/name and returns its path."""
    def make(tmp: Path) -> str:
        path = tmp / name
        path.write_bytes(data(tmp / "scratch") if callable(data) else data)
        return str(path)
    return make


def _param(edit: Callable[[str], str], bin_edit: Callable[[bytes], bytes] | None = None) -> Callable[[Path], str]:
    """A case: the animevideov3 pair with its .param text (and optionally its .bin) edited."""
    def make(tmp: Path) -> str:
        param, bin_ = _bundled_pair(tmp)
        param.write_text(edit(param.read_text()))
        if bin_edit is not None:
            bin_.write_bytes(bin_edit(bin_.read_bytes()))
        return str(param)
    return make


def _folder(name: str) -> Callable[[Path], str]:
    def make(tmp: Path) -> str:
        (tmp / name).mkdir()
        return str(tmp / name)
    return make


def _spec(value: object) -> Callable[[Path], object]:
    return lambda tmp: value


def _zip_not_torch(tmp: Path) -> bytes:
    with zipfile.ZipFile(tmp, "w") as archive:
        archive.writestr("archive/readme.txt", "hello")
    return tmp.read_bytes()


def _bogus_header(tmp: Path) -> bytes:
    return struct.pack("<Q", 2**60) + b'{"a": 1}' + bytes(64)


def _garbage_header(tmp: Path) -> bytes:
    return struct.pack("<Q", 16) + b"{not json at all" + bytes(64)


def _bin_missing(tmp: Path) -> str:
    param, bin_ = _bundled_pair(tmp)
    bin_.unlink()
    return str(param)


def _bin_folder(tmp: Path) -> str:
    param, bin_ = _bundled_pair(tmp)
    bin_.unlink()
    bin_.mkdir()
    return str(param)


def _bin_itself(tmp: Path) -> str:
    return str(_bundled_pair(tmp)[1])


def _replace_first(old: str, new: str) -> Callable[[str], str]:
    return lambda text: text.replace(old, new, 1)


def _cut_lines(keep: int) -> Callable[[str], str]:
    return lambda text: "\n".join(text.split("\n")[:keep]) + "\n"


IE, MNA = InputError, ModelNotAvailable
CASES: list[tuple[str, Callable[[Path], object], type[TiledsrError], str]] = [
    # random bytes, empty files and images under a model suffix
    *[(f"random{s}", _write(f"random{s}", RANDOM), IE, "is not a PyTorch or safetensors")
      for s in (".pth", ".pt", ".ckpt", ".safetensors")],
    *[(f"empty{s}", _write(f"empty{s}", b""), IE, "is empty") for s in (".pth", ".pt", ".ckpt", ".safetensors")],
    *[(f"png{s}", _write(f"image{s}", PNG), IE, "is a PNG image, not a PyTorch")
      for s in (".pth", ".pt", ".ckpt", ".safetensors")],
    *[(f"jpeg{s}", _write(f"image{s}", JPEG), IE, "is a JPEG image, not a PyTorch")
      for s in (".pth", ".pt", ".ckpt", ".safetensors")],
    ("random.param", _write("random.param", RANDOM), IE, "text ncnn .param"),
    ("empty.param", _write("empty.param", b""), IE, "text ncnn .param"),
    ("png.param", _write("image.param", PNG), IE, "text ncnn .param"),
    ("jpeg.param", _write("image.param", JPEG), IE, "text ncnn .param"),
    # broken safetensors
    ("truncated safetensors", _write("cut.safetensors", lambda p: _safetensors(p)[:300]), IE,
     "truncated or not safetensors|not a valid safetensors"),
    ("safetensors data cut", _write("cut.safetensors", lambda p: _safetensors(p)[:-40]), IE,
     "not a valid safetensors"),
    ("bogus header length", _write("bogus.safetensors", _bogus_header), IE, "header claims"),
    ("garbage header", _write("garbage.safetensors", _garbage_header), IE, "not a valid safetensors"),
    # broken or unsuitable torch files
    ("zip not torch", _write("archive.pth", _zip_not_torch), IE, "not a valid PyTorch weights file"),
    ("truncated torch zip", _write("cut.pth", lambda p: _torch_bytes(p, _state())[:500]), IE,
     "not a valid PyTorch weights file"),
    ("truncated legacy torch", _write("cut.pt", lambda p: _torch_bytes(p, _state(), legacy=True)[:300]), IE,
     "not a valid PyTorch weights file"),
    ("plain pickle", _write("list.ckpt", pickle.dumps([1, 2, 3], protocol=4)), IE, "not a valid PyTorch"),
    ("needs code", _write("code.pth", lambda p: _torch_bytes(p, {"w": _Code()})), IE, "needs code to be unpickled"),
    ("not tensors", _write("ints.pth", lambda p: _torch_bytes(p, {"a": 1})), IE, "state dict of tensors"),
    ("empty dict", _write("none.pth", lambda p: _torch_bytes(p, {})), IE, "state dict of tensors"),
    ("int keys", _write("keys.pth", lambda p: _torch_bytes(p, {1: torch.zeros(2)})), IE, "state dict of tensors"),
    ("odd shapes", _write("odd.pth", lambda p: _torch_bytes(p, {"conv_first.weight": torch.zeros(3),
                                                               "conv_last.weight": torch.zeros(3),
                                                               "body.0.rdb1.conv1.weight": torch.zeros(3)})),
     MNA, "unrecognised architecture.*pip install spandrel"),
    ("safetensors named .pth", _write("real.pth", lambda p: _safetensors(p)), None, ""),
    # broken ncnn pairs
    ("param garbage lines", _write("garbage.param", b"7767517\n3 3\nthis is not\na layer\n!!\n"), IE,
     "cannot parse layer line|declares"),
    ("param cut", _param(_cut_lines(20)), IE, "declares"),
    ("param value not a number", _param(_replace_first("0=64", "0=abc")), IE, "does not fit"),
    ("param zero outputs", _param(_replace_first("0=64", "0=0")), IE, "does not fit|weights for 0 outputs"),
    ("param odd weight count", _param(_replace_first("6=1728", "6=1729")), IE, "not a multiple of 9"),
    ("param unknown layer", _param(_replace_first("PReLU", "Frobnicate")), IE, "unsupported ncnn layer types"),
    ("bin truncated", _param(lambda t: t, lambda b: b[:-4]), IE, "truncated"),
    ("bin too long", _param(lambda t: t, lambda b: b + b"\0\0\0\0"), IE, "do not match"),
    ("bin missing", _bin_missing, MNA, "do not exist"),
    ("bin is a folder", _bin_folder, IE, "not a file"),
    ("bin given", _bin_itself, IE, "pass the .param"),
    # folders and other formats
    *[(f"folder {s}", _folder(f"x{s}"), IE, "is a folder") for s in (".pth", ".safetensors", ".param")],
    ("onnx file", _write("model.onnx", RANDOM), IE, "unsupported model format '.onnx'"),
    ("png file", _write("photo.png", PNG), IE, "unsupported model format '.png'"),
    ("no suffix file", _write("weights", RANDOM), IE, "unsupported model format"),
    # names
    ("unknown name", _spec("nosuchmodel"), IE, "unknown model 'nosuchmodel'.*bundled models: x4plus"),
    ("near name", _spec("x4plu"), IE, "did you mean 'x4plus'"),
    ("near alias", _spec("RealESRGAN_x4plus_anim"), IE, "did you mean 'realesrgan-x4plus-anime'"),
    ("empty name", _spec(""), IE, "empty"),
    ("blank name", _spec("   "), IE, "empty"),
    ("newline name", _spec("x4\nplus"), IE, "unknown model"),
    ("nul byte", _spec("net\0.pth"), IE, "cannot use"),
    ("too long", _spec("a" * 5000), IE, "cannot use|unknown model"),
    ("too long .pth", _spec("a" * 400 + ".pth"), IE, "cannot use"),
    ("not a string", _spec(42), IE, "name or a file path, got int"),
    ("none", _spec(None), IE, "name or a file path, got NoneType"),
    # paths with separators and URLs
    ("missing file", _spec("missing/net.pth"), MNA, "does not exist"),
    ("missing nested", _spec("no/such/model"), MNA, "does not exist"),
    ("hub repo id", _spec("owner/repo"), MNA, "does not exist"),
    ("dot path", _spec("./nosuch"), MNA, "does not exist"),
    ("traversal", _spec("../../../../../../etc/passwd"), IE, "unsupported model format"),
    ("root folder", _spec("/"), IE, "is a folder"),
    ("hub url", _spec("https://huggingface.co/x/y/resolve/main/RealESRGAN_x4plus.pth"), MNA, "offline"),
    ("hf url", _spec("hf://owner/repo/net.safetensors"), MNA, "offline"),
]


@pytest.mark.parametrize(("make", "expected", "phrase"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_model_specs_raise_one_line_of_the_right_class(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       make, expected, phrase: str) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)  # the same answer with or without spandrel
    spec = make(tmp_path)
    start = time.perf_counter()
    if expected is None:
        load_sr_model(spec)  # content decides the format, not the suffix
        return
    with pytest.raises(TiledsrError) as info:
        load_sr_model(spec)
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    assert __import__("re").search(phrase, message), message
    assert time.perf_counter() - start < 2


def test_exit_codes_of_the_classes() -> None:
    assert (InputError.exit_code, ModelNotAvailable.exit_code, OutOfMemory.exit_code) == (2, 3, 4)


@needs_ncnn
def test_ncnn_loader_messages_never_reach_stderr(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.param").write_text("7767517\n2 2\nInput data 0 1 data\nFoo bar 1 1 data output\n")
    (tmp_path / "bad.bin").write_bytes(RANDOM)
    model = dataclasses.replace(load_sr_model("animevideov3"),
                                ncnn_files=(tmp_path / "bad.param", tmp_path / "bad.bin"))
    capfd.readouterr()
    with pytest.raises(InputError, match="ncnn could not load .*bad.param") as info:
        make_runner(model, backend="ncnn")
    assert capfd.readouterr().err == ""
    assert any("not exists or registered" in note for note in getattr(info.value, "__notes__", []))


# --- out of memory ---------------------------------------------------------------------


def _real_torch_oom() -> RuntimeError:
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("torch allocated 4 EiB")


def _real_numpy_oom() -> MemoryError:
    try:
        np.empty(2**62, dtype=np.uint8)
    except MemoryError as exc:
        return exc
    raise AssertionError("numpy allocated 4 EiB")


@pytest.mark.parametrize(("exc", "is_oom"), [
    (_real_torch_oom(), True),
    (_real_numpy_oom(), True),
    (MemoryError(), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: not enough memory: you tried"), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
    (OutOfMemory("out of memory in x; try a smaller --tile"), True),
    (RuntimeError("Given groups=1, weight of size [64, 3, 3, 3], expected input"), False),
    (ValueError("out of memory"), False),
    (OSError(errno.ENOENT, "No such file"), False),
    (KeyError("memory"), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_as_out_of_memory_recognises_allocation_failures(exc: BaseException, is_oom: bool) -> None:
    oom = as_out_of_memory(exc, "x4plus (torch) on a 512x512-pixel input tile")
    assert (oom is not None) == is_oom
    if oom is not None and not isinstance(exc, OutOfMemory):
        assert type(oom) is OutOfMemory and oom.exit_code == 4
        assert str(oom) == "out of memory in x4plus (torch) on a 512x512-pixel input tile; try a smaller --tile"


@pytest.mark.parametrize("failure", [_real_torch_oom, _real_numpy_oom,
                                     lambda: torch.OutOfMemoryError("CUDA out of memory.")])
def test_torch_runner_turns_allocation_failures_into_out_of_memory(monkeypatch: pytest.MonkeyPatch,
                                                                    failure) -> None:
    runner = make_runner(load_sr_model("animevideov3"), backend="torch")

    def forward(x: torch.Tensor) -> torch.Tensor:
        raise failure()

    monkeypatch.setattr(runner, "module", forward)
    with pytest.raises(OutOfMemory, match=r"^out of memory in animevideov3 \(torch, cpu\) on a "
                                          r"24x16-pixel input tile; try a smaller --tile$"):
        runner(np.zeros((1, 3, 24, 16), np.float32))


_LIMITED = textwrap.dedent("""
    import json, os, resource, sys
    import numpy as np
    from tiledsr.errors import OutOfMemory
    from tiledsr.models import load_sr_model, make_runner
    name, backend, side = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = make_runner(load_sr_model(name), backend=backend, threads=2)
    small = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    run(small)  # warm: threads and pools exist before the limit
    with open("/proc/self/statm") as f:
        vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (vsize + 200 * 2**20, resource.RLIM_INFINITY))
    report = {}
    try:
        run(np.zeros((1, 3, side, side), np.float32))
    except OutOfMemory as exc:
        report["oom"] = str(exc)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    report["after"] = list(run(small).shape)  # the runner still works once memory is back
    print(json.dumps(report))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux")
@pytest.mark.parametrize(("name", "backend", "side"), [
    pytest.param("x4plus", "ncnn", 256, marks=needs_ncnn),
    ("animevideov3", "torch", 1024),
])
def test_out_of_memory_under_an_address_space_limit(name: str, backend: str, side: int) -> None:
    done = subprocess.run([sys.executable, "-c", _LIMITED, name, backend, str(side)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""  # nothing from ncnn ("pool allocator destroyed too early") or torch
    report = json.loads(done.stdout)
    assert report["oom"] == (f"out of memory in {name} ({backend}{', cpu' if backend == 'torch' else ''}) "
                             f"on a {side}x{side}-pixel input tile; try a smaller --tile")
    assert report["after"] == [1, 3, 64, 64]


# --- worker threads --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", pytest.param("ncnn", marks=needs_ncnn)])
def test_runner_called_from_a_worker_thread(backend: str) -> None:
    runner = make_runner(load_sr_model("animevideov3"), backend=backend, threads=2)
    x = np.random.default_rng(1).random((2, 3, 24, 20), dtype=np.float32)
    expected = runner(x)
    results: list[np.ndarray] = []
    grad_enabled: list[bool] = []

    def work() -> None:
        grad_enabled.append(torch.is_grad_enabled())
        results.append(runner(x))

    workers = [threading.Thread(target=work) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert grad_enabled == [True, True]  # a fresh thread: the runner must enter inference mode itself
    assert len(results) == 2 and all(np.array_equal(r, expected) for r in results)
