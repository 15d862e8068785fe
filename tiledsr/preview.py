"""Draw a plan's tile grid over the input image (for ``tiledsr plan --preview``)."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["draw_grid"]

COLOURS = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (120, 255, 120)]


def draw_grid(image: np.ndarray, plan, min_side: int = 1024) -> np.ndarray:
    """(H, W, C) float32 in [0, 1] -> (h, w, 3) float32 with the first tiled stage's tiles outlined.

    Tiles are drawn in the input's coordinates, the picture enlarged so its long side is at least ``min_side``.
    """
    rgb = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    h, w = rgb.shape[:2]
    zoom = max(1.0, min_side / max(h, w))
    pic = Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)).convert("RGBA")
    pic = pic.resize((round(w * zoom), round(h * zoom)), Image.Resampling.BICUBIC)
    stage = next((s for s in plan.stages if s.grid is not None), None)
    if stage is not None:
        g = stage.grid
        # stage output coordinates -> pipeline input coordinates -> picture
        f = zoom * w / stage.output_size[1], zoom * h / stage.output_size[0]
        overlay = Image.new("RGBA", pic.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        for t in g.tiles:
            r, c = divmod(t.index, len(g.xs))
            colour = COLOURS[(r % 2) * 2 + c % 2]
            box = (t.x * f[0], t.y * f[1], (t.x + t.w) * f[0] - 1, (t.y + t.h) * f[1] - 1)
            draw.rectangle(box, fill=colour + (28,), outline=colour + (255,), width=2)
            draw.text((box[0] + 6, box[1] + 4), str(t.index), fill=colour + (255,))
        pic = Image.alpha_composite(pic, overlay)
    return np.asarray(pic.convert("RGB"), dtype=np.float32) / 255.0
