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
            overwrite: bool = False, format: str | None = None, max_pixels: int | None = None,
            memory_budget: int | str | None = None, print_size: str | None = None) -> Any:
    """Upscale ``src`` (a file path, PIL image, numpy array or tensor) with ``preset``.

    Returns a PIL image (8-bit, or 16-bit greyscale; 16-bit colour files keep their depth
    only when written to ``dst``). With ``dst`` the file is written atomically as the last
    stage's rows come, so memory follows the tiles, not the image (a file ``src`` is read by
    row bands too), and the image returned is the written file opened lazily by Pillow (its
    pixels are read only when used; None where Pillow cannot open it, e.g. 16-bit colour TIFF). It keeps bit depth, alpha, ICC profile, EXIF and DPI;
    it never overwrites an existing file, or the input, unless ``overwrite``, and checks
    ``dst`` before any work. ``memory_budget``: bytes or ``"6GB"`` (tiles and batches are
    fitted to it); ``print_size``: ``"24x36in@300"`` sets the size and the DPI written.
    What could not be kept (metadata dropped on reading or writing) is reported with
    ``warnings.warn``.
    """
    from . import io as tio

    overrides = {k: v for k, v in (("tile", tile), ("overlap", overlap)) if v is not None}
    target = Target(scale, width, height) if (scale, width, height) != (None, None, None) else None
    pipe = Pipeline.from_preset(preset, overrides=overrides, sets=sets, device=device, precision=precision,
                                seed=seed, target=target, memory_budget=memory_budget, print_size=print_size)
    info, image = None, None
    if isinstance(src, (str, Path)):
        from .tiling.store import RowsStore

        rows = tio.open_rows(src, max_pixels or tio.DEFAULT_MAX_PIXELS)
        image, info = RowsStore(rows), rows.info
    else:
        image = from_any(src)
    try:
        return _run(pipe, image, info, src, dst, progress, overwrite, format)
    finally:
        if info is not None:
            image.close()


def _run(pipe, image, info, src, dst, progress, overwrite: bool, format: str | None) -> Any:
    from . import io as tio

    h, w, c = image.shape
    depth = pipe.preset.output.bit_depth or (info.bit_depth if info else 8)
    notes = list(info.notes) if info else []
    inputs = [src] if info is not None else ()
    if dst is None:
        from .tiling.store import collect

        out = collect(pipe.stream(image, progress)[1])
    else:  # refuse a bad destination before the work, not after it
        plan = pipe.plan((w, h), c)
        fmt = tio.check_output(dst, format=format or pipe.preset.output.format, size=plan.output_size, channels=c,
                               bit_depth=pipe.preset.output.bit_depth, overwrite=overwrite, inputs=inputs)
        shape, bands = pipe.stream(image, progress)
        notes += tio.write_bands(dst, bands, size=shape[:2], channels=shape[2], bit_depth=depth, format=fmt,
                                 icc_profile=info.icc_profile if info else None, exif=info.exif if info else None,
                                 dpi=pipe.print_dpi() or (info.dpi if info else None), overwrite=overwrite,
                                 inputs=inputs)
        notes += plan.notes
    for note in notes:  # metadata dropped, 16 bits or alpha the format cannot hold
        warnings.warn(f"tiledsr: {note}", stacklevel=3)
    return _opened(dst) if dst is not None else to_pil(out, depth)


def _opened(dst) -> Any:
    """The written file as a lazily loaded PIL image (no pixel limit: it is our own output), or None."""
    from PIL import Image

    if str(dst) == "-":
        return None
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        return Image.open(dst)
    except Exception:  # noqa: BLE001 - a layout Pillow does not read
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = saved
