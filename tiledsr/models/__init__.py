"""Super-resolution models: describe (:func:`load_sr_model`), list, and run them."""
from __future__ import annotations

from tiledsr.models.registry import SRModel, known_models, load_sr_model
from tiledsr.models.runner import Runner, make_runner

__all__ = ["Runner", "SRModel", "known_models", "load_sr_model", "make_runner"]
