"""Tests for tiledsr.faults: TILEDSR_FAIL_OOM and the out-of-memory errors it injects."""
from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch

from tiledsr import faults
from tiledsr.errors import OutOfMemory, as_out_of_memory, is_out_of_memory
from tiledsr.faults import failures_asked, maybe_fail_oom, oom_error, should_fail
from tiledsr.models import load_sr_model, make_runner

try:
    import ncnn  # noqa: F401

    HAVE_NCNN = True
except ImportError:
    HAVE_NCNN = False
needs_ncnn = pytest.mark.skipif(not HAVE_NCNN, reason="ncnn not installed (pip install tiledsr[ncnn])")


@pytest.fixture(autouse=True)
def _no_injection(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    faults.reset()
    yield
    faults.reset()


def _real_cpu_oom() -> RuntimeError:
    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        return exc
    raise AssertionError("torch allocated 4 EiB")


# --- the variable ----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "asked"), [
    (None, 0), ("", 0), ("0", 0), ("1", 1), ("2", 2), (" 3 ", 3), ("all", -1), ("ALL", -1),
    ("-1", -1), ("-2", 0), ("1.5", 0), ("2x", 0), ("yes", 0), ("٣", 0), ("1_0", 0), ("+1", 0),
    ("9" * 40, int("9" * 40)),
])
def test_the_variable_is_parsed_and_garbage_is_ignored(monkeypatch: pytest.MonkeyPatch,
                                                       value: str | None, asked: int) -> None:
    if value is not None:
        monkeypatch.setenv(faults.ENV, value)
    assert failures_asked() == asked


@pytest.mark.parametrize(("value", "pattern"), [
    ("2", [True, True, False, False, False]), ("all", [True] * 5), ("-1", [True] * 5),
    ("0", [False] * 5), ("", [False] * 5), ("lots", [False] * 5),
])
def test_the_first_n_calls_fail(monkeypatch: pytest.MonkeyPatch, value: str, pattern: list[bool]) -> None:
    monkeypatch.setenv(faults.ENV, value)
    assert [should_fail() for _ in pattern] == pattern


def test_the_variable_is_read_at_each_call_and_reset_starts_again(monkeypatch: pytest.MonkeyPatch) -> None:
    assert should_fail() is False  # unset: not counted
    monkeypatch.setenv(faults.ENV, "1")
    assert (should_fail(), should_fail()) == (True, False)
    monkeypatch.delenv(faults.ENV)
    assert should_fail() is False
    monkeypatch.setenv(faults.ENV, "3")
    assert (should_fail(), should_fail()) == (True, False)  # calls 3 and 4 of the count
    faults.reset()
    assert (should_fail(), should_fail(), should_fail(), should_fail()) == (True, True, True, False)


def test_the_count_is_shared_by_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "50")
    start = threading.Barrier(8)
    results: list[bool] = []

    def work() -> None:
        start.wait()
        mine = [should_fail() for _ in range(200)]
        results.extend(mine)  # list.extend is atomic

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 1600 and sum(results) == 50


def test_maybe_fail_oom_raises_for_the_first_n_calls_only(monkeypatch: pytest.MonkeyPatch) -> None:
    maybe_fail_oom("torch")  # unset: nothing
    monkeypatch.setenv(faults.ENV, "1")
    with pytest.raises(RuntimeError, match="DefaultCPUAllocator"):
        maybe_fail_oom("torch", "cpu", 123)
    maybe_fail_oom("torch", "cpu", 123)


# --- what is raised --------------------------------------------------------------------


def test_cpu_failure_is_what_torchs_cpu_allocator_raises() -> None:
    real = _real_cpu_oom()
    injected = oom_error("torch", "cpu", 123456)
    assert type(injected) is type(real) is RuntimeError
    assert str(injected) == re.sub(r"allocate \d+ bytes", "allocate 123456 bytes", str(real))
    assert str(injected).startswith("[enforce fail at alloc_cpu.cpp:")
    assert str(oom_error("torch")).count(f"allocate {2 << 30} bytes") == 1  # 0 bytes: 2 GiB


def test_cuda_failure_is_cudas_out_of_memory_error() -> None:
    for device, index in (("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)):
        injected = oom_error("torch", device, 3 << 29)
        assert type(injected) is torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
        assert isinstance(injected, RuntimeError)
        assert str(injected).startswith(f"CUDA out of memory. Tried to allocate 1.50 GiB. GPU {index} "
                                        "has a total capacity of ")
        assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in str(injected)
    assert "Tried to allocate 2.00 GiB." in str(oom_error("torch", "cuda"))


def test_mps_and_other_failures() -> None:
    mps = oom_error("torch", "mps", 5 << 20)
    assert type(mps) is RuntimeError
    assert re.fullmatch(r"MPS backend out of memory \(MPS allocated: .+, other allocations: .+, max "
                        r"allowed: .+\)\. Tried to allocate 5\.00 MiB on private pool\. Use "
                        r"PYTORCH_MPS_HIGH_WATERMARK_RATIO=0\.0 to disable upper limit for memory "
                        r"allocations \(may cause system failure\)\.", str(mps))
    xpu = oom_error("torch", "xpu:1", 512)
    assert type(xpu) is torch.OutOfMemoryError
    assert str(xpu) == "XPU out of memory. Tried to allocate 512 bytes."
    assert type(oom_error("onnx")) is MemoryError


@pytest.mark.parametrize(("nbytes", "text"), [
    (0, "0 bytes"), (1024, "1024 bytes"), (1536, "1.50 KiB"), (1 << 20, "1024.00 KiB"),
    ((1 << 20) + 1, "1.00 MiB"), (1 << 30, "1024.00 MiB"), (5 << 30, "5.00 GiB"),
])
def test_sizes_are_printed_as_torch_prints_them(nbytes: int, text: str) -> None:
    assert faults._size(nbytes) == text


@pytest.mark.parametrize(("exc", "is_oom"), [
    (_real_cpu_oom(), True),
    (oom_error("torch", "cpu"), True),
    (oom_error("torch", "cuda:1"), True),
    (oom_error("torch", "mps"), True),
    (oom_error("torch", "xpu"), True),
    (oom_error("ncnn"), True),
    (torch.OutOfMemoryError("anything"), True),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:72] data. DefaultCPUAllocator: not enough memory: "
                  "you tried to allocate 4096 bytes."), True),  # the Windows form
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), True),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
    (RuntimeError("std::bad_alloc"), True),
    (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
    (OutOfMemory("out of memory in x; try a smaller --tile"), True),
    (RuntimeError("Given groups=1, weight of size [64, 3, 3, 3], expected input[1, 4, 16, 16] to have "
                  "3 channels, but got 4 channels instead"), False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (16x3 and 4x4)"), False),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
    (ValueError("out of memory"), False),
    (OSError(errno.ENOENT, "No such file"), False),
    (KeyboardInterrupt(), False),
], ids=lambda v: type(v).__name__)
def test_is_out_of_memory(exc: BaseException, is_oom: bool) -> None:
    assert is_out_of_memory(exc) is is_oom
    assert (as_out_of_memory(exc, "x") is not None) is is_oom


# --- through the real runners ----------------------------------------------------------


def _tiles(n: int = 1) -> np.ndarray:
    return np.random.default_rng(7).random((n, 3, 16, 16), dtype=np.float32)


@pytest.mark.parametrize("backend", ["torch", pytest.param("ncnn", marks=needs_ncnn)])
def test_runner_fails_twice_then_gives_the_same_output(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    runner = make_runner(load_sr_model("animevideov3"), backend=backend, threads=2)
    x = _tiles()
    clean = runner(x)
    monkeypatch.setenv(faults.ENV, "2")
    where = "torch, cpu" if backend == "torch" else "ncnn"
    for _ in range(2):
        with pytest.raises(OutOfMemory) as info:
            runner(x)
        assert info.value.exit_code == 4
        assert str(info.value) == (f"out of memory in animevideov3 ({where}) on a 16x16-pixel input "
                                   "tile; try a smaller --tile")
        cause = info.value.__cause__  # torch: the allocator's error; ncnn: its status, no exception
        assert type(cause) is (RuntimeError if backend == "torch" else type(None))
    out = runner(x)
    assert out.shape == (1, 3, 64, 64) and np.array_equal(out, clean)


@pytest.mark.parametrize("backend", ["torch", pytest.param("ncnn", marks=needs_ncnn)])
def test_a_batch_is_one_call_and_bad_input_is_not_counted(monkeypatch: pytest.MonkeyPatch,
                                                          backend: str) -> None:
    runner = make_runner(load_sr_model("animevideov3"), backend=backend, threads=2)
    x = _tiles(3)
    clean = runner(x)
    monkeypatch.setenv(faults.ENV, "1")
    with pytest.raises(Exception, match="expects an N x 3 x h x w batch"):
        runner(np.zeros((1, 4, 16, 16), np.float32))
    with pytest.raises(OutOfMemory, match="on 3 16x16-pixel input tiles" if backend == "torch"
                       else "on a 16x16-pixel input tile"):
        runner(x)
    assert np.array_equal(runner(x), clean)


def test_torch_cause_names_the_bytes_of_the_output(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = make_runner(load_sr_model("animevideov3"), backend="torch")
    monkeypatch.setenv(faults.ENV, "all")
    for _ in range(3):
        with pytest.raises(OutOfMemory) as info:
            runner(_tiles(2))
    assert f"you tried to allocate {2 * 3 * 64 * 64 * 4} bytes" in str(info.value.__cause__)


_PROCESS = textwrap.dedent("""
    import numpy as np
    from tiledsr.errors import OutOfMemory
    from tiledsr.models import load_sr_model, make_runner
    run = make_runner(load_sr_model("animevideov3"), backend="torch")
    x = np.zeros((1, 3, 16, 16), np.float32)
    for _ in range(3):
        try:
            print(run(x).shape)
        except OutOfMemory as exc:
            print(exc.exit_code, type(exc.__cause__).__name__)
""")


def test_the_first_calls_of_a_process_fail() -> None:
    env = {**os.environ, faults.ENV: "2"}
    done = subprocess.run([sys.executable, "-c", _PROCESS], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["4 RuntimeError", "4 RuntimeError", "(1, 3, 64, 64)"]
