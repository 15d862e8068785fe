"""Stage plug-ins through the ``tiledsr.stages`` entry points: the example ``unsharp`` stage's
invariants, the example package installed (offline) and run from the command line, and broken
plug-ins refused with one line and exit code 2."""
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from tiledsr.cli import main
from tiledsr.io import read_image
from tiledsr.stages import Runtime, Tiling, plugin_types, stage_class, stage_types
from tiledsr.tiling.store import ArrayStore, FileStore, StreamStore, collect, rebanded

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugins" / "tiledsr-unsharp"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ush():
    """The example plug-in's module, imported from its source folder."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        import tiledsr_unsharp
    finally:
        sys.path.remove(str(EXAMPLE))
    return tiledsr_unsharp


def _pip_install(src: Path, target: Path) -> Path:
    """``pip install`` the project folder ``src`` into ``target``, offline, without building it in place."""
    pytest.importorskip("pip")
    build = target.parent / f"{src.name}-src"
    shutil.copytree(src, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                        "--no-cache-dir", "--quiet", "--target", str(target), str(build)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return target


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the installed example package (its .dist-info carries the entry point)."""
    return _pip_install(EXAMPLE, tmp_path_factory.mktemp("plugin") / "site")


BROKEN = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=70.1"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tiledsr-broken"
        version = "0.0.1"

        [project.entry-points."tiledsr.stages"]
        boom = "tiledsr_broken.boom:BoomStage"
        ghost = "tiledsr_broken.fine:GhostStage"
        notstage = "tiledsr_broken.fine:NotAStage"
        untyped = "tiledsr_broken.fine:UntypedStage"
        noconfig = "tiledsr_broken.fine:NoConfigStage"
        gone = "tiledsr_nowhere:Stage"
        resize = "tiledsr_broken.boom:BoomStage"
        unsharp = "tiledsr_broken.boom:BoomStage"

        [tool.setuptools]
        packages = ["tiledsr_broken"]
    """,
    "tiledsr_broken/__init__.py": "",
    "tiledsr_broken/boom.py": """
        import os

        if os.environ.get("TILEDSR_BROKEN_MARKER"):
            open(os.environ["TILEDSR_BROKEN_MARKER"], "a").close()
        raise RuntimeError("the boom plug-in is broken on purpose\\nand says so on two lines")
    """,
    "tiledsr_broken/fine.py": """
        from tiledsr.stages import Stage


        class NotAStage:
            pass


        class UntypedStage(Stage):
            def output_size(self, height, width):
                return height, width


        class NoConfigStage(UntypedStage):
            type = "noconfig"
    """,
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    """A folder holding an installed package whose stage plug-ins are broken in every way."""
    base = tmp_path_factory.mktemp("broken")
    src = base / "tiledsr-broken"
    for name, text in BROKEN.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(textwrap.dedent(text).lstrip())
    return _pip_install(src, base / "site")


def tiledsr_cli(*argv, paths=()):
    """``python -m tiledsr ARGV`` in a fresh process that sees the packages in ``paths``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT)])}
    return subprocess.run([sys.executable, "-m", "tiledsr", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=120)


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def preset(tmp_path, name, *stages, depth=16):
    p = tmp_path / f"{name}.yaml"
    lines = [f"name: {name}", "description: test preset", f"output: {{bit_depth: {depth}}}", "stages:"]
    p.write_text("\n".join(lines + [f"  - {s}" for s in stages]) + "\n")
    return p


# ---------------------------------------------------------------- the stage itself


def gaussian64(x, radius):
    """An independent float64 gaussian blur of (H, W, C), truncated at ceil(3 sigma), np.pad symmetric edges."""
    r = max(1, math.ceil(3 * radius))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / radius) ** 2)
    w /= w.sum()
    h, wd = x.shape[:2]
    p = np.pad(x.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    v = sum(w[i] * p[i:i + h] for i in range(len(w)))
    return sum(w[i] * v[:, i:i + wd] for i in range(len(w)))


def reference(img, radius, amount):
    """An independent float64 unsharp mask, threshold 0; alpha kept."""
    x = img.astype(np.float64)
    c = x.shape[2]
    colour = c - 1 if c in (2, 4) else c
    blur = gaussian64(x[:, :, :colour], radius)
    out = x.copy()
    out[:, :, :colour] = np.clip(x[:, :, :colour] + amount * (x[:, :, :colour] - blur), 0, 1)
    return out


def make_stage(ush, radius=1.5, amount=1.0, threshold=0.0):
    return ush.UnsharpStage(ush.UnsharpConfig(radius, amount, threshold), Tiling(), Runtime())


SHAPES = [(1, 1, 1), (2, 3, 2), (7, 5, 3), (13, 17, 4), (31, 11, 1), (37, 29, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("radius", [0.4, 1.3, 2.9])
def test_any_banding_and_start_is_bit_identical_to_the_whole_image(ush, shape, radius):
    img = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    cfg = ush.UnsharpConfig(radius, 1.7, 0.0)
    whole = ush.unsharp(img, radius, 1.7)
    # within float rounding of an independent float64 version (mirrored edges, any reach vs size)
    np.testing.assert_allclose(whole, reference(img, radius, 1.7), atol=1e-5, rtol=0)
    h = shape[0]
    for rows in sorted({1, 2, 3, 5, 8, 13, h}):
        for start in sorted({s for s in (0, 1, 2, h // 2, h - 1) if s < h}):
            bands = list(ush.unsharp_bands(ArrayStore(img), cfg, rows, start))
            assert all(b.dtype == np.float32 and b.shape[1:] == shape[1:] for b in bands)
            assert np.array_equal(collect(bands), whole[start:]), (rows, start)


@pytest.mark.parametrize("start", [0, 1, 9, 23, 36])
def test_stream_from_file_and_forward_only_stores(ush, tmp_path, monkeypatch, start):
    """Small bands (8 rows) read with their context from a file store and from a store that may
    only be read forwards; progress reported once per band."""
    monkeypatch.setattr(ush, "BAND_BYTES", 1)
    img = np.random.default_rng(3).random((37, 29, 4), dtype=np.float32)
    st = make_stage(ush, radius=1.2)
    assert st.context == 4 and st.band_rows(29, 4) == 8
    whole = ush.unsharp(img, 1.2, 1.0)
    fs = FileStore(tmp_path / "in.f32", img.shape)
    fs.write(0, img)
    calls = []
    for store in (fs, StreamStore(rebanded(iter([img]), 5), img.shape)):
        calls.clear()
        out = collect(st.stream(store, lambda *a: calls.append(a), None, start))
        assert np.array_equal(out, whole[start:])
        n = -(-(37 - start) // 8)
        assert calls == [(i, n) for i in range(1, n + 1)]
    fs.close()
    assert np.array_equal(st.run(img, lambda *a: None), whole)  # run() comes from stream()


def test_constant_stays_constant_and_alpha_and_amount_zero_are_untouched(ush):
    rng = np.random.default_rng(5)
    for value in (0.0, 0.37, 1.0):
        flat = np.full((19, 23, 3), value, np.float32)
        np.testing.assert_allclose(ush.unsharp(flat, 2.5, 4.0), flat, atol=1e-6, rtol=0)
        assert np.array_equal(ush.unsharp(flat, 2.5, 4.0, threshold=1e-3), flat)
    for c in (1, 2, 3, 4):
        img = rng.random((17, 13, c), dtype=np.float32)
        assert np.array_equal(ush.unsharp(img, 1.5, 0.0), img)
        out = ush.unsharp(img, 1.5, 2.0)
        if c in (2, 4):
            assert np.array_equal(out[:, :, -1], img[:, :, -1])
        colour = out[:, :, : c - 1 if c in (2, 4) else c]
        assert colour.min() >= 0 and colour.max() <= 1 and not np.array_equal(colour, img[:, :, :colour.shape[2]])
    grey = rng.random((9, 8), dtype=np.float32)
    assert ush.unsharp(grey, 1.0, 1.0).shape == (9, 8)


def test_sharpening_and_threshold(ush):
    """An edge gets steeper (over- and undershoot); detail below the threshold is left alone."""
    edge = np.full((6, 40, 1), 0.3, np.float32)
    edge[:, 20:] = 0.7
    out = ush.unsharp(edge, 2.0, 1.0)
    assert out[:, 19].max() < 0.3 < 0.7 < out[:, 20].min()
    assert np.allclose(out.mean(), edge.mean(), atol=1e-3)
    img = np.random.default_rng(8).random((21, 21, 3), dtype=np.float32)
    full = reference(img, 1.0, 1.0)
    detail = np.abs(img - gaussian64(img, 1.0))
    out = ush.unsharp(img, 1.0, 1.0, threshold=0.1)
    small, large = detail < 0.1 - 1e-4, detail > 0.1 + 1e-4
    assert small.any() and large.any()
    assert np.array_equal(out[small], img[small])
    np.testing.assert_allclose(out[large], full[large], atol=1e-5)


def test_memory_estimate_covers_the_measured_peak(ush, tmp_path, monkeypatch):
    """Measured with tracemalloc, reading a file store (its reads are copies), one band and many."""
    img = np.random.default_rng(1).random((240, 180, 3), dtype=np.float32)
    for band_bytes in (ush.BAND_BYTES, 60 * 180 * 3 * 4):
        monkeypatch.setattr(ush, "BAND_BYTES", band_bytes)
        st = make_stage(ush, radius=3.0, threshold=0.01)
        fs = FileStore(tmp_path / "in.f32", img.shape)
        fs.write(0, img)
        tracemalloc.start()
        for _band in st.stream(fs, lambda *a: None):
            pass  # the previous band stays alive while the next one is made, as when a store is filled
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        fs.close()
        est = st.memory_estimate(240, 180, 3)
        assert est["tile"] == 0 and peak <= est["canvas"] <= 2 * peak, (band_bytes, peak, est)


def test_config_check_and_description(ush):
    good = ush.UnsharpConfig(1.5, 0.8, 0.01)
    assert good.check() is None
    for bad, needle in [((0.0, 1, 0), "radius"), ((65.0, 1, 0), "radius"), ((1.0, -1, 0), "amount"),
                        ((1.0, 11, 0), "amount"), ((1.0, 1, 1.5), "threshold"), ((1.0, 1, -0.1), "threshold")]:
        assert needle in ush.UnsharpConfig(*bad).check()
    with pytest.raises(ValueError, match="radius"):
        ush.unsharp(np.zeros((4, 4, 3), np.float32), radius=-1.0)
    line = make_stage(ush, 1.5, 0.8, 0.01).describe()
    assert "unsharp" in line and "1.5px" in line and "context 5px" in line and "\n" not in line
    assert make_stage(ush).output_size(13, 7) == (13, 7) and make_stage(ush).grid(13, 7) is None


def test_minimal_plugin_in_the_docs_works():
    """The docs' minimal example runs as printed and passes the registry's checks."""
    from tiledsr.stages import _not_a_stage

    text = (ROOT / "docs" / "plugins.md").read_text()
    code = re.search(r"## A minimal plug-in.*?```python\n(.*?)```", text, re.S).group(1)
    ns: dict = {}
    exec(compile(code, "docs/plugins.md", "exec"), ns)
    cls = ns["InvertStage"]
    assert _not_a_stage(cls, "invert") is None and ns["InvertConfig"](2.0).check()
    img = np.random.default_rng(2).random((300, 7, 4), dtype=np.float32)
    st = cls(ns["InvertConfig"](0.25), Tiling(), Runtime())
    out = collect(st.stream(ArrayStore(img), lambda *a: None, None, 10))
    np.testing.assert_allclose(out[:, :, :3], img[10:, :, :3] * 0.5 + 0.25, atol=1e-6)
    assert np.array_equal(out[:, :, 3], img[10:, :, 3])


# ---------------------------------------------------------------- installed: the command line


def test_installed_plugin_upscales_end_to_end(site, tmp_path, photo, ush, capsys):
    sharp = preset(tmp_path, "sharp", "{type: resize, scale: 2}", "{type: unsharp, radius: 1.2, amount: 1.5}")
    plain = preset(tmp_path, "plain", "{type: resize, scale: 2}")
    r = tiledsr_cli("upscale", photo, "-o", tmp_path / "sharp.png", "--preset", sharp, "--progress", "none",
                    paths=[site])
    assert r.returncode == 0, r.stderr
    assert cli(capsys, "upscale", photo, "-o", tmp_path / "plain.png", "--preset", plain,
               "--progress", "none")[0] == 0
    a, info = read_image(tmp_path / "sharp.png")
    b, _ = read_image(tmp_path / "plain.png")
    assert a.shape == b.shape == (96, 128, 3) and info.bit_depth == 16
    # the plug-in ran on the resized image: what it gives on the plain run's pixels, to 16-bit rounding
    np.testing.assert_allclose(a, ush.unsharp(b, 1.2, 1.5), atol=6 / 65535, rtol=0)
    assert np.abs(a - b).max() > 0.05 and abs(a.mean() - b.mean()) < 0.01

    def detail(x):
        return np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()
    assert detail(a) > 1.2 * detail(b)


def test_installed_plugin_is_listed_and_planned(site, tmp_path, photo):
    r = tiledsr_cli("presets", paths=[site])
    assert r.returncode == 0, r.stderr
    types = r.stdout.split("stage types:")[1]
    assert re.search(r"^\s+unsharp\s+plug-in from tiledsr-unsharp 0\.1\.0$", types, re.M), r.stdout
    assert re.search(r"^\s+resize\s+built-in$", types, re.M) and "lanczos" in r.stdout.split("stage types:")[0]
    p = preset(tmp_path, "sharp", "{type: resize, scale: 2}", "{type: unsharp, radius: 1.5, amount: 0.8}")
    r = tiledsr_cli("plan", photo, "--preset", p, paths=[site])
    assert r.returncode == 0, r.stderr
    assert "stage 2: unsharp radius 1.5px, amount 0.8, threshold 0 (context 5px; plug-in tiledsr-unsharp" in r.stdout
    assert "128x96 -> 128x96" in r.stdout


def test_plugin_options_are_validated_like_built_ins(site, tmp_path, photo, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(site))
    assert "unsharp" in stage_types() and ("unsharp", "tiledsr-unsharp", "0.1.0", "") in plugin_types()
    for stage, needle in [("{type: unsharp, radius: -2}", "radius must be a gaussian sigma"),
                          ("{type: unsharp, raduis: 2}", "did you mean 'radius'"),
                          ("{type: unsharp, amount: lots}", "expected a number")]:
        code, _, err = cli(capsys, "plan", photo, "--preset", preset(tmp_path, "bad", stage))
        assert code == 2 and needle in err and "stages[0] (unsharp)" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- broken plug-ins


def test_plugin_that_raises_on_import_exits_2_with_one_line(broken_site, tmp_path, photo):
    out = tmp_path / "o.png"
    r = tiledsr_cli("upscale", photo, "-o", out, "--preset", preset(tmp_path, "boom", "{type: boom}"),
                    paths=[broken_site])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiledsr: error:"), r.stderr
    for needle in ("stage plug-in 'boom'", "tiledsr_broken.boom:BoomStage", "tiledsr-broken 0.0.1",
                   "raised RuntimeError: the boom plug-in is broken on purpose", "pip uninstall tiledsr-broken"):
        assert needle in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("kind,needle", [
    ("ghost", "does not resolve: 'tiledsr_broken.fine' has no 'GhostStage'"),
    ("notstage", "it loads class NotAStage, not a subclass of tiledsr.stages.Stage"),
    ("untyped", "UntypedStage sets no 'type'"),
    ("noconfig", "NoConfigStage sets no 'Config'"),
    ("gone", "module 'tiledsr_nowhere' is not installed"),
])
def test_broken_plugins_exit_2_naming_plugin_and_distribution(broken_site, tmp_path, photo, monkeypatch, capsys,
                                                              kind, needle):
    monkeypatch.syspath_prepend(str(broken_site))
    code, out, err = cli(capsys, "plan", photo, "--preset", preset(tmp_path, kind, f"{{type: {kind}}}"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert needle in err and f"stage plug-in {kind!r}" in err and "tiledsr-broken 0.0.1" in err, err


def test_builtins_win_and_broken_plugins_stay_unloaded_unless_named(broken_site, site, tmp_path, photo,
                                                                    monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(broken_site))
    monkeypatch.syspath_prepend(str(site))  # first on sys.path: its 'unsharp' wins over tiledsr-broken's
    marker = tmp_path / "boom-imported"
    monkeypatch.setenv("TILEDSR_BROKEN_MARKER", str(marker))  # tiledsr_broken.boom touches it when imported
    from tiledsr.stages.resize import ResizeStage

    assert stage_class("resize") is ResizeStage and stage_types().count("resize") == 1
    assert stage_class("unsharp").__module__ == "tiledsr_unsharp"
    rows = {(p.name, p.dist): p.ignored for p in plugin_types()}
    assert "built-in" in rows["resize", "tiledsr-broken"] and rows["unsharp", "tiledsr-unsharp"] == ""
    assert "tiledsr-unsharp registers it too" in rows["unsharp", "tiledsr-broken"]
    code, out, _ = cli(capsys, "presets")
    assert code == 0 and re.search(r"^\s+resize\s+plug-in from tiledsr-broken 0\.0\.1 \(ignored: a built-in", out,
                                   re.M)
    assert re.search(r"^\s+boom\s+plug-in from tiledsr-broken", out, re.M)
    code, _, err = cli(capsys, "plan", photo, "--preset", "lanczos")  # names no plug-in: unaffected
    assert code == 0, err
    assert not marker.exists()
    code, _, err = cli(capsys, "plan", photo, "--preset", preset(tmp_path, "boom", "{type: boom}"))
    assert code == 2 and "the boom plug-in is broken" in err and marker.exists()  # named: imported, refused
