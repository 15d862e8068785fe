"""tiledsr: tiled 2x/4x/8x image upscaling that never needs more memory than one tile.

>>> import tiledsr
>>> img = tiledsr.upscale("in.png", "out.png", preset="photo-x4")

Names are imported on first use, so ``import tiledsr`` (and the command line's start-up) is quick.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Cancelled", "InputError", "ModelNotAvailable", "OutOfMemory", "Pipeline", "Plan", "PresetError",
           "ProgressEvent", "Target", "TiledsrError", "upscale"]
__version__ = "0.1.0"

_WHERE = {"Cancelled": "errors", "InputError": "errors", "ModelNotAvailable": "errors", "OutOfMemory": "errors",
          "Pipeline": "pipeline", "Plan": "pipeline", "PresetError": "errors", "ProgressEvent": "progress",
          "Target": "pipeline", "TiledsrError": "errors", "upscale": "api"}

if TYPE_CHECKING:
    from .api import upscale
    from .errors import Cancelled, InputError, ModelNotAvailable, OutOfMemory, PresetError, TiledsrError
    from .pipeline import Pipeline, Plan, Target
    from .progress import ProgressEvent


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tiledsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
