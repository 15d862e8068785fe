"""The Krita extension: Tools > Scripts > "Upscale with tiledsr…".

Export in the GUI thread, tiledsr in a QThread (through tiledsr_host) while a
QProgressDialog shows the overall fraction and the stage, then the result opens in the GUI
thread. Cancel stops tiledsr (SIGINT, exit 130) and nothing is added to the document.
"""
import threading

from krita import Extension, Krita
from PyQt5.QtCore import QThread, pyqtSignal
from PyQt5.QtWidgets import QMessageBox, QProgressDialog

from . import core
from .dialog import UpscaleDialog
from .plan import Settings, TempFiles, host

__all__ = ["TiledsrExtension"]

ACTION_ID = "tiledsr_upscale"
ACTION_TEXT = "Upscale with tiledsr\u2026"


class Worker(QThread):
    """Runs tiledsr (no Krita call in here); reports through Qt signals."""

    progressed = pyqtSignal(float, str)
    ended = pyqtSignal(object)  # a tiledsr_host.Result

    def __init__(self, settings: Settings, src: str, files: TempFiles):
        super().__init__()
        self.settings, self.src, self.files = settings, src, files
        self.cancel = threading.Event()

    def run(self) -> None:
        result = core.run_tiledsr(self.settings, self.src, self.files,
                                  lambda p: self.progressed.emit(p.fraction, p.text()), self.cancel.is_set)
        self.ended.emit(result)


class TiledsrExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self._last = Settings()
        self._presets = None
        self._busy = None  # (worker, dialog, files, doc, settings) while a run goes on

    def setup(self) -> None:
        pass

    def createActions(self, window) -> None:
        action = window.createAction(ACTION_ID, ACTION_TEXT, "tools/scripts")
        action.triggered.connect(self.upscale)

    def upscale(self) -> None:
        app = Krita.instance()
        doc = app.activeDocument()
        parent = app.activeWindow().qwindow() if app.activeWindow() else None
        if doc is None:
            QMessageBox.information(parent, ACTION_TEXT, "Open an image first.")
            return
        if self._busy is not None:
            QMessageBox.information(parent, ACTION_TEXT, "tiledsr is already upscaling an image.")
            return
        if self._presets is None:
            self._presets = host.list_presets()
        dialog = UpscaleDialog(self._presets, self._last, parent)
        if not dialog.exec_():
            return
        settings = self._last = dialog.settings()
        files = TempFiles()
        try:
            src = core.export_source(doc, settings, files)
        except core.UpscaleError as exc:
            files.remove()
            QMessageBox.warning(parent, ACTION_TEXT, str(exc))
            return
        self._start(doc, settings, src, files, parent)

    def _start(self, doc, settings: Settings, src: str, files: TempFiles, parent) -> None:
        progress = QProgressDialog("Starting tiledsr\u2026", "Cancel", 0, 1000, parent)
        progress.setWindowTitle(ACTION_TEXT)
        progress.setMinimumDuration(0)
        progress.setAutoClose(False)
        progress.setAutoReset(False)
        worker = Worker(settings, src, files)
        worker.progressed.connect(lambda f, text: (progress.setValue(int(f * 1000)), progress.setLabelText(text)))
        progress.canceled.connect(worker.cancel.set)
        progress.canceled.connect(lambda: progress.setLabelText("Stopping tiledsr\u2026"))
        worker.ended.connect(self._finished)
        self._busy = (worker, progress, files, doc, settings)
        progress.show()
        worker.start()

    def _finished(self, result) -> None:
        worker, progress, files, doc, settings = self._busy
        self._busy = None
        worker.wait()
        progress.close()
        parent = progress.parentWidget()
        try:
            if result.ok:
                core.open_result(doc, settings, result.output)
            elif not result.cancelled:
                QMessageBox.warning(parent, ACTION_TEXT, result.message)
        except core.UpscaleError as exc:
            QMessageBox.warning(parent, ACTION_TEXT, str(exc))
        finally:
            files.remove()
