"""Tests for tiledsr.models: ncnn import, safe weight loading, detection, runners."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data

from tiledsr.errors import InputError, ModelNotAvailable
from tiledsr.models import known_models, load_sr_model, make_runner
from tiledsr.models import ncnn_import
from tiledsr.models.ncnn_import import load_ncnn
from tiledsr.models.runner import choose_backend
from tiledsr.models.rrdbnet import RRDBNet
from tiledsr.models.srvgg import SRVGGNetCompact
from tiledsr.models.weights import detect_architecture, read_shapes

try:
    import ncnn  # noqa: F401

    HAVE_NCNN = True
except ImportError:
    HAVE_NCNN = False
needs_ncnn = pytest.mark.skipif(not HAVE_NCNN, reason="ncnn not installed (pip install tiledsr[ncnn])")


def photo(size: int, name: str = "astronaut") -> np.ndarray:
    """1 x 3 x size x size float32 crop of a scikit-image sample photo, in [0, 1]."""
    image = getattr(data, name)()[60 : 60 + size, 180 : 180 + size]
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255


# --- real weights: the ncnn import reproduces ncnn ------------------------------------


@needs_ncnn
@pytest.mark.parametrize(("name", "size"), [("x4plus", 64), ("x4plus-anime", 128), ("animevideov3", 128)])
def test_torch_port_matches_ncnn(name: str, size: int) -> None:
    model = load_sr_model(name)
    x = photo(size, "chelsea" if name == "animevideov3" else "astronaut")
    ours = make_runner(model, backend="torch")(x)
    theirs = make_runner(model, backend="ncnn", threads=2)(x)
    assert ours.shape == theirs.shape == (1, 3, size * 4, size * 4)
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1 / 255
    assert diff.mean() < 1e-4


@pytest.mark.parametrize(("name", "blocks"), [("x4plus", 23), ("x4plus-anime", 6)])
def test_bundled_rrdbnet_hyperparameters(name: str, blocks: int) -> None:
    param, bin_ = load_sr_model(name).ncnn_files
    net = load_ncnn(param, bin_)
    assert net.arch == "rrdbnet"
    assert net.hparams == {"in_ch": 3, "out_ch": 3, "scale": 4, "num_feat": 64,
                           "num_block": blocks, "num_grow_ch": 32}
    assert len(net.state_dict) == 2 * (6 + 15 * blocks)


def test_bundled_models_are_described_without_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("load_sr_model must not read the weights")

    monkeypatch.setattr(ncnn_import, "load_ncnn", refuse)
    model = load_sr_model("RealESRGAN_x4plus")
    assert (model.name, model.arch, model.scale, model.size_multiple) == ("x4plus", "rrdbnet", 4, 1)
    assert model == load_sr_model("x4plus") and hash(model) == hash(load_sr_model("x4"))
    compact = load_sr_model("realesr-animevideov3")
    assert (compact.name, compact.arch, compact.context) == ("animevideov3", "srvgg", 18)
    assert {row["name"] for row in known_models() if row["available"]} == {
        "x4plus", "x4plus-anime", "animevideov3"}


def _copy_pair(tmp_path: Path, extra: bytes = b"", cut: int = 0) -> tuple[Path, Path]:
    param, bin_ = load_sr_model("animevideov3").ncnn_files
    new_param = Path(shutil.copy(param, tmp_path / "net.param"))
    blob = bin_.read_bytes()
    new_bin = tmp_path / "net.bin"
    new_bin.write_bytes(blob[: len(blob) - cut] + extra)
    return new_param, new_bin


def test_ncnn_bin_is_consumed_exactly(tmp_path: Path) -> None:
    net = load_ncnn(*_copy_pair(tmp_path))
    n_floats = sum(v.numel() for v in net.state_dict.values())
    assert n_floats == 621424
    with pytest.raises(InputError, match="truncated"):
        load_ncnn(*_copy_pair(tmp_path, cut=4))
    with pytest.raises(InputError, match="do not match"):
        load_ncnn(*_copy_pair(tmp_path, extra=b"\0\0\0\0"))


def test_not_an_ncnn_param(tmp_path: Path) -> None:
    (tmp_path / "bad.param").write_text("hello\n")
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(InputError, match="not a text ncnn .param"):
        load_sr_model(tmp_path / "bad.param")


def test_ncnn_param_path_loads_and_bad_bin_is_refused_up_front(tmp_path: Path) -> None:
    param, _ = _copy_pair(tmp_path)
    model = load_sr_model(param)
    assert (model.name, model.arch, model.scale) == ("net", "srvgg", 4)
    param, _ = _copy_pair(tmp_path, cut=8)
    with pytest.raises(InputError, match="truncated"):
        load_sr_model(param)  # checked when described, before any tile runs


def test_compact_context_makes_tiles_exact() -> None:
    model = load_sr_model("animevideov3")
    run = make_runner(model, backend="torch")
    x, c, s = photo(96, "coffee"), model.context, model.scale
    full = run(x)
    tile = run(x[:, :, 32 - c : 64 + c, 32 - c : 64 + c])
    core = tile[:, :, c * s : (c + 32) * s, c * s : (c + 32) * s]
    np.testing.assert_allclose(core, full[:, :, 32 * s : 64 * s, 32 * s : 64 * s], atol=1e-5)


# --- random weights: save, detect, load back ------------------------------------------

CASES = [
    ("rrdbnet", dict(scale=4, num_feat=16, num_block=2, num_grow_ch=8)),
    ("rrdbnet", dict(scale=2, num_feat=16, num_block=2, num_grow_ch=8)),
    ("rrdbnet", dict(scale=1, num_feat=16, num_block=1, num_grow_ch=8)),
    ("srvgg", dict(num_feat=16, num_conv=4, upscale=4, act="prelu")),
    ("srvgg", dict(num_feat=16, num_conv=4, upscale=2, act="relu")),
]


def _random_module(arch: str, kwargs: dict, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    module = RRDBNet(**kwargs) if arch == "rrdbnet" else SRVGGNetCompact(**kwargs)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module.eval()


def _save(path: Path, fmt: str, state: dict, decoy: dict) -> Path:
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path.with_suffix(".safetensors"))
        return path.with_suffix(".safetensors")
    payload = {"params_ema": state, "params": decoy} if fmt == "params_ema" else (
        {"params": state} if fmt == "params" else state)
    torch.save(payload, path.with_suffix(".pth"))
    return path.with_suffix(".pth")


@pytest.mark.parametrize("fmt", ["params_ema", "params", "bare", "safetensors"])
@pytest.mark.parametrize(("arch", "kwargs"), CASES)
def test_random_weights_round_trip(tmp_path: Path, arch: str, kwargs: dict, fmt: str) -> None:
    module = _random_module(arch, kwargs, seed=1)
    decoy = _random_module(arch, kwargs, seed=2).state_dict()
    path = _save(tmp_path / "net", fmt, module.state_dict(), decoy)

    found = detect_architecture(read_shapes(path))
    assert found is not None and found[0] == arch
    assert {k: found[1][k] for k in kwargs} == kwargs
    model = load_sr_model(str(path))
    scale = kwargs.get("scale", kwargs.get("upscale"))
    multiple = {4: 1, 2: 2, 1: 4}[scale] if arch == "rrdbnet" else 1
    assert (model.arch, model.scale, model.size_multiple, model.name) == (arch, scale, multiple, "net")
    assert model.ncnn_files is None
    x = torch.rand(2, 3, 16, 12)
    with torch.inference_mode():
        assert torch.equal(model.build()(x), module(x))


def test_original_esrgan_key_names_are_renamed(tmp_path: Path) -> None:
    module = _random_module("rrdbnet", CASES[0][1], seed=4)
    legacy = {}
    for key, value in module.state_dict().items():
        for new, old in (("body.", "RRDB_trunk."), (".rdb", ".RDB"), ("conv_body.", "trunk_conv."),
                         ("conv_up1.", "upconv1."), ("conv_up2.", "upconv2."), ("conv_hr.", "HRconv.")):
            key = key.replace(new, old)
        legacy[key] = value
    torch.save(legacy, tmp_path / "esrgan.pth")
    x = torch.rand(1, 3, 8, 8)
    with torch.inference_mode():
        assert torch.equal(load_sr_model(tmp_path / "esrgan.pth").build()(x), module(x))


def test_fp16_weights_file_builds_fp32(tmp_path: Path) -> None:
    module = _random_module("srvgg", dict(num_feat=8, num_conv=2, upscale=4), seed=3)
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in module.state_dict().items()}, path)
    built = load_sr_model(path).build()
    assert all(p.dtype == torch.float32 for p in built.parameters())


# --- refusals --------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls open(marker, "w"), i.e. runs code that creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    proof = tmp_path / "proof"
    torch.save({"x": _Payload(proof)}, tmp_path / "proof.pth")
    torch.load(tmp_path / "proof.pth", weights_only=False)  # the payload is real ...
    assert proof.exists()

    marker = tmp_path / "marker"
    state = _random_module("srvgg", dict(num_feat=8, num_conv=2), seed=0).state_dict()
    torch.save({"params_ema": state, "hook": _Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match=r"refusing to load .*evil.pth.*needs code .*\(GLOBAL [a-z.]*open\)"):
        load_sr_model(str(tmp_path / "evil.pth"))
    assert not marker.exists()  # ... and loading never ran it


def test_unknown_architecture_without_spandrel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)  # makes `import spandrel` fail
    path = tmp_path / "odd.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(ModelNotAvailable, match="unrecognised architecture in .*pip install spandrel"):
        load_sr_model(str(path))


@pytest.mark.parametrize(("spec", "message"), [
    ("missing/net.pth", "does not exist"),
    ("https://example.com/RealESRGAN_x4plus.pth", "cannot be downloaded offline"),
])
def test_unavailable_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelNotAvailable, match=message):
        load_sr_model(spec)


def test_not_a_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="junk.pth is not a PyTorch"):
        load_sr_model(str(path))


# --- runners ---------------------------------------------------------------------------


@needs_ncnn
def test_auto_backend_picks_the_fastest_installed_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO, then ncnn, then torch (the order measured in BENCHMARKS.md)."""
    import importlib.util

    model = load_sr_model("animevideov3")
    if importlib.util.find_spec("openvino") is not None:
        assert make_runner(model).backend == "openvino"
        assert make_runner(model, precision="fp16").backend == "ncnn"  # openvino runs fp32 only
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert make_runner(model).backend == "ncnn"
    assert make_runner(model, device="cpu", backend="torch").backend == "torch"
    with pytest.raises(ModelNotAvailable, match=r"pip install tiledsr\[openvino\]"):
        make_runner(model, backend="openvino")


def test_auto_backend_without_ncnn_or_openvino_is_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ncnn", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    model = load_sr_model("animevideov3")
    assert make_runner(model).backend == "torch"
    assert choose_backend(model, "cpu") == ("torch", "openvino is not installed; ncnn is not installed")
    assert choose_backend(model, "cuda")[0] == "torch"
    with pytest.raises(ModelNotAvailable, match=r"pip install tiledsr\[ncnn\]"):
        make_runner(model, backend="ncnn")


def test_runner_argument_errors(tmp_path: Path) -> None:
    model = load_sr_model("animevideov3")
    with pytest.raises(InputError, match="backend"):
        make_runner(model, backend="tensorrt")
    with pytest.raises(InputError, match="precision"):
        make_runner(model, precision="int4")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"torch.cuda.is_available\(\) is False"):
            make_runner(model, device="cuda")
    with pytest.raises(InputError, match="expects an N x 3"):
        make_runner(model, backend="torch")(np.zeros((1, 4, 8, 8), np.float32))
    path = _save(tmp_path / "plain", "bare",
                 _random_module("rrdbnet", CASES[2][1], seed=0).state_dict(), {})
    with pytest.raises(InputError, match="multiples of 4"):
        make_runner(load_sr_model(path))(np.zeros((1, 3, 10, 12), np.float32))
    with pytest.raises(InputError, match="no ncnn files"):
        make_runner(load_sr_model(path), backend="ncnn")


def test_bf16_torch_runner_is_close() -> None:
    model = load_sr_model("animevideov3")
    x = photo(32, "coffee")
    ref = make_runner(model, backend="torch", precision="fp32")(x)
    low = make_runner(model, backend="torch", precision="bf16")(x)
    assert low.dtype == np.float32 and low.shape == ref.shape
    assert np.abs(low - ref).mean() < 0.02
