"""The Krita side of an upscale, without any dialog: export -> tiledsr -> result.

:func:`export_source` writes the document (flattened) or the active layer to a temporary
PNG (8/16-bit integer, alpha kept) or TIFF (float documents); :func:`run_tiledsr` runs
tiledsr through :mod:`tiledsr_host`; :func:`open_result` opens the upscaled file as a new
document or adds it as a new layer. :func:`upscale_document` does all three in a row, which
is what the smoke test calls; the extension runs tiledsr in a worker thread between them.
All Krita calls must happen in the GUI thread (everything here except :func:`run_tiledsr`).
"""
from typing import Callable, Optional

from krita import InfoObject, Krita  # noqa: F401 - Krita's own module, only inside Krita

from .plan import ExportChoice, Settings, TempFiles, export_choice, host, layer_name, options_for

__all__ = ["UpscaleError", "export_source", "open_result", "run_tiledsr", "upscale_document"]


class UpscaleError(RuntimeError):
    """Something the user should read: the export failed, tiledsr failed, the result did not open."""


def export_source(doc, settings: Settings, files: TempFiles) -> str:
    """Write what ``settings.source`` names (the flattened image or the active layer) to a file
    in ``files`` at its colour depth with alpha; returns its path.

    A layer goes through a temporary document holding a copy of its pixels (``Node.save``
    opens the export options dialog, and waits forever for it when there is no screen)."""
    layer = settings.source == "layer"
    node = _active_node(doc) if layer else None
    if layer and node is None:
        raise UpscaleError("there is no layer to upscale")
    model, depth = (node.colorModel(), node.colorDepth()) if layer else (doc.colorModel(), doc.colorDepth())
    choice = export_choice(model, depth)
    path = files.source(choice.ext)
    source = _layer_document(doc, node) if layer else (doc.clone() if choice.needs_conversion else doc)
    was_batch = source.batchmode()
    try:
        if choice.needs_conversion:
            _convert(source, choice)
        source.setBatchmode(True)  # no export options dialog
        source.waitForDone()
        ok = source.exportImage(path, _export_info(choice))
    finally:
        if source is doc:
            doc.setBatchmode(was_batch)
        else:
            source.close()
    if not ok:
        raise UpscaleError("Krita could not export the %s to %s" % (settings.source, path))
    return path


def _layer_document(doc, node):
    """A new document of ``doc``'s size and resolution holding a copy of ``node``'s pixels."""
    width, height = doc.width(), doc.height()
    copy = Krita.instance().createDocument(width, height, "tiledsr source", node.colorModel(), node.colorDepth(),
                                           node.colorProfile(), doc.xRes())
    if copy is None or not copy.topLevelNodes():
        raise UpscaleError("Krita could not make a %s %s document for the layer" % (node.colorModel(),
                                                                                   node.colorDepth()))
    copy.topLevelNodes()[0].setPixelData(node.pixelData(0, 0, width, height), 0, 0, width, height)
    copy.refreshProjection()
    return copy


def _convert(doc, choice: ExportChoice) -> None:
    """A CMYK/Lab/XYZ/YCbCr copy converted to RGBA at ``choice``'s depth (sRGB-like profile)."""
    profiles = Krita.instance().profiles(choice.convert_model, choice.convert_depth)
    srgb = [p for p in profiles if "srgb" in p.lower()] or profiles
    if not srgb or not doc.setColorSpace(choice.convert_model, choice.convert_depth, srgb[0]):
        raise UpscaleError("Krita could not convert the %s image to %s %s for tiledsr"
                           % (doc.colorModel(), choice.convert_model, choice.convert_depth))


def _export_info(choice: ExportChoice):
    info = InfoObject()
    if choice.ext == ".png":
        info.setProperty("alpha", True)
        info.setProperty("compression", 1)  # fast: the file lives for one run
        info.setProperty("forceSRGB", False)
        info.setProperty("saveSRGBProfile", True)
        info.setProperty("storeMetaData", False)
    else:
        info.setProperty("alpha", True)
        info.setProperty("compressiontype", 0)  # none
    return info


def _active_node(doc):
    """The active layer; without a view (a script, kritarunner) Krita has none: the top layer."""
    node = doc.activeNode()
    if node is None:
        top = doc.topLevelNodes()
        node = top[-1] if top else None
    return node


def run_tiledsr(settings: Settings, src: str, files: TempFiles,
                on_progress: Optional[Callable[["host.Progress"], None]] = None,
                should_cancel: Optional[Callable[[], bool]] = None, preview: bool = False) -> "host.Result":
    """tiledsr on ``src`` into ``files.output`` (any thread: no Krita call)."""
    options = options_for(settings, src, files.output, preview=files.preview if preview else None)
    return host.run(options, on_progress, should_cancel)


def open_result(doc, settings: Settings, path: str, window=None):
    """Open ``path`` as a new document (shown in ``window`` when there is one) or add it to
    ``doc`` as a new layer above the active one (``doc`` is scaled to the new size first).
    Returns the document that holds the result."""
    app = Krita.instance()
    result = app.openDocument(path)
    if result is None:
        raise UpscaleError("Krita could not open the upscaled image %s" % path)
    if settings.destination == "document":
        result.setName(layer_name(settings))
        result.setFileName("")  # the temporary file goes away: Save asks where to keep it
        window = window or app.activeWindow()
        if window is not None:
            window.addView(result)
        return result
    try:
        _add_as_layer(doc, result, layer_name(settings))
    finally:
        result.close()
    return doc


def _add_as_layer(doc, result, name: str) -> None:
    width, height = result.width(), result.height()
    if not result.setColorSpace(doc.colorModel(), doc.colorDepth(), doc.colorProfile()):
        raise UpscaleError("Krita could not convert the result to the document's colour space")
    result.waitForDone()
    pixels = result.pixelData(0, 0, width, height)
    anchor = _active_node(doc)
    if (width, height) != (doc.width(), doc.height()):
        doc.scaleImage(width, height, int(round(result.xRes())), int(round(result.yRes())), "Bicubic")
        doc.waitForDone()
    layer = doc.createNode(name, "paintlayer")
    layer.setPixelData(pixels, 0, 0, width, height)
    if anchor is not None and anchor.parentNode() is not None:
        anchor.parentNode().addChildNode(layer, anchor)  # just above the active layer
    else:
        top = doc.rootNode().childNodes()
        doc.rootNode().addChildNode(layer, top[-1] if top else None)
    doc.setActiveNode(layer)
    doc.refreshProjection()


def upscale_document(doc, settings: Settings, on_progress=None, should_cancel=None, window=None):
    """Export, upscale and open the result in one go (the GUI waits). Returns (Result, the
    document holding the result or None)."""
    settings.check()
    files = TempFiles()
    try:
        src = export_source(doc, settings, files)
        result = run_tiledsr(settings, src, files, on_progress, should_cancel)
        if not result.ok:
            return result, None
        return result, open_result(doc, settings, result.output, window)
    finally:
        files.remove()
