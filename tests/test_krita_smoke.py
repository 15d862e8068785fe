"""The Krita plug-in in a real Krita, headless: ``kritarunner`` with the offscreen Qt platform.

Installs the plug-in with examples/hosts/install.py into a temporary pykrita folder, then has
kritarunner import it (its ``__init__`` registers the extension) and run its core without the
dialog: export the open document -> tiledsr (``--preset lanczos``) -> open the result as a new
document, and as a new layer; for an 8-bit RGBA image, a 16-bit document and the active layer
alone. Skipped where Krita is not installed (CI); Debian/Ubuntu: ``apt-get install krita
python3-pyqt5``. Set KRITA_SMOKE_DIR to keep the log and the result images.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "examples" / "hosts" / "install.py"
KRITARUNNER = shutil.which("kritarunner")
_script = Path(sys.executable).with_name("tiledsr")
TILEDSR = str(_script) if _script.exists() else "%s -m tiledsr" % sys.executable

KRITA = shutil.which("krita")
XVFB_RUN = shutil.which("xvfb-run")

pytestmark = pytest.mark.slow

DRIVER = textwrap.dedent('''
    """Run by kritarunner: the tiledsr plug-in's core on real Krita documents."""
    import json, os, sys, traceback

    def __main__(args):
        pykrita, image, out = args[0], args[1], args[2]
        sys.path.insert(0, pykrita)
        log = {"steps": []}
        try:
            from krita import Krita
            import tiledsr_krita  # its __init__ registers the extension, as in Krita
            from tiledsr_krita import core
            from tiledsr_krita.plan import Settings
            app = Krita.instance()
            log["krita"] = app.version()
            log["extensions"] = [type(e).__name__ for e in app.extensions()]

            def step(name, doc, settings):
                print("smoke: step %s" % name, flush=True)
                fractions, size_in = [], [doc.width(), doc.height()]
                result, holder = core.upscale_document(doc, settings, lambda p: fractions.append(p.fraction))
                entry = {"name": name, "ok": result.ok, "code": result.code, "message": result.message,
                         "command": result.command, "fractions": fractions[-3:], "in": size_in}
                if holder is not None:
                    holder.waitForDone()
                    entry.update(size=[holder.width(), holder.height()], depth=holder.colorDepth(),
                                 model=holder.colorModel(), layers=[n.name() for n in holder.topLevelNodes()])
                    png = os.path.join(out, name + ".png")
                    holder.setBatchmode(True)
                    entry["exported"] = bool(holder.exportImage(png, __import__("krita").InfoObject())) and png
                log["steps"].append(entry)
                return holder

            doc = app.openDocument(image)
            log["opened"] = [doc.width(), doc.height(), doc.colorModel(), doc.colorDepth()]
            step("new-document", doc, Settings(preset="lanczos", size="2x", destination="document"))
            step("active-layer", doc, Settings(preset="lanczos", size="3x", source="layer", destination="document"))
            step("new-layer", doc, Settings(preset="lanczos", size="2x", destination="layer"))
            deep = app.createDocument(32, 24, "deep", "RGBA", "U16", "", 300.0)
            layer = deep.topLevelNodes()[0]
            layer.setPixelData(bytes(range(256)) * (32 * 24 * 8 // 256), 0, 0, 32, 24)
            step("16-bit", deep, Settings(preset="lanczos", size="2x", destination="document"))
            from tiledsr_krita.dialog import UpscaleDialog
            dialog = UpscaleDialog(["lanczos", "photo-x4"], Settings("photo-x4", "24x36in@300", "layer", "layer"))
            log["dialog"] = [vars(dialog.settings())]
            dialog.custom.setText("huge")
            dialog._accept()
            log["dialog"].append([dialog.problem.text(), dialog.result()])
            dialog.size.setCurrentText("8x")
            dialog._accept()
            log["dialog"].append([vars(dialog.settings()), dialog.result()])
            log["cancel"] = None
            result, holder = core.upscale_document(doc, Settings(preset="lanczos", size="2x"), None, lambda: True)
            log["cancel"] = {"ok": result.ok, "cancelled": result.cancelled, "code": result.code,
                             "holder": holder is not None}
        except Exception:
            log["error"] = traceback.format_exc()
        with open(os.path.join(out, "log.json"), "w") as fh:
            json.dump(log, fh, indent=1)
''')


def _input_image(path, size=(40, 28)):
    w, h = size
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse((w // 10, h // 7, w - w // 10, h - h // 7), fill=(220, 60, 30, 255))
    draw.rectangle((0, 0, w * 3 // 10, h * 2 // 7), fill=(30, 90, 220, 128))
    im.save(path)
    return path


def _env(tmp_path, **extra):
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    home = tmp_path / "home"
    return dict(os.environ, XDG_RUNTIME_DIR=str(runtime), HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                XDG_DATA_HOME=str(home / ".local" / "share"), **extra)


@pytest.mark.skipif(KRITARUNNER is None, reason="Krita is not installed (no kritarunner on PATH)")
def test_plugin_core_runs_in_real_krita(tmp_path):
    out = Path(os.environ.get("KRITA_SMOKE_DIR") or tmp_path / "out")
    out.mkdir(parents=True, exist_ok=True)
    pykrita = tmp_path / "pykrita"
    subprocess.run([sys.executable, str(INSTALL), "krita", "--target", str(pykrita), "--tiledsr", TILEDSR],
                   check=True, stdout=subprocess.DEVNULL)
    (tmp_path / "driver").mkdir()
    (tmp_path / "driver" / "tiledsr_smoke_driver.py").write_text(DRIVER)
    image = _input_image(tmp_path / "input.png")
    env = _env(tmp_path, QT_QPA_PLATFORM="offscreen", PYTHONPATH=str(tmp_path / "driver"))
    proc = subprocess.run([KRITARUNNER, "-s", "tiledsr_smoke_driver", str(pykrita), str(image), str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env,
                          timeout=300)
    (out / "kritarunner.log").write_text(proc.stdout)
    assert (out / "log.json").exists(), proc.stdout[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert "error" not in log, log.get("error")
    assert "TiledsrExtension" in log["extensions"]
    assert log["opened"] == [40, 28, "RGBA", "U8"]
    steps = {s["name"]: s for s in log["steps"]}
    for name, size in (("new-document", [80, 56]), ("active-layer", [120, 84]), ("new-layer", [80, 56]),
                       ("16-bit", [64, 48])):
        assert steps[name]["ok"], steps[name]
        assert steps[name]["size"] == size, steps[name]
        assert steps[name]["fractions"][-1] == 1.0
        assert steps[name]["exported"]
        with Image.open(steps[name]["exported"]) as result:
            assert list(result.size) == size
    assert steps["16-bit"]["depth"] == "U16"
    assert steps["new-layer"]["layers"][-1] == "tiledsr lanczos 2x" and len(steps["new-layer"]["layers"]) == 2
    first, refused, accepted = log["dialog"]
    assert first == {"preset": "photo-x4", "size": "24x36in@300", "source": "layer", "destination": "layer"}
    assert refused[1] == 0 and "expected a scale" in refused[0]
    assert accepted == [dict(first, size="8x"), 1]
    assert steps["new-layer"]["in"] == [40, 28] and steps["active-layer"]["in"] == [40, 28]
    assert log["cancel"] == {"ok": False, "cancelled": True, "code": log["cancel"]["code"], "holder": False}


GUI_DRIVER = textwrap.dedent('''
    """Test driver plug-in: once Krita's window is up, open an image, trigger the tiledsr action
    with its dialog accepted (lanczos 2x, new document), wait, screenshot; then the same again,
    cancelled from the progress dialog; quit."""
    import json, os, time, traceback
    from krita import Extension, Krita
    from PyQt5.QtCore import QTimer

    OUT, IMAGE = os.environ["TILEDSR_SMOKE_OUT"], os.environ["TILEDSR_SMOKE_IMAGE"]
    log = {"events": []}

    def note(key, value):
        log[key] = value
        with open(os.path.join(OUT, "gui-log.json"), "w") as fh:
            json.dump(log, fh, indent=1)

    def documents():
        return [[d.name(), d.width(), d.height()] for d in Krita.instance().documents()]

    class Driver(Extension):
        def setup(self):
            Krita.instance().notifier().windowCreated.connect(lambda: QTimer.singleShot(2000, self.go))

        def createActions(self, window):
            pass

        def go(self):
            try:
                app = Krita.instance()
                note("extensions", [type(e).__name__ for e in app.extensions()])
                doc = app.openDocument(IMAGE)
                app.activeWindow().addView(doc)
                self.ext = [e for e in app.extensions() if type(e).__name__ == "TiledsrExtension"][0]
                import tiledsr_krita.dialog as dialog, tiledsr_krita.extension as extension
                from tiledsr_krita.plan import Settings
                dialog.UpscaleDialog.exec_ = lambda self: 1  # "OK" with ext._last
                extension.QMessageBox.warning = staticmethod(lambda *a: note("warning box", a[-1]))
                finished = self.ext._finished
                def logged(result):
                    log["events"].append([result.ok, result.cancelled, result.code, result.message])
                    finished(result)
                self.ext._finished = logged
                self.ext._last = Settings(preset="lanczos", size="2x", destination="document")
                self.ext._presets = ["lanczos"]
                self.action = app.action("tiledsr_upscale")
                note("action", self.action.text())
                self.action.trigger()
                self.wait(self.first)
            except Exception:
                note("error", traceback.format_exc())
                self.quit()

        def wait(self, then, deadline=None):
            deadline = deadline or time.time() + 90
            if self.ext._busy is not None and time.time() < deadline:
                QTimer.singleShot(200, lambda: self.wait(then, deadline))
            else:
                QTimer.singleShot(1500, then)

        def first(self):
            try:
                app = Krita.instance()
                note("after first", {"documents": documents(), "active": [app.activeDocument().name(),
                     app.activeDocument().width(), app.activeDocument().height()]})
                note("screenshot", app.activeWindow().qwindow().grab().save(os.path.join(OUT, "krita-gui.png")))
                app.activeWindow().showView(app.activeWindow().views()[0])  # back to the input image
                self.action.trigger()
                QTimer.singleShot(1000, self.click_cancel)
                self.wait(self.second)
            except Exception:  # Krita's excepthook would wait for a click on its error dialog
                note("error", traceback.format_exc())
                self.quit()

        def click_cancel(self):
            from PyQt5.QtWidgets import QPushButton
            if self.ext._busy is not None:
                self.ext._busy[1].findChild(QPushButton).click()  # the progress dialog's Cancel

        def second(self):
            note("after cancel", {"documents": documents()})
            self.quit()

        def quit(self):
            for d in Krita.instance().documents():
                d.setModified(False)
            os._exit(0)

    Krita.instance().addExtension(Driver(Krita.instance()))
''')

GUI_DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=tiledsr_smoke_gui
X-Python-2-Compatible=false
Name=tiledsr smoke driver
"""


@pytest.mark.skipif(KRITA is None or XVFB_RUN is None, reason="needs krita and xvfb-run (apt-get install krita xvfb)")
def test_plugin_action_runs_in_real_krita_window(tmp_path):
    """The whole plug-in in Krita's GUI under Xvfb: Python Plugin Manager loads it, the action
    runs the dialog (accepted by the driver), the QThread worker and the progress dialog, and
    the result opens as a new document; a second run is cancelled from the progress dialog."""
    out = Path(os.environ.get("KRITA_SMOKE_DIR") or tmp_path / "out")
    out.mkdir(parents=True, exist_ok=True)
    env = _env(tmp_path, TILEDSR_SMOKE_OUT=str(out), TILEDSR_SMOKE_IMAGE=str(_input_image(tmp_path / "in.png",
                                                                                           (160, 112))))
    pykrita = Path(env["XDG_DATA_HOME"]) / "krita" / "pykrita"
    kritarc = Path(env["XDG_CONFIG_HOME"]) / "kritarc"
    subprocess.run([sys.executable, str(INSTALL), "krita", "--target", str(pykrita), "--tiledsr", TILEDSR,
                    "--enable-in", str(kritarc)], check=True, stdout=subprocess.DEVNULL)
    (pykrita / "tiledsr_smoke_gui").mkdir()
    (pykrita / "tiledsr_smoke_gui" / "__init__.py").write_text(GUI_DRIVER)
    (pykrita / "tiledsr_smoke_gui.desktop").write_text(GUI_DESKTOP)
    kritarc.write_text(kritarc.read_text() + "enable_tiledsr_smoke_gui=true\n")
    proc = subprocess.run([XVFB_RUN, "-a", "-s", "-screen 0 1280x900x24", KRITA, "--nosplash"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    (out / "krita-gui.log").write_text(proc.stdout)
    log = json.loads((out / "gui-log.json").read_text())
    assert "error" not in log and "warning box" not in log, log
    assert "TiledsrExtension" in log["extensions"] and log["action"] == "Upscale with tiledsr\u2026"
    assert log["after first"]["active"] == ["tiledsr lanczos 2x", 320, 224], log
    assert log["screenshot"] is True
    (ok, cancelled, code, _), (ok2, cancelled2, code2, _) = log["events"]
    assert (ok, cancelled, code) == (True, False, 0)
    assert (ok2, cancelled2) == (False, True) and code2 != 0
    assert len(log["after cancel"]["documents"]) == len(log["after first"]["documents"])  # nothing added
