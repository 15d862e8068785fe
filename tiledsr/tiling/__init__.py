"""Pure tiling: grids, blend weights, accumulator canvases and the tiled runner."""
from .blend import BLENDS, tile_weights
from .canvas import Canvas
from .grid import Tile, TileGrid, make_grid
from .run import output_grid, run_tiled, window

__all__ = ["BLENDS", "Canvas", "Tile", "TileGrid", "make_grid", "output_grid", "run_tiled", "tile_weights", "window"]
