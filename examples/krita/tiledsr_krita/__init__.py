"""Krita plug-in: upscale the current image or layer with tiledsr (Tools > Scripts).

Registers :class:`~.extension.TiledsrExtension`. The work is done by the tiledsr command,
found through $TILEDSR or PATH (see tiledsr_host.py, copied here by examples/hosts/install.py).
"""
from krita import Krita

from .extension import TiledsrExtension

Krita.instance().addExtension(TiledsrExtension(Krita.instance()))
