"""Stage registry: built-in stage types and third-party ones from the ``tiledsr.stages`` entry points.

Stage modules are imported only when their type is named.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from ..config import closest
from ..errors import PresetError
from .base import Runtime, Stage, StageTiling, Tiling

__all__ = ["Runtime", "Stage", "StageTiling", "Tiling", "stage_class", "stage_types"]

_BUILTIN = {
    "resize": "tiledsr.stages.resize:ResizeStage",
    "sr": "tiledsr.stages.sr:SRStage",
    "latent-x2": "tiledsr.stages.latent_x2:LatentX2Stage",
    "img2img": "tiledsr.stages.img2img:Img2ImgStage",
    "sd-x4": "tiledsr.stages.sd_x4:SDX4Stage",
    "txt2img": "tiledsr.stages.txt2img:Txt2ImgStage",
    "colorfix": "tiledsr.stages.colorfix:ColorfixStage",
}
ENTRY_POINT_GROUP = "tiledsr.stages"


def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def stage_types() -> list[str]:
    """Names of every stage type: built-in first, then plugins."""
    return list(_BUILTIN) + sorted(set(_plugins()) - set(_BUILTIN))


def stage_class(name: str, where: str = "stage") -> type[Stage]:
    """The Stage subclass for type ``name``; PresetError naming the closest type if unknown."""
    if name in _BUILTIN:
        module, attr = _BUILTIN[name].split(":")
        return getattr(importlib.import_module(module), attr)
    plugin = _plugins().get(name)
    if plugin is None:
        raise PresetError(
            f"{where}: unknown stage type {name!r}{closest(name, stage_types())}; "
            f"known types: {', '.join(stage_types())}"
        )
    try:
        return plugin.load()
    except Exception as exc:  # a broken third-party plugin
        raise PresetError(f"{where}: stage plugin {name!r} ({plugin.value}) failed to load: {exc}") from exc
