"""Measured backend choice: ``tiledsr models --measure`` times the CPU backends, ``auto`` follows it."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tiledsr.cli import main
from tiledsr.models import load_sr_model, make_runner
from tiledsr.models import runner as runner_module
from tiledsr.models.measure import cache_file, measure_backends, measured_choice, save_measurement
from tiledsr.models.runner import CPU_PREFERENCE, cannot_run, choose_backend

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test has its own empty user cache."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def all_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backend counts as installed (the choice only is tested, nothing is built)."""
    monkeypatch.setattr(runner_module, "_installed", lambda package: sys.modules.get(package, True) is not None)


@pytest.fixture
def model():
    return load_sr_model("animevideov3")


def test_measure_backends_times_every_installed_backend(model, cache: Path) -> None:
    seconds = measure_backends(model, size=32, repeats=1)
    expected = {name for name in CPU_PREFERENCE if cannot_run(model, name, "fp32") is None}
    assert "torch" in expected and set(seconds) == expected
    assert all(t > 0 for t in seconds.values())
    assert list(seconds.values()) == sorted(seconds.values())  # fastest first
    assert not cache_file().exists()  # measuring alone saves nothing


def test_auto_follows_a_saved_measurement(model, cache: Path) -> None:
    assert save_measurement(model, {"openvino": 1.0, "ncnn": 0.9, "torch": 0.1}, 96)
    entry = next(iter(json.loads(cache_file().read_text()).values()))
    assert entry["seconds"]["torch"] == 0.1 and entry["size"] == 96 and entry["date"][:2] == "20"
    backend, why = choose_backend(model, "cpu")
    assert backend == "torch" and why.startswith("measured fastest on this CPU: torch 0.10 s")
    assert why.endswith("per 96 px tile")
    assert make_runner(model).backend == "torch"
    assert choose_backend(model, "cuda")[0] == "torch"
    assert measured_choice(model, threads=1) is None  # another thread count is another machine
    assert measured_choice(load_sr_model("x4plus")) is None  # and another model another entry


def test_a_backend_within_five_percent_earlier_in_the_order_wins(model, all_installed) -> None:
    save_measurement(model, {"openvino": 1.04, "ncnn": 1.0, "torch": 1.2}, 96)
    backend, why = measured_choice(model)
    assert backend == "openvino" and "within 5% of the fastest" in why
    save_measurement(model, {"openvino": 1.06, "ncnn": 1.0, "torch": 1.2}, 96)
    assert measured_choice(model) == ("ncnn", "measured fastest on this CPU: ncnn 1.00 s, openvino 1.06 s, "
                                      "torch 1.20 s per 96 px tile")


def test_a_measured_winner_no_longer_installed_gives_way(model, all_installed,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    save_measurement(model, {"openvino": 0.1, "torch": 0.5, "ncnn": 0.9}, 96)
    assert measured_choice(model)[0] == "openvino"
    monkeypatch.setitem(sys.modules, "openvino", None)
    backend, why = choose_backend(model, "cpu")
    assert backend == "torch" and "openvino" not in why


def test_fp16_skips_openvino(model, all_installed) -> None:
    save_measurement(model, {"openvino": 0.1, "ncnn": 0.5, "torch": 0.9}, 96)
    assert choose_backend(model, "cpu", "fp32")[0] == "openvino"
    assert choose_backend(model, "cpu", "fp16")[0] == "ncnn"


def test_without_a_measurement_auto_keeps_the_benchmark_order(model, all_installed, cache: Path) -> None:
    assert choose_backend(model, "cpu") == ("openvino", "the fastest on the CPU in tiledsr's benchmark; "
                                            "`tiledsr models --measure` times them on this machine")
    assert not cache.exists()  # choosing never measures nor writes


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"x": 1}', "\xff\xfe", ""])
def test_a_damaged_cache_file_is_ignored(model, all_installed, cache: Path, text: str) -> None:
    cache.mkdir()
    cache_file().write_bytes(text.encode("latin-1"))
    assert measured_choice(model) is None
    assert choose_backend(model, "cpu")[0] == "openvino"
    assert save_measurement(model, {"torch": 0.2}, 96)  # and replaced by the next measurement
    assert measured_choice(model)[0] == "torch"


def test_a_damaged_entry_is_ignored(model, cache: Path) -> None:
    save_measurement(model, {"torch": 0.2}, 96)
    data = json.loads(cache_file().read_text())
    for bad in ({"seconds": "fast", "size": 96}, {"seconds": {"torch": "x"}, "size": 96}, {"size": 96}, []):
        cache_file().write_text(json.dumps({key: bad for key in data}))
        assert measured_choice(model) is None


def test_an_unwritable_cache_folder_is_skipped(model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TILEDSR_CACHE_DIR", str(blocker / "cache"))
    assert save_measurement(model, {"torch": 0.1}, 96) is False
    assert measured_choice(model) is None
    assert choose_backend(model, "cpu")[0] in CPU_PREFERENCE


def test_cli_measure_prints_the_times_and_saves_them(model, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--measure", "realesr-animevideov3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert re.fullmatch(r"animevideov3: (\w+ \d+\.\d\d s, )*\w+ \d+\.\d\d s per 96 px tile -> auto picks \w+", out[0])
    assert "torch" in out[0]
    saved = json.loads(cache_file().read_text())
    assert len(saved) == 1 and set(next(iter(saved.values()))["seconds"]) <= set(CPU_PREFERENCE)
    backend, why = choose_backend(model, "cpu")
    assert out[0].endswith(f"auto picks {backend}") and why.startswith("measured")


def test_cli_measure_an_unknown_model_is_an_input_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--measure", "animevideov3", "x5plus"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and "unknown model 'x5plus'" in lines[0] and "animevideov3" in lines[0]
    assert not cache_file().exists()
