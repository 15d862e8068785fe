"""Read ``.pth`` / ``.safetensors`` weights safely and recognise their architecture.

``.pth`` files are read with ``torch.load(weights_only=True)``: a file that needs
code to be unpickled is refused, never executed. The format is decided by the first
bytes, not the suffix (PyTorch zip ``PK\\x03\\x04``, legacy pickle ``\\x80``, safetensors
8-byte little-endian header length then ``{``). A file that is not valid weights is an
InputError (bad input, exit 2); ModelNotAvailable (exit 3) is kept for what cannot be
obtained (a missing file, spandrel not installed). The architecture (RRDBNet or
SRVGGNetCompact) and its hyper-parameters are derived from key names and shapes.
"""
from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tiledsr.errors import InputError, ModelNotAvailable, as_out_of_memory
from tiledsr.text import brief, show
from tiledsr.models.rrdbnet import RRDBNet
from tiledsr.models.srvgg import SRVGGNetCompact

__all__ = ["build_network", "detect_architecture", "read_shapes", "read_state_dict", "sniff",
           "spandrel_descriptor"]

Shapes = Mapping[str, tuple[int, ...]]
_ARCHS: dict[str, type[nn.Module]] = {"rrdbnet": RRDBNet, "srvgg": SRVGGNetCompact}
_WRAPPERS = ("params_ema", "params", "state_dict")
_LEGACY_RRDB = (("RRDB_trunk.", "body."), (".RDB", ".rdb"), ("trunk_conv.", "conv_body."),
                ("upconv1.", "conv_up1."), ("upconv2.", "conv_up2."), ("HRconv.", "conv_hr."))
_LOOKS_LIKE = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
               (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"RIFF", "a RIFF (WebP) file"),
               (b"7767517", "an ncnn .param file"), (b"\x1f\x8b", "a gzip archive"), (b"PK", "a zip archive"))
_ENFORCE = re.compile(r"^\[enforce fail at [^\]]*\]\s*\.?\s*")


def sniff(path: Path) -> str:
    """"zip" (PyTorch), "pickle" (legacy torch.save) or "safetensors", from the first bytes;
    InputError naming what the file looks like otherwise."""
    try:
        with open(path, "rb") as handle:
            head, size = handle.read(16), os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise InputError(f"cannot read model file {show(path)} ({brief(exc)}); check the file") from exc
    if not head:
        raise InputError(f"model file {show(path)} is empty; pass a .pth or .safetensors weights file")
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[0] == 0x80 and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if len(head) > 8 and head[8:9] == b"{":
        length = int.from_bytes(head[:8], "little")
        if length + 8 > size:
            raise InputError(f"{show(path)}: its safetensors header claims {length} bytes but the file has "
                             f"{size}; the file is truncated or not safetensors")
        return "safetensors"
    looks = next((f"is {what}, not" for magic, what in _LOOKS_LIKE if head.startswith(magic)), "is not")
    raise InputError(f"{show(path)} {looks} a PyTorch or safetensors weights file (no torch zip, pickle or "
                     "safetensors header); pass a .pth or .safetensors checkpoint")


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.ckpt`` or ``.safetensors`` file, on the CPU.

    Unwraps ``params_ema`` (preferred), ``params`` or ``state_dict`` and renames the
    original ESRGAN keys (``RRDB_trunk``, ``trunk_conv``, ...) to Real-ESRGAN ones.
    ModelNotAvailable if the file is missing; InputError if it is not valid weights.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailable(f"model file {show(path)} does not exist; check the path")
    kind = sniff(path)
    raw = _read_safetensors(path) if kind == "safetensors" else _read_pickle(path, mmap and kind == "zip")
    for key in _WRAPPERS:
        if isinstance(raw, Mapping) and isinstance(raw.get(key), Mapping):
            raw = raw[key]
            break
    if (not isinstance(raw, Mapping) or not raw
            or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in raw.items())):
        raise InputError(f"{show(path)} does not hold a state dict of tensors; pass a weights file")
    return _rename_legacy(dict(raw))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _invalid(path, "safetensors", exc) from exc


def _invalid(path: Path, kind: str, exc: BaseException) -> Exception:
    """The error for a file that cannot be read as ``kind``: OutOfMemory or InputError."""
    oom = as_out_of_memory(exc, f"{show(path)} while reading it", "free some memory")
    if oom is not None:
        return oom
    if isinstance(exc, EOFError):
        detail = "it ends too early"
    else:
        detail = brief(exc if isinstance(exc, OSError) else _ENFORCE.sub("", str(exc)) or type(exc).__name__)
    return InputError(f"{show(path)} is not a valid {kind} file ({detail}); check or re-export it")


def _read_pickle(path: Path, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            raise InputError(f"{show(path)} is not a valid PyTorch weights file (its pickle data is not "
                             "a checkpoint of tensors); check the file") from exc
        raise InputError(f"refusing to load {show(path)}: it needs code to be unpickled "
                         f"(GLOBAL {show(found[1], 80)}); "
                         "re-save it as .safetensors or a plain state dict") from exc
    except Exception as exc:  # torch.load raises many types for a corrupt file; re-raised, chained
        raise _invalid(path, "PyTorch weights", exc) from exc


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
    if not path.is_file() or sniff(path) != "safetensors":
        return {k: tuple(v.shape) for k, v in read_state_dict(path, mmap=True).items()}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _invalid(path, "safetensors", exc) from exc
    if not shapes:
        raise InputError(f"{show(path)} holds no tensors; pass a weights file")
    return _rename_legacy(shapes)


def detect_architecture(shapes: Shapes) -> tuple[str, dict[str, int | str]] | None:
    """("rrdbnet" | "srvgg", constructor kwargs) when the keys and shapes match exactly, else None."""
    for guess in (_guess_rrdbnet, _guess_srvgg):
        try:
            found = guess(shapes)
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError):  # odd shapes: not this one
            continue
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
    except (ValueError, RuntimeError, TypeError):
        return None
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def build_network(arch: str, hparams: Mapping[str, int | str],
                  state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """fp32 CPU module of ``arch`` in eval mode with ``state_dict`` loaded (strict)."""
    module = _ARCHS[arch](**hparams)
    try:
        module.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError) as exc:  # e.g. tensors of a dtype that cannot be copied
        oom = as_out_of_memory(exc, f"{arch} while loading its weights", "free some memory")
        if oom is not None:
            raise oom from exc
        raise InputError(f"the weights do not fit {arch} ({brief(exc)}); check the file") from exc
    return module.float().eval().requires_grad_(False)


def spandrel_descriptor(state_dict: Mapping[str, torch.Tensor], path: Path) -> Any:
    """spandrel's model descriptor for an architecture tiledsr does not know itself.

    ModelNotAvailable when spandrel is not importable, InputError when it does not know the file.
    """
    try:
        import spandrel
    except ImportError as exc:
        raise ModelNotAvailable(f"unrecognised architecture in {show(path)}; "
                                "pip install spandrel to load other architectures") from exc
    except Exception as exc:  # e.g. a broken torchvision underneath; re-raised, chained
        raise ModelNotAvailable(f"unrecognised architecture in {show(path)}, and spandrel failed to import "
                                f"({type(exc).__name__}: {brief(exc)}); repair or uninstall spandrel") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spandrel.ModelLoader().load_from_state_dict(dict(state_dict))
    except Exception as exc:  # spandrel's own errors have no common base; re-raised, chained
        raise InputError(f"unrecognised architecture in {show(path)}: spandrel could not load it "
                         f"({type(exc).__name__}: {brief(exc)})") from exc
