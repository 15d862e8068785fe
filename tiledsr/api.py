"""``tiledsr.upscale``: the one-call Python entry point."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from .imageconv import from_any, to_pil
from .pipeline import Pipeline, Target
from .progress import ProgressCallback

__all__ = ["upscale"]


def upscale(src: Any, dst: str | Path | None = None, *, preset: str = "photo-x4", scale: float | None = None,
            width: int | None = None, height: int | None = None, device: str | None = None,
            precision: str | None = None, seed: int | None = None, tile: int | None = None,
            overlap: int | None = None, sets: Sequence[str] = (), progress: ProgressCallback | None = None,
            overwrite: bool = False, format: str | None = None, max_pixels: int | None = None) -> Any:
    """Upscale ``src`` (a file path, PIL image, numpy array or tensor) with ``preset``.

    Returns a PIL image (8-bit, or 16-bit greyscale; 16-bit colour files keep their depth
    only when written to ``dst``). With ``dst``, writes the file atomically, keeping
    bit depth, alpha, ICC profile, EXIF and DPI; it never overwrites an existing file,
    or the input, unless ``overwrite``, and checks ``dst`` before any work. What could not
    be kept (metadata dropped on reading or writing) is reported with ``warnings.warn``.
    """
    from . import io as tio

    overrides = {k: v for k, v in (("tile", tile), ("overlap", overlap)) if v is not None}
    target = Target(scale, width, height) if (scale, width, height) != (None, None, None) else None
    pipe = Pipeline.from_preset(preset, overrides=overrides, sets=sets, device=device, precision=precision,
                                seed=seed, target=target)
    info = None
    if isinstance(src, (str, Path)):
        image, info = tio.read_image(src, max_pixels or tio.DEFAULT_MAX_PIXELS)
    else:
        image = from_any(src)
    if dst is not None:  # refuse a bad destination before the work, not after it
        plan = pipe.plan((image.shape[1], image.shape[0]), image.shape[2])
        tio.check_output(dst, format=format or pipe.preset.output.format, size=plan.output_size,
                         channels=image.shape[2], bit_depth=pipe.preset.output.bit_depth, overwrite=overwrite,
                         inputs=[src] if info is not None else ())
    out = pipe.run_array(image, progress)
    depth = pipe.preset.output.bit_depth or (info.bit_depth if info else 8)
    notes = list(info.notes) if info else []
    if dst is not None:
        notes += tio.write_image(dst, out, bit_depth=depth, format=format or pipe.preset.output.format,
                                 icc_profile=info.icc_profile if info else None,
                                 exif=info.exif if info else None, dpi=info.dpi if info else None,
                                 overwrite=overwrite, inputs=[src] if info is not None else ())
    for note in notes:  # metadata dropped, 16 bits or alpha the format cannot hold
        warnings.warn(f"tiledsr: {note}", stacklevel=2)
    return to_pil(out, depth)
