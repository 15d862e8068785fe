"""Load diffusion components (UNet, VAE, text encoders, tokenizers, scheduler; a ControlNet) with
diffusers' classes.

A model is a local diffusers folder (``unet/``, ``vae/``, ... subfolders) or a hub id looked up
in the usual Hugging Face cache only: nothing is downloaded at run time. A model that is not
there raises :class:`~tiledsr.errors.ModelNotAvailable` (exit code 3) naming how to get it.
Loaded components are cached per (model, device, dtype), so stages sharing a model share weights.
An SDXL checkpoint is recognised by its folder: a ``text_encoder_2/`` and a UNet with ``text_time``
added conditioning.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, ModelNotAvailable

__all__ = ["Components", "controlnet_available", "controlnet_missing", "is_available", "load_components", "load_controlnet",
           "missing_message", "offline_file", "torch_dtype"]

_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_CACHE: dict[tuple, "Components"] = {}


@dataclass(frozen=True)
class Components:
    """Diffusers components on ``device``; the UNet and text encoder in ``dtype``, the VAE in float32."""

    model: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    device: Any
    dtype: Any
    low_res_scheduler: Any = None  # the x4 upscaler's DDPM scheduler that noises its input; else None
    text_encoder_2: Any = None  # SDXL's second (projection) text encoder and its tokenizer; else None
    tokenizer_2: Any = None
    flags: Any = None  # model_index.json's pipeline flags (force_zeros_for_empty_prompt, ...), a dict

    @property
    def kind(self) -> str:
        """"sdxl" for a UNet with text_time added conditioning (SDXL base or refiner), else "sd"."""
        return "sdxl" if getattr(self.unet.config, "addition_embed_type", None) == "text_time" else "sd"


def torch_dtype(precision: str, device: str):
    """Precision name -> torch dtype: auto is fp16 on CUDA and fp32 elsewhere."""
    import torch

    if precision == "auto":
        precision = "fp16" if device.startswith("cuda") else "fp32"
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _is_hub_id(model: str) -> bool:
    return not Path(model).exists() and model.count("/") == 1 and not model.startswith((".", "/", "~"))


def offline_file(model: str, name: str) -> str | None:
    """Path of ``name`` inside the local folder or cached hub repository ``model``, or None (no download)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path / name) if (path / name).is_file() else None
    if not _is_hub_id(model):
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(model, name)
    return hit if isinstance(hit, str) and os.path.isfile(hit) else None


def is_available(model: str) -> bool:
    """True if ``model`` is a local folder with a ``unet/`` subfolder, or a cached hub id (no download)."""
    return offline_file(model, "unet/config.json") is not None


def controlnet_available(name: str) -> bool:
    """True if ``name`` is a local ControlNet folder (``config.json`` at its top) or a cached hub id."""
    return offline_file(name, "config.json") is not None


def controlnet_missing(name: str, why: str = "not a local folder and not in the Hugging Face cache") -> str:
    """One line saying that the ControlNet ``name`` is not available offline, and how to get it."""
    if _is_hub_id(name):
        how = f"run `tiledsr models fetch {name}` while online, or pass a local ControlNetModel folder"
    else:
        how = "pass a folder holding a diffusers ControlNetModel (config.json and its weights)"
    return f"ControlNet {name!r} is not available offline ({why}); {how}"


_CONTROL_CACHE: dict[tuple, Any] = {}


def load_controlnet(name: str, device: str, precision: str = "auto"):
    """Load (or reuse) the diffusers ``ControlNetModel`` ``name`` onto ``device`` in eval mode, in the
    precision's dtype; ModelNotAvailable (exit 3) naming it if it is not available offline."""
    dtype = torch_dtype(precision, device)
    key = (name, device, str(dtype))
    if key in _CONTROL_CACHE:
        return _CONTROL_CACHE[key]
    if not controlnet_available(name):
        raise ModelNotAvailable(controlnet_missing(name))
    import torch
    from diffusers import ControlNetModel

    _quiet_libraries()
    local = Path(name).expanduser()
    try:
        net = ControlNetModel.from_pretrained(str(local) if local.is_dir() else name, torch_dtype=dtype,
                                              local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelNotAvailable(controlnet_missing(name, " ".join(str(exc).split())[:200])) from exc
    net = net.to(torch.device(device)).eval()
    _CONTROL_CACHE[key] = net
    return net


def missing_message(model: str, why: str = "not a local folder and not in the Hugging Face cache") -> str:
    """One line saying that ``model`` is not available offline, and how to get it."""
    if _is_hub_id(model):
        how = f"run `tiledsr models fetch {model}` while online, or pass a local diffusers folder"
    else:
        how = "pass a diffusers folder with unet/, vae/, text_encoder/, tokenizer/ and scheduler/ subfolders"
    return f"diffusion model {model!r} is not available offline ({why}); {how}"


def _missing(model: str, why: str) -> ModelNotAvailable:
    return ModelNotAvailable(missing_message(model, why))


def load_components(model: str, device: str, precision: str = "auto") -> Components:
    """Load (or reuse) every component of ``model`` onto ``device``; ModelNotAvailable if absent."""
    dtype = torch_dtype(precision, device)
    key = (model, device, str(dtype))
    if key in _CACHE:
        return _CACHE[key]
    if not is_available(model):
        raise _missing(model, "not a local folder and not in the Hugging Face cache")
    try:
        parts = _load_parts(str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model, dtype)
    except (OSError, ValueError) as exc:
        raise _missing(model, " ".join(str(exc).split())[:200]) from exc
    import torch

    dev = torch.device(device)
    for name in ("unet", "text_encoder", "vae"):
        if parts[name] is not None:
            parts[name].to(dev).eval()
    for name in ("text_encoder_2",):
        if parts[name] is not None:
            parts[name].to(dev).eval()
    comp = Components(model, parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"],
                      parts["scheduler"], dev, dtype, parts["low_res_scheduler"], parts["text_encoder_2"],
                      parts["tokenizer_2"], _flags(model))
    _CACHE[key] = comp
    return comp


def _quiet_libraries() -> None:
    """The library never prints: silence diffusers' and transformers' progress bars and notices."""
    import diffusers
    import transformers

    for lib in (diffusers.utils.logging, transformers.utils.logging):
        lib.set_verbosity_error()
        lib.disable_progress_bar()


def _flags(model: str) -> dict:
    """The pipeline flags of ``model``'s model_index.json ({} when there is none)."""
    import json

    path = offline_file(model, "model_index.json")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    except (OSError, ValueError):
        data = {}
    return {k: v for k, v in data.items() if not isinstance(v, list) and not k.startswith("_")}


def _load_parts(source: str, dtype) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    _quiet_libraries()
    offline = {"local_files_only": True}
    scheduler = _load_scheduler(source, "scheduler")
    try:
        low_res_scheduler = _load_scheduler(source, "low_res_scheduler")
    except OSError:  # only the x4 upscaler has one
        low_res_scheduler = None
    sdxl = offline_file(source, "text_encoder_2/config.json") is not None
    first = offline_file(source, "text_encoder/config.json") is not None or not sdxl  # a refiner has none
    return {
        "unet": UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **offline),
        # The VAE always runs in float32: SD's and SDXL's VAEs overflow in float16 (force_upcast).
        "vae": AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32, **offline),
        "text_encoder": CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=dtype,
                                                      **offline) if first else None,
        "tokenizer": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **offline) if first else None,
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
            source, subfolder="text_encoder_2", torch_dtype=dtype, **offline) if sdxl else None,
        "tokenizer_2": CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2", **offline) if sdxl else None,
        "scheduler": scheduler,
        "low_res_scheduler": low_res_scheduler,
    }


def _load_scheduler(source: str, subfolder: str):
    from diffusers import DDIMScheduler

    config = DDIMScheduler.load_config(source, subfolder=subfolder, local_files_only=True)  # any class reads it
    return _scheduler_class(config).from_config(config)


def _scheduler_class(config: dict):
    import diffusers

    name = config.get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise InputError(f"unknown scheduler class {name!r} in the model's scheduler/scheduler_config.json")
    return cls
