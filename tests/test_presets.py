"""Presets: strict validation before any model loads."""
import dataclasses

import pytest
import yaml

from tiledsr.errors import PresetError
from tiledsr.presets import OutputSettings, _TopLevel, load_preset, preset_names, preset_to_yaml
from tiledsr.stages import stage_class

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


@pytest.mark.parametrize("name", preset_names())
def test_show_round_trips_to_an_equal_preset(tmp_path, name):
    p = load_preset(name)
    text = preset_to_yaml(p)
    again = load_preset(write(tmp_path, text, f"{name}.yaml"))
    assert again == p
    assert preset_to_yaml(again) == text


@pytest.mark.parametrize("name", preset_names())
def test_show_prints_every_key_with_its_default(name):
    """Every key a user can set is printed, nulls included (not `output: {}`)."""
    p = load_preset(name)
    doc = yaml.safe_load(preset_to_yaml(p))
    top = {f.name for f in dataclasses.fields(_TopLevel)}
    assert set(doc) == top
    assert doc["output"] == {f.name: None for f in dataclasses.fields(OutputSettings)}
    for st, spec in zip(doc["stages"], p.stages):
        keys = {f.name for f in dataclasses.fields(stage_class(spec.type).Config)}
        assert set(st) == keys | {"type"}
        assert None not in [st[k] for k in ("tile", "overlap", "blend", "batch") if k in st]


def test_show_round_trips_with_overrides(tmp_path):
    p = load_preset("poster-x8", {"tile": 512}, ["output.format=tiff", "seed=7", "img2img.prompt=a cat, 8k"])
    again = load_preset(write(tmp_path, preset_to_yaml(p)))
    assert again == dataclasses.replace(p, name=again.name) and again.output.format == "tiff"


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
    assert doc["stages"][0] == {"type": "resize", "scale": 4.0, "width": None, "height": None, "method": "lanczos"}


@pytest.mark.parametrize("item,get", [
    ("output.format=tiff", lambda p: p.output.format == "tiff"),
    ("output.bit_depth=16", lambda p: p.output.bit_depth == 16),
    ("tile=512", lambda p: p.tiling.tile == 512),
    ("seed=3", lambda p: p.seed == 3),
    ("device=cpu", lambda p: p.device == "cpu"),
    ("precision=fp16", lambda p: p.precision == "fp16"),
    ("description=made by hand", lambda p: p.description == "made by hand"),
    ("name=mine", lambda p: p.name == "mine"),
    ("sr.model=x4plus-anime", lambda p: p.stages[0].config.model == "x4plus-anime"),
    ("0.blend=linear", lambda p: p.stages[0].tiling.blend == "linear"),
    ("latent-x2.steps=5", lambda p: p.stages[1].config.steps == 5),
    ("3.method=adain", lambda p: p.stages[3].config.method == "adain"),
])
def test_set_reaches_every_key(item, get):
    assert get(load_preset("poster-x8", sets=[item]))


def test_set_tiling_key_is_the_preset_wide_default():
    """--set overlap=N sets the preset's default; a stage's own overlap still wins (``top`` overrides it)."""
    p = load_preset("poster-x8", sets=["overlap=16"])
    assert [s.tiling.overlap for s in p.stages] == [16, 16, 96, 16]
    p = load_preset("poster-x8", {"overlap": 16})
    assert [s.tiling.overlap for s in p.stages] == [16, 16, 16, 16]
    p = load_preset("poster-x8", sets=["overlap=16", "img2img.overlap=32"])
    assert [s.tiling.overlap for s in p.stages] == [16, 16, 32, 16]


@pytest.mark.parametrize("item,needle", [
    ("ouput.format=tiff", "did you mean 'output'"),
    ("s.model=x", "did you mean 'sr'"),
    ("latent-x4.steps=3", "did you mean 'latent-x2'"),
    ("9.steps=3", "no stage '9'"),
    ("output.fromat=tiff", "did you mean 'format'"),
    ("output.format=gif", "output.format: expected one of"),
    ("tlie=512", "did you mean 'tile'"),
    ("=3", "expected KEY=VALUE"),
    ("sr.=3", "expected KEY=VALUE"),
    ("tile", "expected KEY=VALUE"),
    ("sr.model=[unclosed", "not valid YAML"),
])
def test_bad_set_items_fail_with_one_line(item, needle):
    with pytest.raises(PresetError) as e:
        load_preset("poster-x8", sets=[item])
    assert needle in str(e.value) and "\n" not in str(e.value)
