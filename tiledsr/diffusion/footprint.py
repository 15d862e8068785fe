"""What a diffusion stage's models will weigh, known before loading them (for ``plan``).

Parameter counts are read from the safetensors headers of a local folder or the Hugging Face
cache (a few kilobytes, no weights read); for a model that is not here, the published models'
counts by kind (SD 1.x/2.x or SDXL, recognised from the name when no config is at hand).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

__all__ = ["PUBLISHED", "model_kind", "parameter_counts"]

# Parameters of the published models (their configs built with random weights; ControlNets made with
# ControlNetModel.from_unet, the layout of the SD 1.5 tile ControlNet and of full SDXL ones).
PUBLISHED = {
    "sd": {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863, "controlnet": 361_279_120},
    "sdxl": {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
             "vae": 83_653_863, "controlnet": 1_251_014_160},
}


def _folder(model: str, sub: str) -> Path | None:
    """The folder holding ``sub``/config.json of ``model`` (local or cached), or None."""
    from .components import offline_file

    try:
        hit = offline_file(model, f"{sub}/config.json" if sub else "config.json")
    except Exception:  # no huggingface_hub, or an id it refuses: nothing found
        return None
    return Path(hit).parent if hit else None


def _config(model: str, sub: str) -> dict | None:
    folder = _folder(model, sub)
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else None
    except (OSError, ValueError):
        return None


def model_kind(model: str) -> str:
    """"sdxl" or "sd" for the checkpoint ``model``: from its UNet config when it is here, else from its name."""
    cfg = _config(model, "unet")
    if cfg is not None:
        return "sdxl" if cfg.get("addition_embed_type") == "text_time" else "sd"
    return "sdxl" if "xl" in model.lower() else "sd"


def _count(folder: Path) -> int | None:
    """Parameters in the full-precision safetensors files of ``folder`` (headers only), or None."""
    files = [f for f in sorted(folder.glob("*.safetensors")) if f.name.count(".") == 1]  # no .fp16. variants
    if not files:
        return None
    total = 0
    try:
        for f in files:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(n))
            for name, entry in header.items():
                if name != "__metadata__":
                    size = 1
                    for d in entry["shape"]:
                        size *= int(d)
                    total += size
    except (OSError, ValueError, KeyError, struct.error):
        return None
    return total


def parameter_counts(model: str, controlnet: str = "") -> dict[str, int]:
    """Parameters per module ({unet, text_encoder[, text_encoder_2], vae[, controlnet]}) of ``model`` and
    its ``controlnet``: counted from the files when they are here, else the published models'."""
    kind = model_kind(model)
    published = PUBLISHED[kind]
    out = {}
    for sub in ("unet", "text_encoder", "text_encoder_2", "vae"):
        folder = _folder(model, sub)
        found = _count(folder) if folder is not None else None
        if found is not None:
            out[sub] = found
        elif sub in published and (folder is not None or _folder(model, "unet") is None):
            out[sub] = published[sub]  # not here: the published model's
    if controlnet:
        folder = _folder(controlnet, "")
        out["controlnet"] = (_count(folder) if folder is not None else None) or published["controlnet"]
    return out
