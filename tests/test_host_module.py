"""Host integrations (examples/): the shared tiledsr_host module, the shell example, the
installer, and what can be checked of the GIMP and Krita plug-ins without those hosts.

Most tests drive ``tiledsr_host.run`` with a fake tiledsr (a tiny Python script that prints
given stderr lines and exits with a given code); a few run the real CLI on tiny images with
``--preset lanczos`` (one uses fast-x4 with small tiles, to have something slow enough to cancel).
"""
import ast
import importlib.util
import json
import os
import py_compile
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HOSTS = EXAMPLES / "hosts"
SHELL = EXAMPLES / "shell" / "upscale-folder.sh"
KRITA = EXAMPLES / "krita"
GIMP = EXAMPLES / "gimp" / "tiledsr-upscale" / "tiledsr-upscale.py"
_script = Path(sys.executable).with_name("tiledsr")
TILEDSR = [str(_script)] if _script.exists() else [sys.executable, "-m", "tiledsr"]
POSIX = os.name == "posix"


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


host = _load("tiledsr_host", HOSTS / "tiledsr_host.py")


def fake_tiledsr(tmp_path, lines, code=0, sleep=0.0, trap_sigint=False, ignore_sigint=False, touch=None):
    """A stand-in tiledsr: writes ``lines`` to stderr, maybe sleeps, exits ``code``."""
    script = tmp_path / "fake_tiledsr.py"
    script.write_text(textwrap.dedent(f"""
        import signal, sys, time
        if {ignore_sigint!r}:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        elif {trap_sigint!r}:
            def stop(*a):
                sys.stderr.write('{{"event": "error", "message": "interrupted (SIGINT); its finished work is kept: '
                                 'rerun the same command with --resume to continue", "code": 130}}\\n')
                sys.stderr.flush()
                sys.exit(130)
            signal.signal(signal.SIGINT, stop)
        for line in {list(lines)!r}:
            sys.stderr.write(line + "\\n")
            sys.stderr.flush()
        if {touch!r}:
            open({touch!r}, "wb").close()
        deadline = time.time() + {sleep!r}
        while time.time() < deadline:
            time.sleep(0.02)
        sys.exit({code!r})
    """))
    return [sys.executable, str(script)]


def ev(**fields):
    return json.dumps(fields)


def tiny_png(path, size=(24, 16), mode="RGB"):
    Image.new(mode, size, (200, 40, 30, 180)[: len(mode)]).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Command line

def test_every_option_goes_on_the_command_line():
    o = host.Options("in.png", "out.tif", preset="photo-x4", scale=4, format="TIFF", overwrite=True,
                     sets=["sr.model=x4plus-anime", "tile=512"], preview="live.jpg", preview_every=0.5,
                     resume=True, extra_args=["--device", "cpu"])
    assert host.build_command(o, executable=["tiledsr"]) == [
        "tiledsr", "upscale", "in.png", "--output=out.tif", "--preset=photo-x4", "--progress=json", "--scale=4",
        "--format=tiff", "--set=sr.model=x4plus-anime", "--set=tile=512", "--overwrite", "--resume",
        "--preview=live.jpg", "--preview-every=0.5", "--device", "cpu"]


@pytest.mark.parametrize("kwargs, expected", [
    ({"scale": 2.5}, ["--scale=2.5"]),
    ({"width": 4096}, ["--width=4096"]),
    ({"width": 400, "height": 300}, ["--width=400", "--height=300"]),
    ({"print_size": " 24x36in@300 "}, ["--print=24x36in@300"]),
    ({}, []),
])
def test_targets(kwargs, expected):
    argv = host.build_command(host.Options("a.png", "b.png", **kwargs), executable=["t"])
    assert argv[6:] == expected


def test_paths_with_spaces_unicode_and_dashes_stay_single_arguments():
    o = host.Options("my photos/été 1.png", "-out put.png", preview="-live.jpg")
    argv = host.build_command(o, executable=["/opt/my apps/tiledsr"])
    assert argv[0] == "/opt/my apps/tiledsr"
    assert argv[2] == "my photos/été 1.png"
    assert argv[3] == "--output=" + os.path.join(os.curdir, "-out put.png")
    assert "--preview=" + os.path.join(os.curdir, "-live.jpg") in argv
    assert host.build_command(host.Options("-", "-"), executable=["t"])[2:4] == ["-", "--output=-"]
    assert host.build_command(host.Options("-in.png", "o.png"), executable=["t"])[2] == os.path.join(".", "-in.png")


@pytest.mark.parametrize("kwargs, words", [
    ({"scale": 2, "print_size": "24x36in@300"}, "scale and print_size"),
    ({"scale": 2, "width": 100}, "scale and width/height"),
    ({"print_size": "24x36in@300", "height": 100}, "print_size and width/height"),
    ({"scale": 0}, "scale: expected a positive"),
    ({"scale": -2}, "scale: expected a positive"),
    ({"scale": float("inf")}, "scale: expected a positive"),
    ({"width": 0}, "width: expected a whole number"),
    ({"height": 2.5}, "height: expected a whole number"),
    ({"width": True}, "width: expected a whole number"),
    ({"print_size": "24x36@300"}, "print_size: expected"),
    ({"print_size": "big"}, "print_size: expected"),
    ({"format": "gif"}, "format: expected one of png, jpeg, tiff, webp"),
    ({"sets": ["tile"]}, "sets: expected KEY=VALUE"),
    ({"preview_every": 0}, "preview_every"),
    ({"preview": "b.png"}, "preview: 'b.png' is also the input or the output"),
    ({"preset": " "}, "preset: expected"),
])
def test_impossible_options_are_refused_naming_the_option(kwargs, words):
    with pytest.raises(host.OptionsError, match=words.replace("(", r"\(")):
        host.build_command(host.Options("a.png", "b.png", **kwargs), executable=["t"])


def test_empty_paths_are_refused():
    with pytest.raises(host.OptionsError, match="input"):
        host.build_command(host.Options("", "b.png"), executable=["t"])
    with pytest.raises(host.OptionsError, match="output"):
        host.build_command(host.Options("a.png", "  "), executable=["t"])


def test_bad_options_come_back_from_run_as_exit_2_without_starting_anything():
    r = host.run(host.Options("a.png", "b.png", scale=2, print_size="24x36in@300", executable=["/nonexistent"]))
    assert (r.ok, r.code) == (False, 2) and "invalid options" in r.message and "scale and print_size" in r.message


@pytest.mark.parametrize("text, expected", [
    ("4", {"scale": 4.0}), ("x4", {"scale": 4.0}), ("4x", {"scale": 4.0}), (" 3.5 ", {"scale": 3.5}),
    ("24x36in@300", {"print_size": "24x36in@300"}), ("60 x 90 cm @ 300dpi", {"print_size": "60x90cm@300dpi"}),
    ("4096x2048", {"width": 4096, "height": 2048}), ("", {}),
])
def test_parse_target(text, expected):
    assert host.parse_target(text) == expected


@pytest.mark.parametrize("text", ["big", "x4x", "4x4x4", "24x36in", "-2"])
def test_parse_target_refuses_nonsense(text):
    with pytest.raises(host.OptionsError, match="expected a scale"):
        host.parse_target(text)


def test_find_tiledsr_order(tmp_path, monkeypatch):
    exe = tmp_path / "bin dir" / ("tiledsr.exe" if os.name == "nt" else "tiledsr")
    exe.parent.mkdir()
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert host.find_tiledsr("/x/tiledsr") == ["/x/tiledsr"]
    assert host.find_tiledsr(["py", "-m", "tiledsr"]) == ["py", "-m", "tiledsr"]
    assert host.find_tiledsr(environ={"TILEDSR": str(exe), "PATH": ""}) == [str(exe)]  # a path with a space
    assert host.find_tiledsr(environ={"TILEDSR": "/opt/py/bin/python -m tiledsr"}) == ["/opt/py/bin/python", "-m",
                                                                                       "tiledsr"]
    assert host.find_tiledsr(environ={"PATH": str(exe.parent)}) == [str(exe)]
    monkeypatch.setattr(host, "_user_bin_folders", lambda env: [])
    monkeypatch.setattr(host, "_python_has_tiledsr", lambda: True)
    assert host.find_tiledsr(environ={"PATH": str(tmp_path)}) == [sys.executable, "-m", "tiledsr"]
    monkeypatch.setattr(host, "_python_has_tiledsr", lambda: False)
    with pytest.raises(FileNotFoundError, match="TILEDSR"):
        host.find_tiledsr(environ={"PATH": str(tmp_path)})


def test_find_tiledsr_reads_the_command_install_py_recorded(tmp_path):
    copy = tmp_path / "tiledsr_host.py"
    shutil.copy(HOSTS / "tiledsr_host.py", copy)
    (tmp_path / "tiledsr_command.txt").write_text("/opt/venv/bin/tiledsr\n")
    recorded = _load("tiledsr_host_recorded", copy)
    assert recorded.find_tiledsr(environ={"PATH": ""}) == ["/opt/venv/bin/tiledsr"]
    assert recorded.find_tiledsr(environ={"TILEDSR": "/env/tiledsr"}) == ["/env/tiledsr"]  # the variable wins


def test_a_missing_tiledsr_is_a_result_not_an_exception(monkeypatch):
    monkeypatch.setattr(host, "find_tiledsr", lambda explicit=None: (_ for _ in ()).throw(FileNotFoundError("nope")))
    r = host.run(host.Options("a.png", "b.png"))
    assert (r.ok, r.code, r.message) == (False, 1, "nope")
    monkeypatch.undo()
    r = host.run(host.Options("a.png", "b.png", executable=["/nonexistent/tiledsr"]))
    assert (r.ok, r.code) == (False, 1) and "could not start /nonexistent/tiledsr" in r.message


# ---------------------------------------------------------------------------------------------
# Progress parsing

def test_parse_event_ignores_what_is_not_an_event():
    for line in ["", "hello", "tiledsr: error: something", "{not json", "[1, 2]", '{"stage": "sr"}',
                 '{"event": 3}', "null", '"event"', "{" * 10]:
        assert host.parse_event(line) is None
    assert host.parse_event('  {"event": "start", "new_field": [1]}\n') == {"event": "start", "new_field": [1]}


def _fractions(events):
    tracker = host.ProgressTracker()
    return [tracker.update(e) for e in events]


def test_fraction_is_monotone_across_stages_and_ends_at_one():
    events = [{"event": "start", "input": "a.png"}]
    for index in range(3):
        events.append({"event": "stage", "stage": "sr", "stage_index": index, "stages": 3, "tile": 0, "tiles": 4})
        events += [{"event": "progress", "stage": "sr", "stage_index": index, "stages": 3, "tile": t, "tiles": 4,
                    "eta": 1.0} for t in range(1, 5)]
    events.append({"event": "done", "output": "b.png"})
    updates = _fractions(events)
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert updates[5].fraction == pytest.approx(1 / 3)  # stage 1 finished
    assert updates[6].fraction == pytest.approx(1 / 3) and updates[6].stage_index == 1
    assert updates[8].fraction == pytest.approx(1 / 3 + 2 / 4 / 3)
    assert updates[8].text().startswith("stage 2/3 sr: tile 2/4")


def test_diffusion_steps_count_inside_a_stage():
    base = {"event": "progress", "stage": "latent-x2", "stage_index": 1, "stages": 2, "tiles": 4, "steps": 20}
    updates = _fractions([dict(base, step=1, tile=0), dict(base, step=1, tile=2), dict(base, step=2, tile=0),
                          dict(base, step=10, tile=4), dict(base, step=20, tile=4)])
    assert [u.fraction for u in updates] == pytest.approx([0.5, 0.5 + 0.5 * (0.5 / 20), 0.5 + 0.5 * (1 / 20),
                                                           0.75, 1.0])
    assert "step 10/20" in updates[3].text()


def test_fraction_never_goes_back_and_a_new_image_starts_again():
    p = {"event": "progress", "stage": "sr", "stage_index": 0, "stages": 1}
    updates = _fractions([dict(p, tile=6, tiles=8),
                          {"event": "backoff", "stage": "sr", "message": "out of memory; tile 256"},
                          dict(p, tile=2, tiles=30),  # the back-off's finer grid counts again
                          {"event": "start", "input": "second.png"}, dict(p, tile=1, tiles=10)])
    assert [u.fraction for u in updates] == pytest.approx([0.75, 0.75, 0.75, 0.0, 0.1])
    assert updates[1].message == "out of memory; tile 256" and updates[1].text().startswith("backoff: ")


def test_unknown_events_and_fields_and_odd_values_are_tolerated():
    updates = _fractions([
        {"event": "progress", "stage": "sr", "stage_index": 0, "stages": 2, "tile": 1, "tiles": 2, "gpu": {"x": 1}},
        {"event": "telemetry", "whatever": [1, 2]},
        {"event": "progress", "stage": "sr", "stage_index": "0", "stages": None, "tile": True, "tiles": 0},
        {"event": "progress", "stage_index": 7, "stages": 2, "tile": 9, "tiles": 2},  # out of range: clamped
    ])
    assert [u.fraction for u in updates] == pytest.approx([0.25, 0.25, 0.25, 1.0])
    assert updates[1].event == "telemetry" and updates[1].raw["whatever"] == [1, 2]
    assert all(0.0 <= u.fraction <= 1.0 for u in updates)


def test_preview_event_passes_the_path_through():
    u = _fractions([{"event": "preview", "preview": "/tmp/live.jpg", "rows": 64, "height": 128, "input": "a"}])[0]
    assert (u.event, u.preview, u.raw["rows"]) == ("preview", "/tmp/live.jpg", 64)
    assert _fractions([{"event": "progress", "preview": "/x.jpg"}])[0].preview is None


def test_eta_total_is_extrapolated_from_the_fraction():
    now = [100.0]
    tracker = host.ProgressTracker(clock=lambda: now[0])
    now[0] = 110.0
    u = tracker.update({"event": "progress", "stage": "sr", "stage_index": 0, "stages": 2, "tile": 1, "tiles": 2,
                        "eta": 3.0})
    assert u.eta == 3.0 and u.eta_total == pytest.approx(30.0)  # 25% in 10 s
    assert "about 30 s left" in u.text()


# ---------------------------------------------------------------------------------------------
# Exit codes, through run() with a fake tiledsr

@pytest.mark.parametrize("code, words", [
    (0, "Done."), (1, "tiledsr failed"), (2, "refused the input, preset or arguments"),
    (3, "model tiledsr needs is not available"), (4, "out of memory even at the smallest tile"),
    (130, "--resume"), (143, "--resume"), (129, "--resume"), (0xC000013A, "interrupted"), (-9, "killed by signal 9"),
    (77, "exit code 77"),
])
def test_exit_code_messages(code, words):
    assert words in host.explain_exit_code(code)


def test_run_reports_progress_warnings_and_output(tmp_path):
    out = tmp_path / "out.png"
    lines = ["some library noise", ev(event="warning", message="slow tiling"), ev(event="start", input="a"),
             ev(event="stage", stage="sr", stage_index=0, stages=1, tile=0, tiles=2),
             "{broken json", ev(event="progress", stage="sr", stage_index=0, stages=1, tile=1, tiles=2, eta=0.5),
             ev(event="progress", stage="sr", stage_index=0, stages=1, tile=2, tiles=2, eta=0.0, future=1),
             ev(event="done", input="a", output=str(out))]
    seen = []
    r = host.run(host.Options("a.png", str(out), executable=fake_tiledsr(tmp_path, lines, touch=str(out))),
                 seen.append)
    assert (r.ok, r.code, r.output, r.cancelled, r.message) == (True, 0, str(out), False, "Done.")
    assert r.warnings == ["slow tiling"]
    assert [p.event for p in seen] == ["warning", "start", "stage", "progress", "progress", "done"]
    assert [p.fraction for p in seen] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("code, message, words", [
    (2, "cannot read 'a.png': it is a text file", "refused the input, preset or arguments: cannot read 'a.png'"),
    (3, "model x4plus is not available", "not available"),
    (4, "out of memory at tile 64", "out of memory even at the smallest tile"),
    (1, "unexpected OSError: disk full", "tiledsr failed"),
    (130, "interrupted (SIGINT); rerun with --resume", "--resume"),
])
def test_run_maps_error_events_and_exit_codes(tmp_path, code, message, words):
    lines = [ev(event="start"), ev(event="error", message=message, code=code, elapsed=0.1)]
    r = host.run(host.Options("a.png", str(tmp_path / "o.png"), executable=fake_tiledsr(tmp_path, lines, code)))
    assert (r.ok, r.code, r.error, r.output, r.cancelled) == (False, code, message, None, False)
    assert words in r.message and message in r.message


def test_exit_0_without_the_file_is_not_ok(tmp_path):
    r = host.run(host.Options("a.png", str(tmp_path / "o.png"), executable=fake_tiledsr(tmp_path, [], 0)))
    assert not r.ok and "does not exist" in r.message


@pytest.mark.skipif(not POSIX, reason="needs sleep")
def test_a_grandchild_holding_stderr_open_does_not_hang_run(tmp_path):
    out = tmp_path / "o.png"
    script = tmp_path / "parent.py"
    script.write_text("import subprocess, sys\nsubprocess.Popen(['sleep', '6'])\nopen(sys.argv[1], 'wb').close()\n")
    t0 = time.monotonic()
    r = host.run(host.Options("a.png", str(out), executable=[sys.executable, str(script), str(out)]))
    assert r.ok and time.monotonic() - t0 < 5


@pytest.mark.skipif(not POSIX, reason="signals to a process group")
def test_cancel_interrupts_the_child_which_exits_130(tmp_path):
    lines = [ev(event="stage", stage="sr", stage_index=0, stages=1, tile=0, tiles=9)]
    exe = fake_tiledsr(tmp_path, lines, code=0, sleep=30, trap_sigint=True)
    seen, t0 = [], time.monotonic()
    r = host.run(host.Options("a.png", str(tmp_path / "o.png"), executable=exe), seen.append, lambda: bool(seen))
    assert time.monotonic() - t0 < 10
    assert (r.ok, r.code, r.cancelled, r.output) == (False, 130, True, None)
    assert r.message.startswith("Cancelled") and "--resume" in r.message
    assert seen[-1].event == "error"


@pytest.mark.skipif(not POSIX, reason="signals to a process group")
def test_cancel_escalates_when_sigint_is_ignored(tmp_path):
    exe = fake_tiledsr(tmp_path, [ev(event="start")], code=0, sleep=30, ignore_sigint=True)
    seen, t0 = [], time.monotonic()
    r = host.run(host.Options("a.png", str(tmp_path / "o.png"), executable=exe), seen.append, lambda: bool(seen),
                 cancel_timeout=0.5)
    assert time.monotonic() - t0 < 8
    assert r.cancelled and not r.ok and r.code == -signal.SIGTERM and r.message.startswith("Cancelled")


@pytest.mark.skipif(not POSIX, reason="signals to a process group")
def test_an_exception_in_the_callback_stops_the_child(tmp_path):
    exe = fake_tiledsr(tmp_path, [ev(event="start")], code=0, sleep=30, trap_sigint=True)

    def boom(p):
        raise RuntimeError("host bug")

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="host bug"):
        host.run(host.Options("a.png", str(tmp_path / "o.png"), executable=exe), boom)
    assert time.monotonic() - t0 < 10


def test_the_module_is_python_38_syntax():
    for path in (HOSTS / "tiledsr_host.py", HOSTS / "install.py", KRITA / "tiledsr_krita" / "plan.py"):
        ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 8))


def _python38() -> str:
    """A real Python 3.8 (not a pyenv shim, which may refuse to run it), or ''."""
    for candidate in sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python3.8")) + [Path("/usr/bin/python3.8")]:
        if candidate.exists():
            return str(candidate)
    return ""


PY38 = _python38()


@pytest.mark.skipif(not PY38 or not POSIX, reason="no Python 3.8 here")
def test_the_module_runs_on_python_38(tmp_path):
    exe = fake_tiledsr(tmp_path, [ev(event="progress", stage="sr", stage_index=0, stages=2, tile=1, tiles=1),
                                  ev(event="error", message="bad", code=2)], 2)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HOSTS)!r})
        import tiledsr_host as h
        seen = []
        r = h.run(h.Options("a b.png", "o.png", print_size="24x36in@300", executable={exe!r}), seen.append)
        assert (r.code, r.error, seen[0].fraction) == (2, "bad", 0.5), r
        print("ok", sys.version_info[:2])
    """)
    out = subprocess.run([PY38, "-I", "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=60)
    assert out.returncode == 0 and "ok (3, 8)" in out.stdout, out.stdout


# ---------------------------------------------------------------------------------------------
# The real tiledsr

def test_real_run_lanczos_x2_with_spaces_unicode_and_preview(tmp_path):
    folder = tmp_path / "my été"
    folder.mkdir()
    src = tiny_png(folder / "in put.png", (24, 16), "RGBA")
    out = folder / "out put.png"
    preview = folder / "live.jpg" if host.supports_flag("--preview", TILEDSR) else None
    seen = []
    r = host.run(host.Options(str(src), str(out), preset="lanczos", scale=2, executable=TILEDSR,
                              preview=str(preview) if preview else None), seen.append)
    assert r.ok, r.message
    assert (r.code, r.output, r.cancelled) == (0, str(out), False)
    with Image.open(out) as im:
        assert (im.size, im.mode) == ((48, 32), "RGBA")
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"start", "stage", "progress", "done"} <= {p.event for p in seen}
    if preview is not None:  # once the CLI has --preview
        shown = [p.preview for p in seen if p.event == "preview"]
        assert shown and os.path.samefile(shown[-1], preview)
        with Image.open(preview) as im:
            assert im.format == "JPEG"


def test_real_bad_input_is_exit_2_with_the_file_named(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    r = host.run(host.Options(str(bad), str(tmp_path / "o.png"), preset="lanczos", executable=TILEDSR))
    assert (r.ok, r.code) == (False, 2)
    assert r.error and "broken.png" in r.error and "refused the input" in r.message
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(not POSIX, reason="SIGINT to a process group")
def test_real_cancel_after_the_first_progress_event(tmp_path):
    Image.effect_noise((96, 64), 40).convert("RGB").save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    seen = []
    r = host.run(host.Options(str(tmp_path / "in.png"), str(out), preset="fast-x4", executable=TILEDSR,
                              extra_args=["--tile", "64", "--device", "cpu"]),
                 seen.append, lambda: any(p.event == "progress" for p in seen))
    assert (r.ok, r.code, r.cancelled, r.output) == (False, 130, True, None), r
    assert "--resume" in r.message
    assert not out.exists()
    assert not list(tmp_path.glob(".tiledsr-*.tmp"))  # no temporary file left behind


def test_list_presets_and_supports_flag():
    names = host.list_presets(TILEDSR)
    assert {"lanczos", "photo-x4"} <= set(names) and "stage" not in names
    assert host.supports_flag("--overwrite", TILEDSR) and not host.supports_flag("--no-such-flag", TILEDSR)
    assert host.list_presets(["/nonexistent/tiledsr"]) == list(host.DEFAULT_PRESETS)


# ---------------------------------------------------------------------------------------------
# The shell example

def _shell(args, tmp_path, **kw):
    env = dict(os.environ, TILEDSR=TILEDSR[0])
    if len(TILEDSR) > 1:  # no console script: a wrapper
        wrapper = tmp_path / "tiledsr"
        wrapper.write_text('#!/bin/sh\nexec "%s" -m tiledsr "$@"\n' % sys.executable)
        wrapper.chmod(0o755)
        env["TILEDSR"] = str(wrapper)
    return subprocess.Popen(["bash", str(SHELL)] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            universal_newlines=True, env=env, cwd=tmp_path, start_new_session=True, **kw)


def _imagemagick() -> bool:
    if shutil.which("magick"):
        return True
    try:
        return "ImageMagick" in subprocess.run(["convert", "-version"], stdout=subprocess.PIPE,
                                               stderr=subprocess.DEVNULL, universal_newlines=True).stdout
    except OSError:
        return False


@pytest.mark.skipif(not shutil.which("bash") or not POSIX, reason="needs bash")
def test_shell_example_upscales_a_folder_and_explains_a_bad_file(tmp_path):
    src = tmp_path / "in dir"
    src.mkdir()
    tiny_png(src / "red one.png", (24, 16))
    tiny_png(src / "grün.png", (20, 20), "RGBA")
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    (src / "notes.txt").write_text("not an image: not even tried")
    magick = _imagemagick()
    proc = _shell(["-p", "lanczos", "-s", "2", "-q", "-t", "jpg", "-c", "sheet.jpg", "in dir", "out dir"], tmp_path)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, log  # the first failure's code
    assert "broken.jpg" in log and "skipped: tiledsr refused this file" in log
    assert "upscaled 2 of 3 image(s)" in log
    for name in ("red one", "grün"):
        assert (tmp_path / "out dir" / (name + ".png")).exists()
        assert (tmp_path / "out dir" / (name + ".jpg")).exists() == magick
    assert (tmp_path / "sheet.jpg").exists() == magick
    assert magick or "ImageMagick not found" in log
    with Image.open(tmp_path / "out dir" / "red one.png") as im:
        assert im.size == (48, 32)


@pytest.mark.skipif(not shutil.which("bash") or not POSIX, reason="needs bash")
def test_shell_example_stops_on_ctrl_c_and_suggests_resume(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tiny_png(src / "a.png")
    tiny_png(src / "b.png")
    proc = _shell(["-p", "lanczos", "-s", "2", "-q", "in", "out"], tmp_path)
    time.sleep(1.0)  # inside the first tiledsr, which takes a few seconds to start
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    log, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, log
    assert "interrupted" in log and "-r (tiledsr --resume)" in log
    assert "[2]" not in log  # the loop stopped
    assert not (tmp_path / "out" / "b.png").exists()


@pytest.mark.skipif(not shutil.which("bash"), reason="needs bash")
def test_shell_example_usage_errors(tmp_path):
    proc = _shell(["only-one"], tmp_path)
    log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "IN_DIR OUT_DIR" in log
    proc = _shell([str(tmp_path / "missing"), "out"], tmp_path)
    log, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "is not a folder" in log


# ---------------------------------------------------------------------------------------------
# The installer and the plug-ins (without their hosts)

def test_install_copies_each_plugin_with_the_host_module(tmp_path):
    install = [sys.executable, str(HOSTS / "install.py")]
    kritarc = tmp_path / "config" / "kritarc"
    kritarc.parent.mkdir()
    kritarc.write_text("[General]\nfoo=bar\n\n[python]\nenable_other=true\n")
    r = subprocess.run(install + ["krita", "--target", str(tmp_path / "pykrita"), "--tiledsr", "/opt/t/tiledsr",
                                  "--enable-in", str(kritarc)], stdout=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 0, r.stdout
    pkg = tmp_path / "pykrita" / "tiledsr_krita"
    assert (tmp_path / "pykrita" / "tiledsr_krita.desktop").exists()
    assert {"__init__.py", "core.py", "dialog.py", "extension.py", "plan.py", "tiledsr_host.py"} <= {
        p.name for p in pkg.iterdir()}
    assert (pkg / "tiledsr_command.txt").read_text().strip() == "/opt/t/tiledsr"
    assert kritarc.read_text() == "[General]\nfoo=bar\n\n[python]\nenable_other=true\nenable_tiledsr_krita=true\n"
    r = subprocess.run(install + ["gimp", "--target", str(tmp_path / "plug-ins"), "--tiledsr", "/opt/t/tiledsr"],
                       stdout=subprocess.PIPE, universal_newlines=True)
    assert r.returncode == 0, r.stdout
    gimp = tmp_path / "plug-ins" / "tiledsr-upscale"
    assert (gimp / "tiledsr_host.py").read_bytes() == (HOSTS / "tiledsr_host.py").read_bytes()
    if POSIX:
        assert os.access(gimp / "tiledsr-upscale.py", os.X_OK)
    again = subprocess.run(install + ["krita", "--target", str(tmp_path / "pykrita"), "--enable-in", str(kritarc)],
                           stdout=subprocess.PIPE, universal_newlines=True)
    assert again.returncode == 0 and kritarc.read_text().count("enable_tiledsr_krita=true") == 1
    assert subprocess.run(install + ["all", "--target", "x"], stderr=subprocess.DEVNULL).returncode == 2


def test_enable_in_a_new_kritarc(tmp_path):
    installer = _load("tiledsr_install", HOSTS / "install.py")
    installer.enable_in_kritarc(str(tmp_path / "kritarc"))
    assert (tmp_path / "kritarc").read_text() == "[python]\nenable_tiledsr_krita=true\n"


def test_plugins_compile(tmp_path):
    files = [GIMP, *sorted((KRITA / "tiledsr_krita").glob("*.py")), HOSTS / "install.py", HOSTS / "tiledsr_host.py"]
    for path in files:
        py_compile.compile(str(path), doraise=True, cfile=str(tmp_path / (path.name + "c")))
    desktop = (KRITA / "tiledsr_krita.desktop").read_text()
    assert "X-KDE-Library=tiledsr_krita" in desktop and "ServiceTypes=Krita/PythonPlugin" in desktop
    gimp = GIMP.read_text()
    assert 'gi.require_version("Gimp", "3.0")' in gimp and "Gimp.main(" in gimp and "Gimp.file_load" in gimp


@pytest.fixture
def plan():
    sys.path.insert(0, str(HOSTS))
    try:
        yield _load("tiledsr_krita_plan", KRITA / "tiledsr_krita" / "plan.py")
    finally:
        sys.path.remove(str(HOSTS))


def test_krita_export_choice(plan):
    assert plan.export_choice("RGBA", "U8") == plan.ExportChoice(".png")
    assert plan.export_choice("GRAYA", "U16") == plan.ExportChoice(".png")
    assert plan.export_choice("RGBA", "F32") == plan.ExportChoice(".tif")
    assert plan.export_choice("RGBA", "F16").ext == ".tif"
    cmyk = plan.export_choice("CMYKA", "U8")
    assert cmyk == plan.ExportChoice(".png", "RGBA", "U8") and cmyk.needs_conversion
    assert plan.export_choice("LABA", "U16") == plan.ExportChoice(".png", "RGBA", "U16")
    assert plan.export_choice("XYZA", "F32") == plan.ExportChoice(".tif", "RGBA", "F32")


def test_krita_settings_to_options(plan, tmp_path):
    s = plan.Settings(preset="fast-x4", size="24x36in@300", source="layer", destination="layer")
    s.check()
    o = plan.options_for(s, "/t/src.png", "/t/out.png", preview="/t/p.jpg")
    assert (o.print_size, o.scale, o.preset, o.overwrite, o.preview) == ("24x36in@300", None, "fast-x4", True,
                                                                         "/t/p.jpg")
    assert plan.options_for(plan.Settings(size="4x"), "a", "b").scale == 4.0
    assert plan.layer_name(s) == "tiledsr fast-x4 24x36in@300"
    for bad in (plan.Settings(size="huge"), plan.Settings(source="all"), plan.Settings(destination="file")):
        with pytest.raises(plan.host.OptionsError):
            bad.check()
    with plan.TempFiles() as files:
        assert os.path.isdir(files.folder) and files.source(".tif").endswith("source.tif")
        assert os.path.dirname(files.output) == files.folder
    assert not os.path.exists(files.folder)
