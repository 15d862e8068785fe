"""What to export, how to call tiledsr and what to name the result: no Krita, no Qt.

Kept apart from the Krita calls so that it can be tested with plain Python.
"""
import os
import tempfile
from dataclasses import dataclass
from typing import Optional

try:  # installed: install.py copies tiledsr_host.py into this package
    from . import tiledsr_host as host
except ImportError:  # run from the repository, with examples/hosts on sys.path
    import tiledsr_host as host  # type: ignore[no-redef]

__all__ = ["ExportChoice", "Settings", "TempFiles", "export_choice", "host", "layer_name", "options_for"]

SIZES = ("2x", "4x", "8x")  # offered in the dialog besides a custom size or print size
DEFAULT_PRINT = "24x36in@300"


@dataclass
class Settings:
    """What the dialog asks: ``preset``; ``size`` as typed ("4x", "24x36in@300", "4096x2048");
    ``source`` "image" (the flattened image) or "layer" (the active layer only);
    ``destination`` "document" (a new document) or "layer" (a new layer; the document is
    scaled to the new size first)."""

    preset: str = "photo-x4"
    size: str = "4x"
    source: str = "image"
    destination: str = "document"

    def check(self) -> None:
        """OptionsError unless every field has a value tiledsr and the plug-in understand."""
        host.parse_target(self.size)
        if self.source not in ("image", "layer"):
            raise host.OptionsError("source: expected image or layer, got %r" % (self.source,))
        if self.destination not in ("document", "layer"):
            raise host.OptionsError("destination: expected document or layer, got %r" % (self.destination,))


@dataclass(frozen=True)
class ExportChoice:
    """How a document goes to tiledsr: the file ``ext`` and, when Krita's colour space is not
    one tiledsr reads (CMYK, Lab, XYZ, YCbCr), the model/depth of a converted copy."""

    ext: str
    convert_model: Optional[str] = None
    convert_depth: Optional[str] = None

    @property
    def needs_conversion(self) -> bool:
        return self.convert_model is not None


def export_choice(color_model: str, color_depth: str) -> ExportChoice:
    """PNG for 8- and 16-bit integer documents (alpha kept), TIFF for 16/32-bit float ones
    (tiledsr reads float TIFF and writes 16-bit); other colour models are converted to RGBA
    at the same depth first."""
    model = color_model.upper()
    depth = color_depth.upper()
    ext = ".png" if depth in ("U8", "U16") else ".tif"
    if model in ("RGBA", "GRAYA"):
        return ExportChoice(ext)
    return ExportChoice(ext, "RGBA", depth if depth in ("U8", "U16", "F16", "F32") else "U16")


def options_for(settings: Settings, src: str, out: str, preview: Optional[str] = None) -> "host.Options":
    """The tiledsr run for ``settings``: ``src`` to ``out`` (PNG), overwriting our temp file."""
    target = host.parse_target(settings.size)
    return host.Options(src, out, preset=settings.preset, overwrite=True, preview=preview, **target)


def layer_name(settings: Settings) -> str:
    """The new layer's (or document's) name, e.g. ``"tiledsr photo-x4 4x"``."""
    return "tiledsr %s %s" % (settings.preset, settings.size.strip() or "preset scale")


class TempFiles:
    """A private temporary folder for one run: ``source(ext)``, ``output`` and ``preview``
    paths inside it; :meth:`remove` deletes it (also used as a context manager)."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="tiledsr-krita-")

    def source(self, ext: str) -> str:
        return os.path.join(self.folder, "source" + ext)

    @property
    def output(self) -> str:
        return os.path.join(self.folder, "upscaled.png")

    @property
    def preview(self) -> str:
        return os.path.join(self.folder, "preview.jpg")

    def remove(self) -> None:
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "TempFiles":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
