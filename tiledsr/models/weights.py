"""Read ``.pth`` / ``.safetensors`` weights safely and recognise their architecture.

``.pth`` files are read with ``torch.load(weights_only=True)``: a file that needs
code to be unpickled is refused, never executed. The architecture (RRDBNet or
SRVGGNetCompact) and its hyper-parameters are derived from key names and shapes.
"""
from __future__ import annotations

import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiledsr.errors import ModelNotAvailable
from tiledsr.models.rrdbnet import RRDBNet
from tiledsr.models.srvgg import SRVGGNetCompact

__all__ = ["build_network", "detect_architecture", "read_shapes", "read_state_dict", "spandrel_descriptor"]

Shapes = Mapping[str, tuple[int, ...]]
_ARCHS: dict[str, type[nn.Module]] = {"rrdbnet": RRDBNet, "srvgg": SRVGGNetCompact}
_WRAPPERS = ("params_ema", "params", "state_dict")
_LEGACY_RRDB = (("RRDB_trunk.", "body."), (".RDB", ".rdb"), ("trunk_conv.", "conv_body."),
                ("upconv1.", "conv_up1."), ("upconv2.", "conv_up2."), ("HRconv.", "conv_hr."))


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.ckpt`` or ``.safetensors`` file, on the CPU.

    Unwraps ``params_ema`` (preferred), ``params`` or ``state_dict`` and renames the
    original ESRGAN keys (``RRDB_trunk``, ``trunk_conv``, ...) to Real-ESRGAN ones.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailable(f"model file {path} does not exist; check the path")
    raw = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pickle(path, mmap)
    for key in _WRAPPERS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if not isinstance(raw, Mapping) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelNotAvailable(f"{path} does not hold a state dict of tensors; pass a weights file")
    return _rename_legacy(dict(raw))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelNotAvailable(f"cannot read {path} as safetensors ({exc}); check the file") from exc


def _read_pickle(path: Path, mmap: bool) -> Any:
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), "unsafe pickle")
        raise ModelNotAvailable(f"refusing to load {path}: it needs code to be unpickled ({detail}); "
                                "re-save it as .safetensors or a plain state dict") from exc
    except Exception as exc:  # torch.load raises many types for a corrupt file; re-raised, chained
        raise ModelNotAvailable(f"cannot read {path} as a PyTorch weights file "
                                f"({type(exc).__name__}: {exc}); check the file") from exc


def _rename_legacy(state: dict[str, Any]) -> dict[str, Any]:
    if not any(k.startswith("RRDB_trunk.") for k in state):
        return state
    renamed = {}
    for key, value in state.items():
        for old, new in _LEGACY_RRDB:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a weights file, reading as little as possible (header / mmap)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {k: tuple(v.shape) for k, v in read_state_dict(path, mmap=True).items()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelNotAvailable(f"cannot read {path} as safetensors ({exc}); check the file") from exc
    return _rename_legacy(shapes)


def detect_architecture(shapes: Shapes) -> tuple[str, dict[str, int | str]] | None:
    """("rrdbnet" | "srvgg", constructor kwargs) when the keys and shapes match exactly, else None."""
    for guess in (_guess_rrdbnet, _guess_srvgg):
        found = guess(shapes)
        if found is not None and _expected_shapes(*found) == dict(shapes):
            return found
    return None


def _guess_rrdbnet(shapes: Shapes) -> tuple[str, dict[str, int | str]] | None:
    if not {"conv_first.weight", "conv_last.weight", "body.0.rdb1.conv1.weight"} <= shapes.keys():
        return None
    num_feat, first_in = shapes["conv_first.weight"][:2]
    out_ch = shapes["conv_last.weight"][0]
    scale = {out_ch: 4, out_ch * 4: 2, out_ch * 16: 1}.get(first_in)
    if scale is None:
        return None
    num_block = sum(1 for k in shapes if re.fullmatch(r"body\.\d+\.rdb1\.conv1\.weight", k))
    return "rrdbnet", {"in_ch": out_ch, "out_ch": out_ch, "scale": scale, "num_feat": num_feat,
                       "num_block": num_block, "num_grow_ch": shapes["body.0.rdb1.conv1.weight"][0]}


def _guess_srvgg(shapes: Shapes) -> tuple[str, dict[str, int | str]] | None:
    convs = sorted(int(m[1]) for k, s in shapes.items()
                   if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) and len(s) == 4)
    if len(convs) < 2 or convs[0] != 0:
        return None
    num_feat, in_ch = shapes["body.0.weight"][:2]
    upscale = math.isqrt(shapes[f"body.{convs[-1]}.weight"][0] // in_ch)
    if upscale < 1:
        return None
    act = "prelu" if shapes.get("body.1.weight") == (num_feat,) else "relu"
    return "srvgg", {"in_ch": in_ch, "out_ch": in_ch, "num_feat": num_feat,
                     "num_conv": (convs[-1] - 2) // 2, "upscale": upscale, "act": act}


def _expected_shapes(arch: str, hparams: dict[str, int | str]) -> dict[str, tuple[int, ...]] | None:
    try:
        with torch.device("meta"):
            module = _ARCHS[arch](**hparams)
    except (ValueError, RuntimeError):
        return None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_network(arch: str, hparams: Mapping[str, int | str],
                  state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """fp32 CPU module of ``arch`` in eval mode with ``state_dict`` loaded (strict)."""
    module = _ARCHS[arch](**hparams)
    module.load_state_dict(state_dict, strict=True)
    return module.float().eval().requires_grad_(False)


def spandrel_descriptor(state_dict: Mapping[str, torch.Tensor], path: Path) -> Any:
    """spandrel's model descriptor for an architecture tiledsr does not know itself."""
    try:
        import spandrel
    except ImportError as exc:
        raise ModelNotAvailable(f"unrecognised architecture in {path}; "
                                "pip install spandrel to load other architectures") from exc
    except Exception as exc:  # e.g. a broken torchvision underneath; re-raised, chained
        raise ModelNotAvailable(f"unrecognised architecture in {path}, and spandrel failed to import "
                                f"({type(exc).__name__}: {exc}); repair or uninstall spandrel") from exc
    try:
        return spandrel.ModelLoader().load_from_state_dict(dict(state_dict))
    except Exception as exc:  # spandrel's own errors have no common base; re-raised, chained
        raise ModelNotAvailable(f"unrecognised architecture in {path}: spandrel could not load it "
                                f"({type(exc).__name__}: {exc})") from exc
