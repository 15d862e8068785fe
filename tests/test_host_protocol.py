"""The host protocol (README, "Calling tiledsr from another program"): stdin to stdout, one
JSON object per stderr line with tile counts, a live preview, the exit codes, cancelling."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
ENV.pop("TILEDSR_FAIL_OOM", None)
TILEDSR = f'"{sys.executable}" -m tiledsr'


def shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=ENV, capture_output=True, timeout=300)


def events_of(stderr: bytes) -> list[dict]:
    lines = stderr.decode().splitlines()
    events = [json.loads(line) for line in lines]  # every line is a JSON object
    assert all(isinstance(e, dict) and "event" in e for e in events)
    return events


def test_stdin_to_stdout_with_json_progress(tmp_path, photo):
    r = shell(f"{TILEDSR} upscale - -o - --preset fast-x4 --tile 96 --progress json < {photo} > out.png",
              tmp_path)
    assert r.returncode == 0, r.stderr
    events = [e for e in events_of(r.stderr) if e["event"] not in ("warning", "note")]  # small --tile: a warning
    assert events[0]["event"] == "start" and events[-1]["event"] == "done"
    progress = [e for e in events if e["event"] == "progress"]
    assert progress and all(isinstance(e["tile"], int) and isinstance(e["tiles"], int) for e in progress)
    tiles = progress[0]["tiles"]
    assert tiles > 1 and [e["tile"] for e in progress] == list(range(1, tiles + 1))
    assert all(e["stage"] == "sr" and e["stage_index"] == 0 and e["stages"] == 1 for e in progress)
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (256, 192)


def test_stdout_format_and_preview(tmp_path, photo):
    r = shell(f"{TILEDSR} upscale - -o - --format jpeg --preset lanczos --progress json --preview pv.jpg "
              f"--preview-every 0 < {photo} > out.jpg", tmp_path)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.format == "JPEG" and out.size == (256, 192)
    shown = [e for e in events_of(r.stderr) if e["event"] == "preview"]
    assert shown and shown[-1]["rows"] == 192 and shown[-1]["preview"] == str(tmp_path / "pv.jpg")
    assert [e["rows"] for e in shown] == sorted(e["rows"] for e in shown)
    with Image.open(tmp_path / "pv.jpg") as pv:
        assert pv.format == "JPEG" and pv.size == (256, 192)
    # a second run may replace its own earlier preview, never another file
    assert shell(f"{TILEDSR} upscale - -o - --preset lanczos --progress none --preview pv.jpg < {photo} "
                 "> /dev/null", tmp_path).returncode == 0
    (tmp_path / "mine.jpg").write_bytes((tmp_path / "out.jpg").read_bytes())
    r = shell(f"{TILEDSR} upscale - -o - --preset lanczos --progress json --preview mine.jpg < {photo} > o.png",
              tmp_path)
    assert r.returncode == 2 and [e["event"] for e in events_of(r.stderr)] == ["error"]
    assert (tmp_path / "mine.jpg").read_bytes() == (tmp_path / "out.jpg").read_bytes()
    assert (tmp_path / "o.png").read_bytes() == b""  # nothing written: the check came first


@pytest.mark.parametrize("args, code", [
    (["upscale", "missing.png", "-o", "o.png"], 2),
    (["upscale", "IN", "-o", "o.png", "--preset", "nope"], 2),
    (["upscale", "IN", "-o", "o.png", "--address", "ray://h:1"], 2),
    (["upscale", "IN", "-o", "o.png", "--preview", "-"], 2),
    (["upscale", "IN", "-o", "-", "--compare", "c.png"], 2),
    (["upscale", "IN", "-o", "o.png", "--preset", "sd-x4", "--set", "sd-x4.model=nobody/nothing"], 3),
])
def test_exit_codes_with_one_json_error_line(tmp_path, photo, args, code):
    args = [str(photo) if a == "IN" else a for a in args]
    r = subprocess.run([sys.executable, "-m", "tiledsr", *args, "--progress", "json"], cwd=tmp_path, env=ENV,
                       capture_output=True, timeout=120)
    events = events_of(r.stderr)
    assert r.returncode == code and [e["event"] for e in events] == ["error"], r.stderr
    assert events[0]["code"] == code and events[0]["message"]
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_cancel_by_signal_then_resume(tmp_path, sig, code):
    from skimage import data

    src = tmp_path / "in.png"
    Image.fromarray(data.astronaut()[:96, :96]).save(src)
    args = [sys.executable, "-m", "tiledsr", "upscale", str(src), "-o", str(tmp_path / "out.png"),
            "--preset", "fast-x4", "--tile", "96", "--progress", "json"]
    env = {**ENV, "TILEDSR_CHECKPOINT_EVERY": "0"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        ev = json.loads(line)
        if ev["event"] == "progress" and ev["tile"] == ev["tiles"] - 3:  # a row of tiles is handed on by then
            proc.send_signal(sig)
            break
    _, rest = proc.communicate(timeout=120)
    events = events_of(b"".join(lines) + rest)
    assert proc.returncode == code and events[-1]["event"] == "error" and events[-1]["code"] == code
    assert "--resume" in events[-1]["message"]
    assert not (tmp_path / "out.png").exists()
    r = subprocess.run([*args, "--resume"], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    full = next(e["tiles"] for e in events if e["event"] == "progress")
    resumed = [e for e in events_of(r.stderr) if e["event"] == "progress"]
    # the tiles of the rows handed on before the signal are not redone, and count as done
    assert resumed and resumed[0]["tiles"] == full and resumed[0]["tile"] > 1
    assert resumed[-1]["tile"] == full
    assert not list(tmp_path.glob(".tiledsr-work-*"))
