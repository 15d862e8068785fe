"""The "Upscale with tiledsr" dialog: preset, size, what to upscale, where the result goes."""
from typing import Optional, Sequence

from PyQt5.QtWidgets import (QButtonGroup, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout,
                             QLabel, QLineEdit, QRadioButton, QVBoxLayout, QWidget)

from .plan import DEFAULT_PRINT, SIZES, Settings, host

__all__ = ["UpscaleDialog"]

CUSTOM = "Other size or print size"


class UpscaleDialog(QDialog):
    """Asks for :class:`Settings`; :meth:`settings` reads them once the dialog is accepted."""

    def __init__(self, presets: Sequence[str], previous: Optional[Settings] = None, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.setWindowTitle("Upscale with tiledsr")
        prev = previous or Settings()
        form = QFormLayout()
        self.preset = QComboBox()
        self.preset.addItems(list(presets))
        self.preset.setEditable(True)  # a preset YAML file path works too
        self.preset.setCurrentText(prev.preset)
        form.addRow("Preset:", self.preset)
        self.size = QComboBox()
        self.size.addItems(list(SIZES) + [CUSTOM])
        self.custom = QLineEdit(prev.size if prev.size not in SIZES else DEFAULT_PRINT)
        self.custom.setPlaceholderText("3.5, 4096x2048 or 24x36in@300 (in, cm, mm)")
        self.size.setCurrentText(prev.size if prev.size in SIZES else CUSTOM)
        self.size.currentTextChanged.connect(self._size_changed)
        form.addRow("Scale:", self.size)
        form.addRow("", self.custom)
        self.source = self._choice(form, "Upscale:", [("image", "The whole image (flattened)"),
                                                      ("layer", "The active layer")], prev.source)
        self.destination = self._choice(form, "Result:", [("document", "A new document"),
                                                          ("layer", "A new layer (the image is resized)")],
                                        prev.destination)
        self.problem = QLabel("")
        self.problem.setStyleSheet("color: #c33")
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(buttons)
        self._size_changed(self.size.currentText())

    def _choice(self, form: QFormLayout, label: str, options, current: str) -> QButtonGroup:
        group, row = QButtonGroup(self), QHBoxLayout()
        for i, (key, text) in enumerate(options):
            button = QRadioButton(text)
            button.setProperty("key", key)
            button.setChecked(key == current or (i == 0 and current not in [k for k, _ in options]))
            group.addButton(button)
            row.addWidget(button)
        form.addRow(label, row)
        return group

    def _size_changed(self, text: str) -> None:
        self.custom.setEnabled(text == CUSTOM)

    def settings(self) -> Settings:
        size = self.custom.text() if self.size.currentText() == CUSTOM else self.size.currentText()
        return Settings(preset=self.preset.currentText().strip(), size=size.strip(),
                        source=self.source.checkedButton().property("key"),
                        destination=self.destination.checkedButton().property("key"))

    def _accept(self) -> None:
        try:
            self.settings().check()
        except host.OptionsError as exc:
            self.problem.setText(str(exc))
            return
        self.accept()
