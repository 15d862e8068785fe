#!/usr/bin/env python3
"""GIMP 3 plug-in: Filters > Enhance > Upscale with tiledsr...

Exports the image (a merged copy, alpha kept) or the selected layer at the image's precision
to a temporary PNG (16-bit when the image is more than 8-bit), runs the tiledsr command on it
through tiledsr_host.py (which must sit beside this file; examples/hosts/install.py puts it
there), shows the progress in GIMP's progress bar and a small window with a Cancel button,
then opens the result as a new image.

Written against the GIMP 3.0 Python API; NOT run in a real GIMP (see README.md).
"""
import os
import shutil
import sys
import tempfile

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("GimpUi", "3.0")
gi.require_version("Gtk", "3.0")
from gi.repository import Gimp, GimpUi, Gio, GLib, GObject, Gtk  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiledsr_host as host  # noqa: E402

PROC_NAME = "plug-in-tiledsr-upscale"
BINARY = "tiledsr-upscale"
SCALES = ("2x", "4x", "8x")
PRINT = "print"


def _choice(items):
    """A Gimp.Choice of (nick, label) pairs."""
    choice = Gimp.Choice.new()
    for i, (nick, label) in enumerate(items):
        choice.add(nick, i, label, "")
    return choice


class TiledsrUpscale(Gimp.PlugIn):
    def do_query_procedures(self):
        return [PROC_NAME]

    def do_set_i18n(self, name):
        return False

    def do_create_procedure(self, name):
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        proc.set_image_types("*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE | Gimp.ProcedureSensitivityMask.DRAWABLES
                                  | Gimp.ProcedureSensitivityMask.NO_DRAWABLES)
        proc.set_menu_label("Upscale with _tiledsr...")
        proc.add_menu_path("<Image>/Filters/Enhance")
        proc.set_documentation("Upscale the image with tiledsr",
                               "Runs the tiledsr command (Real-ESRGAN, Lanczos or diffusion presets, tiled) on the "
                               "image or the selected layer and opens the result as a new image.", name)
        proc.set_attribution("tiledsr", "tiledsr", "2025")
        presets = host.list_presets()
        proc.add_choice_argument("preset", "_Preset", "tiledsr preset", _choice([(p, p) for p in presets]),
                                 "photo-x4" if "photo-x4" in presets else presets[0], GObject.ParamFlags.READWRITE)
        proc.add_choice_argument("scale", "_Scale", "Upscaling factor, or the print size below",
                                 _choice([(s, s) for s in SCALES] + [(PRINT, "Print size")]), "4x",
                                 GObject.ParamFlags.READWRITE)
        proc.add_string_argument("print-size", "Print si_ze", "With Scale = Print size: e.g. 24x36in@300 "
                                 "(in, cm or mm), or pixels like 4096x2048", "24x36in@300",
                                 GObject.ParamFlags.READWRITE)
        proc.add_choice_argument("source", "_Upscale", "What to upscale",
                                 _choice([("image", "The image (merged copy)"), ("layer", "The selected layer")]),
                                 "image", GObject.ParamFlags.READWRITE)
        return proc

    def run(self, procedure, run_mode, image, drawables, config, data):
        # 1. Ask.
        if run_mode == Gimp.RunMode.INTERACTIVE:
            GimpUi.init(BINARY)
            dialog = GimpUi.ProcedureDialog.new(procedure, config, "Upscale with tiledsr")
            dialog.fill(None)
            accepted = dialog.run()
            dialog.destroy()
            if not accepted:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
        scale = config.get_property("scale")
        try:
            target = host.parse_target(config.get_property("print-size") if scale == PRINT else scale)
        except host.OptionsError as exc:
            return _fail(procedure, str(exc))
        folder = tempfile.mkdtemp(prefix="tiledsr-gimp-")
        try:
            # 2. Export, 3. upscale, 4. open the result.
            src = _export(image, drawables, config.get_property("source"), os.path.join(folder, "source.png"))
            options = host.Options(src, os.path.join(folder, "upscaled.png"), preset=config.get_property("preset"),
                                   overwrite=True, **target)
            result = _run_with_progress(options, interactive=run_mode == Gimp.RunMode.INTERACTIVE)
            if result.cancelled:
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, GLib.Error())
            if not result.ok:
                return _fail(procedure, result.message)
            upscaled = Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(result.output))
            if run_mode == Gimp.RunMode.INTERACTIVE:
                Gimp.Display.new(upscaled)
                Gimp.displays_flush()
        except GLib.Error as exc:
            return _fail(procedure, "GIMP could not export or open the image: %s" % exc.message)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, GLib.Error())


def _fail(procedure, message):
    Gimp.message("tiledsr: %s" % message)
    return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(message))


def _export(image, drawables, source, path):
    """A temporary image holding the merged visible layers (or the selected layer), alpha kept,
    at the image's precision, written as PNG (GIMP's PNG export writes 16 bits per channel for
    images above 8-bit precision)."""
    if source == "layer" and drawables:
        drawable = drawables[0]
        copy = Gimp.Image.new_with_precision(drawable.get_width(), drawable.get_height(), image.get_base_type(),
                                             image.get_precision())
        profile = image.get_color_profile()
        if profile is not None:
            copy.set_color_profile(profile)
        layer = Gimp.Layer.new_from_drawable(drawable, copy)
        copy.insert_layer(layer, None, 0)
        layer.set_offsets(0, 0)
    else:
        copy = image.duplicate()
        copy.merge_visible_layers(Gimp.MergeType.CLIP_TO_IMAGE)  # unlike flatten(), keeps transparency
    try:
        if copy.get_base_type() == Gimp.ImageBaseType.INDEXED:
            copy.convert_rgb()
        if not Gimp.file_save(Gimp.RunMode.NONINTERACTIVE, copy, Gio.File.new_for_path(path), None):
            raise GLib.Error("export to %s failed" % path)
    finally:
        copy.delete()
    return path


def _run_with_progress(options, interactive):
    """tiledsr with GIMP's progress bar (and, interactively, a window with a Cancel button)."""
    Gimp.progress_init("Upscaling with tiledsr...")
    window = _CancelWindow() if interactive else None

    def on_progress(p):
        Gimp.progress_update(p.fraction)
        Gimp.progress_set_text(p.text())
        if window is not None:
            window.show(p.fraction, p.text())

    try:
        return host.run(options, on_progress, window.poll if window is not None else None)
    finally:
        if window is not None:
            window.close()
        Gimp.progress_end()


class _CancelWindow:
    """A small dialog with a progress bar and Cancel; :meth:`poll` keeps it responsive."""

    def __init__(self):
        self.cancelled = False
        self.dialog = GimpUi.Dialog(title="Upscaling with tiledsr", role=BINARY)
        self.dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
        self.dialog.connect("response", self._cancel)
        self.dialog.connect("delete-event", lambda *a: self._cancel() or True)
        self.bar = Gtk.ProgressBar(show_text=True)
        self.bar.set_size_request(360, -1)
        box = self.dialog.get_content_area()
        box.set_border_width(12)
        box.pack_start(self.bar, True, True, 0)
        self.dialog.show_all()

    def _cancel(self, *args):
        self.cancelled = True
        self.bar.set_text("Stopping tiledsr...")

    def show(self, fraction, text):
        self.bar.set_fraction(fraction)
        if not self.cancelled:
            self.bar.set_text(text)
        self.poll()

    def poll(self):
        while Gtk.events_pending():
            Gtk.main_iteration()
        return self.cancelled

    def close(self):
        self.dialog.destroy()
        self.poll()


Gimp.main(TiledsrUpscale.__gtype__, sys.argv)
