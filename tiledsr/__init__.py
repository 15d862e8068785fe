"""tiledsr: tiled 2x/4x/8x image upscaling that never needs more memory than one tile.

>>> import tiledsr
>>> img = tiledsr.upscale("in.png", "out.png", preset="photo-x4")
"""
from .api import upscale
from .errors import TiledsrError
from .pipeline import Pipeline, Plan, Target
from .progress import ProgressEvent

__all__ = ["Pipeline", "Plan", "ProgressEvent", "Target", "TiledsrError", "upscale"]
__version__ = "0.1.0"
