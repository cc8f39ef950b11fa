"""Control-model widgets: the Engine tab's ControlNet / T2I-Adapter choice and the Live tab's
control strength, start and end sliders."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QWidget,
)

CONTROL_FILE_FILTER = ("Control models (*.safetensors *.pth *.ckpt *.pt config.json);;"
                       "All files (*)")
CONTROL_TYPE_LABELS = (("Type: automatic", "auto"), ("Scribble", "scribble"),
                       ("Line art", "lineart"), ("Canny edges", "canny"))


class ControlPicker(QWidget):
    """A control model folder or ControlNet file (empty: none) and the preprocessing its
    images get."""

    def __init__(self, folder: str = "", control_type: str = "auto",
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.folder_edit = QLineEdit(folder)
        self.folder_edit.setPlaceholderText("None (a ControlNet or T2I-Adapter folder, or a "
                                            "ControlNet file, steers sketches on SD-class "
                                            "models)")
        self.browse_button = QPushButton("Browse…")
        self.type_combo = QComboBox()
        for label, value in CONTROL_TYPE_LABELS:
            self.type_combo.addItem(label, value)
        self.type_combo.setToolTip("How the sketch or image is prepared for the control model; "
                                   "automatic: its control.json, else its folder's or file's name")
        index = self.type_combo.findData(control_type)
        self.type_combo.setCurrentIndex(max(index, 0))
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.folder_edit, 1)
        layout.addWidget(self.browse_button)
        layout.addWidget(self.type_combo)
        self.browse_button.clicked.connect(self._browse)

    @property
    def folder(self) -> str:
        return self.folder_edit.text().strip()

    @property
    def control_type(self) -> str:
        return self.type_combo.currentData()

    def loader_options(self) -> dict:
        """The keyword arguments engine.service.load_generator takes for this choice."""
        if not self.folder:
            return {}
        chosen = self.control_type
        return {"control": self.folder, "control_type": None if chosen == "auto" else chosen}

    def _browse(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, "Control model: a ControlNet file, or "
                                                "a folder's config.json", self.folder,
                                                CONTROL_FILE_FILTER)
        if chosen:
            self.folder_edit.setText(control_choice(chosen))


class ControlSliders(QWidget):
    """Control strength (0 to 2) and the fractions of the steps it acts from and until."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.strength_slider = self._slider(0, 200, 100, "Control strength: how firmly the "
                                            "frame follows the sketch (0: not at all)")
        self.start_slider = self._slider(0, 99, 0, "Control start: the fraction of the "
                                         "steps before control acts")
        self.end_slider = self._slider(1, 100, 100, "Control end: the fraction of the steps "
                                       "after which control stops")
        self.value_label = QLabel()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for label, slider in (("Control", self.strength_slider), ("from", self.start_slider),
                              ("to", self.end_slider)):
            layout.addWidget(QLabel(label))
            layout.addWidget(slider)
        layout.addWidget(self.value_label)
        self._show_values()

    def _slider(self, low: int, high: int, value: int, tip: str) -> QSlider:
        slider = QSlider(Qt.Orientation.Horizontal)
        slider.setRange(low, high)
        slider.setValue(value)
        slider.setToolTip(tip)
        slider.setMaximumWidth(110)
        slider.valueChanged.connect(self._on_changed)
        return slider

    def _on_changed(self) -> None:
        if self.end_slider.value() <= self.start_slider.value():  # keep start < end
            sender = self.sender()
            if sender is self.end_slider:
                self.start_slider.setValue(self.end_slider.value() - 1)
                return  # the start slider's change emits
            self.end_slider.setValue(self.start_slider.value() + 1)
            return
        self._show_values()
        self.changed.emit()

    def _show_values(self) -> None:
        strength, start, end = self.values()
        self.value_label.setText(f"{strength:.2f}, {start:.2f}–{end:.2f}")

    def values(self) -> tuple[float, float, float]:
        """(strength, start, end)."""
        return (self.strength_slider.value() / 100, self.start_slider.value() / 100,
                self.end_slider.value() / 100)

    def set_values(self, strength: float, start: float, end: float) -> None:
        """Show a recipe's values without emitting changed."""
        for slider, value in ((self.strength_slider, strength), (self.start_slider, start),
                              (self.end_slider, end)):
            slider.blockSignals(True)
            slider.setValue(round(value * 100))
            slider.blockSignals(False)
        self._show_values()


def control_choice(chosen_file: str) -> str:
    """The control model a file dialog's choice names: a folder's config.json names the
    folder, any other file (a ControlNet .safetensors / .pth) itself."""
    path = Path(chosen_file)
    return str(path.parent) if path.name == "config.json" else str(path)


def control_name(folder: str) -> str:
    """The control model's folder or file name, for the model's description."""
    return Path(folder).name or folder
