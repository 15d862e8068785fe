"""The ``seamfix`` stage and img2img's ``seamfix`` option: only seams scoring above the threshold are
re-rendered, the worst seam of a bad tiling at least halves, pixels away from them stay bit for bit,
bad options are one-line preset errors, and a run with a seamfix stage resumes bit-identically."""
import json

import numpy as np
import pytest
from PIL import Image

import tiledsr
from tiledsr import Pipeline
from tiledsr.cli import main
from tiledsr.errors import PresetError
from tiledsr.seams import SeamJob, measure_store, seam_lines
from tiledsr.stages import Runtime, Tiling, stage_types
from tiledsr.stages.seamfix import SeamfixConfig, SeamfixStage
from tiledsr.tiling import make_grid
from tiledsr.tiling.store import ArrayStore, collect


def photo(box=(100, 150, 96, 96), name="astronaut") -> np.ndarray:
    from skimage import data

    y, x, h, w = box
    return np.ascontiguousarray(getattr(data, name)()[y:y + h, x:x + w], dtype=np.float32) / 255


def strips_mask(seams, half: int, shape) -> np.ndarray:
    """True on the pixels less than ``half`` px from any of ``seams``."""
    mask = np.zeros(shape[:2], bool)
    for s in seams:
        y0, y1, x0, x1 = s.strip(half, *shape[:2])
        mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def bad_tiling():
    """An untiled lanczos x4 of a photo with its 64 px tiles shifted up or down in tone (no overlap, no
    feathering): (input, output, seams)."""
    from tiledsr.resample import resize

    img = photo()
    out = np.clip(resize(img, (384, 384), "lanczos"), 0, 1).astype(np.float32)
    grid = make_grid(384, 384, 64, 0)
    rng = np.random.default_rng(3)
    for t in grid.tiles:
        out[t.slices] += rng.choice([-0.04, 0.04])
    return img, np.clip(out, 0, 1), seam_lines(grid, 384, 384)


def seamfix(**options) -> SeamfixStage:
    return SeamfixStage(SeamfixConfig(**options), Tiling(), Runtime())


def repair(stage, out, job, start=0):
    return collect(stage.stream(ArrayStore(out), lambda *a: None, None, start, seams=job))


def test_seamfix_is_a_built_in_stage_type():
    assert "seamfix" in stage_types()
    plan = Pipeline([{"type": "resize", "scale": 2}, {"type": "seamfix", "width": 16}], device="cpu").plan((40, 30))
    assert plan.stages[1].description == "seamfix (threshold 2, 16 px strips, pixel tone matching)"
    assert plan.stages[1].grid is None and plan.output_size == (60, 80)


@pytest.mark.parametrize("option, value, words", [
    ("threshold", -0.5, "threshold must be a seam score >= 0"),
    ("width", 3, "width must be an even number"), ("width", 2048, "width must be an even number"),
    ("strength", 0, "strength must be in (0, 1]"), ("steps", 0, "steps must be in 1..1000"),
    ("guidance", -1, "guidance must be >= 0"), ("threshold", "high", "expected a number"),
    ("radius", 3, "unknown key"),
])
def test_bad_options_are_one_line_preset_errors(tmp_path, capsys, option, value, words):
    with pytest.raises(PresetError, match=words.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        Pipeline([{"type": "sr", "model": "animevideov3"}, {"type": "seamfix", option: value}])
    p = tmp_path / "p.yaml"
    p.write_text(f"stages:\n  - type: sr\n    model: animevideov3\n  - type: seamfix\n    {option}: {value}\n")
    Image.new("RGB", (16, 16)).save(tmp_path / "in.png")
    assert main(["plan", str(tmp_path / "in.png"), "--preset", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stages[1] (seamfix)" in err and words in err


def test_a_model_at_a_strength_that_runs_no_step_is_refused():
    with pytest.raises(PresetError, match="runs no denoising step"):
        Pipeline([{"type": "seamfix", "model": "some/model", "strength": 0.04, "steps": 20}])
    with pytest.raises(PresetError, match="seamfix must be a seam score >= 0"):
        Pipeline([{"type": "img2img", "model": "some/model", "seamfix": -1}])


def test_repair_halves_the_worst_seam_and_leaves_far_pixels_untouched(bad_tiling):
    img, out, seams = bad_tiling
    ref = ArrayStore(img)
    before = measure_store(ArrayStore(out), seams, ref)
    job = SeamJob(seams, tuple(s.score for s in before), ref)
    fixed = repair(seamfix(threshold=1.0, width=32), out, job)
    assert job.repaired and len(job.repaired) < len(seams)  # only the seams above the threshold
    after = measure_store(ArrayStore(fixed), seams, ref)
    worst_before, worst_after = max(s.score for s in before), max(s.score for s in after)
    assert worst_before >= 5 and worst_after <= worst_before / 2
    far = ~strips_mask([seams[i] for i in job.repaired], 16, out.shape)
    assert np.array_equal(fixed[far], out[far])  # bit for bit beyond the strips' half width
    assert not np.array_equal(fixed[~far], out[~far])
    assert fixed.dtype == np.float32 and fixed.min() >= 0 and fixed.max() <= 1


def test_a_resumed_repair_is_bit_identical(bad_tiling, monkeypatch):
    import tiledsr.resample

    img, out, seams = bad_tiling
    ref = ArrayStore(img)
    job = SeamJob(seams, tuple(s.score for s in measure_store(ArrayStore(out), seams, ref)), ref)
    whole = repair(seamfix(threshold=1.0), out, job)
    monkeypatch.setattr(tiledsr.resample, "BAND_BYTES", 13 * 384 * 3 * 4)  # bands of 13 rows
    for start in (0, 50, 170, 383):
        assert np.array_equal(repair(seamfix(threshold=1.0), out, job, start), whole[start:])


def test_no_seams_or_none_above_the_threshold_change_nothing(bad_tiling):
    img, out, seams = bad_tiling
    assert np.array_equal(repair(seamfix(), out, None), out)
    job = SeamJob(seams, tuple(s.score for s in measure_store(ArrayStore(out), seams, ArrayStore(img))),
                  ArrayStore(img))
    assert np.array_equal(repair(seamfix(threshold=1000), out, job), out) and job.repaired == ()
    pipe = Pipeline([{"type": "resize", "scale": 2}, {"type": "seamfix"}], device="cpu")  # nothing tiled before it
    res = pipe.run_array(img)
    assert np.array_equal(res, Pipeline([{"type": "resize", "scale": 2}], device="cpu").run_array(img))
    assert [r.to_dict() for r in pipe.seams] == [{"stage": "seamfix", "stage_index": 1, "worst": None,
                                                  "median": None, "count": 0, "repaired": 0, "worst_before": None,
                                                  "median_before": None}]


BAD_SR = {"type": "sr", "model": "animevideov3", "tile": 64, "overlap": 0, "context": 0}


def test_a_pipeline_repairs_the_seams_of_a_bad_tiling():
    img = photo()
    plain = Pipeline([BAD_SR], device="cpu")
    ref = plain.run_array(img)
    pipe = Pipeline([BAD_SR, {"type": "seamfix", "width": 24}], device="cpu")  # the default threshold, 2
    out = pipe.run_array(img)
    sr, fix = pipe.seams
    assert sr.worst == plain.seams[0].worst > 2
    assert fix.stage == "seamfix" and fix.stage_index == 1 and fix.repaired >= 1 and fix.count == sr.count
    assert fix.worst <= sr.worst / 2
    d = fix.to_dict()
    assert d["repaired"] == fix.repaired and d["worst_before"] == round(sr.worst, 4)
    repaired = [s.seam for s in fix.before if s.score > 2]
    assert len(repaired) == fix.repaired
    far = ~strips_mask(repaired, 12, out.shape)
    assert np.array_equal(out[far], ref[far])


@pytest.fixture
def small_bands(monkeypatch):
    import tiledsr.resample

    monkeypatch.setenv("TILEDSR_CHECKPOINT_EVERY", "0")
    monkeypatch.setattr(tiledsr.resample, "BAND_BYTES", 16 * 1024)


def test_a_cancelled_run_with_a_seamfix_stage_resumes_to_the_same_bytes(tmp_path, small_bands):
    src = tmp_path / "in.png"
    Image.fromarray(np.rint(photo(box=(100, 150, 48, 64)) * 255).astype(np.uint8)).save(src)
    preset = tmp_path / "p.yaml"
    preset.write_text("tile: 64\noverlap: 0\nstages:\n  - {type: sr, model: animevideov3, context: 0}\n"
                      "  - {type: seamfix, threshold: 0.1}\n")
    fresh = tiledsr.upscale(str(src), str(tmp_path / "fresh.png"), preset=str(preset))
    assert fresh.info["tiledsr_seams"][1]["repaired"] >= 1
    dst = tmp_path / "out.png"

    def cancel_in_seamfix(ev):
        return not (ev.event == "progress" and ev.stage == "seamfix" and ev.tile >= 3)

    with pytest.raises(tiledsr.Cancelled):
        tiledsr.upscale(str(src), str(dst), preset=str(preset), progress=cancel_in_seamfix)
    (work,) = tmp_path.glob(".tiledsr-work-*")
    stages = json.loads((work / "progress.json").read_text())["stages"]
    assert stages["0"]["done"] and 0 < stages["1"]["rows"] < 192  # sr kept, seamfix half-way
    resumed = tiledsr.upscale(str(src), str(dst), preset=str(preset), resume=True)
    assert dst.read_bytes() == (tmp_path / "fresh.png").read_bytes()
    assert resumed.info["tiledsr_seams"] == fresh.info["tiledsr_seams"]  # measured again from the kept work


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    pytest.importorskip("diffusers")
    from tiny_models import build_tiny_sd

    return str(build_tiny_sd(tmp_path_factory.mktemp("tiny-sd")))


def test_img2img_seamfix_option_re_renders_seams_with_the_same_model(sd):
    img = photo(box=(100, 150, 64, 96))
    stage = {"type": "img2img", "model": sd, "strength": 0.5, "steps": 4, "tile": 32, "overlap": 0}
    pipe = Pipeline([{**stage, "seamfix": 0.05}], device="cpu", seed=1)
    assert [st.type for st in pipe.stages] == ["img2img", "seamfix"]
    fix = pipe.stages[1]
    assert (fix.config.model, fix.config.strength, fix.config.steps, fix.config.threshold) == (sd, 0.25, 4, 0.05)
    assert "seamfix (threshold 0.05, 32 px strips, img2img" in pipe.plan((96, 64)).stages[1].description
    out = pipe.run_array(img)
    plain = Pipeline([stage], device="cpu", seed=1).run_array(img)
    first, second = pipe.seams
    assert first.stage == "img2img" and first.count > 0  # measured on the decoded pixels with its grid
    assert second.stage == "seamfix" and second.stage_index == 1 and second.repaired >= 1
    repaired = [s.seam for s in second.before if s.score > 0.05]
    far = ~strips_mask(repaired, 16, out.shape)
    assert np.array_equal(out[far], plain[far]) and not np.array_equal(out, plain)
