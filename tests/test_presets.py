"""Presets: strict validation before any model loads."""
import pytest
import yaml

from tiledsr.errors import PresetError
from tiledsr.presets import load_preset, preset_names, preset_to_yaml

BUNDLED = ["anime-x4", "fast-x4", "lanczos", "photo-x4"]


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_bundled_presets_are_listed_and_valid():
    assert set(BUNDLED) <= set(preset_names())
    for name in preset_names():
        preset = load_preset(name)
        assert preset.stages and preset.name == name


def test_show_round_trips(tmp_path):
    for name in BUNDLED:
        p = load_preset(name)
        again = load_preset(write(tmp_path, preset_to_yaml(p), f"{name}.yaml"))
        assert preset_to_yaml(again) == preset_to_yaml(p)


@pytest.mark.parametrize("text,needle", [
    ("stages: [{type: sr, tlie: 512}]", "did you mean 'tile'"),
    ("stages: [{type: sr}]\noverlpa: 3", "did you mean 'overlap'"),
    ("stages: [{type: super-res}]", "unknown stage type 'super-res'"),
    ("stages: [{type: sr, tile: 64, overlap: 64}]", "overlap (64) must be smaller than tile (64)"),
    ("tile: 64\noverlap: 80\nstages: [{type: resize, scale: 2}]", "overlap (80) must be smaller"),
    ("stages: [{type: sr, tile: 0}]", "tile must be a positive"),
    ("stages: [{type: resize, scale: -2}]", "scale must be in"),
    ("stages: [{type: resize, scale: 0}]", "scale must be in"),
    ("stages: [{type: sr, tile: '512'}]", "tile: expected an integer or null, got '512'"),
    ("stages: [{type: sr, backend: cuda}]", "expected one of 'auto', 'torch', 'ncnn'"),
    ("stages: [{type: resize}]", "resize needs scale, width or height"),
    ("stages: []", "non-empty list"),
    ("stages: {type: sr}", "non-empty list"),
    ("device: tpu\nstages: [{type: sr}]", "device"),
    ("stages: [{type: sr}\n  bad: [", "not valid YAML"),
    ("- just\n- a list", "expected a mapping"),
])
def test_bad_presets_fail_with_one_line(tmp_path, text, needle):
    with pytest.raises(PresetError) as e:
        load_preset(write(tmp_path, text))
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and "p.yaml" in msg


def test_python_tag_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    text = f"stages: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(PresetError, match="not valid YAML"):
        load_preset(write(tmp_path, text))
    assert not marker.exists()


def test_unknown_preset_name_suggests_closest():
    with pytest.raises(PresetError, match="did you mean 'photo-x4'"):
        load_preset("photo-x5")


def test_missing_file():
    with pytest.raises(PresetError, match="file not found"):
        load_preset("/nonexistent/p.yaml")


def test_overrides_and_sets():
    p = load_preset("photo-x4", {"tile": 256, "overlap": 16}, ["sr.model=x4plus-anime", "0.blend=linear"])
    st = p.stages[0]
    assert (st.tiling.tile, st.tiling.overlap, st.tiling.blend) == (256, 16, "linear")
    assert st.config.model == "x4plus-anime"
    with pytest.raises(PresetError, match="no stage 'latent-x2'"):
        load_preset("photo-x4", sets=["latent-x2.steps=3"])
    with pytest.raises(PresetError, match="overlap"):
        load_preset("photo-x4", {"tile": 16, "overlap": 16})


def test_resolved_yaml_is_safe_yaml():
    doc = yaml.safe_load(preset_to_yaml(load_preset("lanczos")))
    assert doc["stages"][0] == {"type": "resize", "scale": 4.0, "method": "lanczos"}
