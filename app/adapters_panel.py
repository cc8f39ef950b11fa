"""The Engine tab's LoRA list (add, remove, a weight slider each) and fast-decoder choice.

Every change goes to the live engine (app.bridge.LiveEngine), whose service fuses the LoRAs
or swaps the decoder between frames; a file the engine refuses comes back as one sentence
and the list returns to what the model runs with.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from app.bridge import LiveEngine
from app.settings import AppSettings
from engine.api import LoraChoice

WEIGHT_STEPS = 100  # slider units per 1.0 of LoRA weight
WEIGHT_RANGE = (-1.0, 2.0)


class LoraRow(QWidget):
    """One LoRA: its file name, a weight slider with its value, and a remove button."""

    weight_changed = Signal()
    remove_requested = Signal(object)  # this row

    def __init__(self, path: str, weight: float, parent: QWidget | None = None):
        super().__init__(parent)
        self.path = path
        self.name_label = QLabel(Path(path).name)
        self.name_label.setToolTip(path)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        low, high = (round(limit * WEIGHT_STEPS) for limit in WEIGHT_RANGE)
        self.slider.setRange(low, high)
        self.slider.setValue(round(weight * WEIGHT_STEPS))
        self.slider.setToolTip("The LoRA's weight: 0 leaves the model as it is, 1 as trained.")
        self.value_label = QLabel()
        self.value_label.setMinimumWidth(36)
        self.remove_button = QPushButton("Remove")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.name_label, 1)
        layout.addWidget(self.slider, 2)
        layout.addWidget(self.value_label)
        layout.addWidget(self.remove_button)
        self._show_value()
        self.slider.valueChanged.connect(self._show_value)
        self.slider.sliderReleased.connect(self.weight_changed)
        self.slider.valueChanged.connect(
            lambda _: None if self.slider.isSliderDown() else self.weight_changed.emit())
        self.remove_button.clicked.connect(lambda: self.remove_requested.emit(self))

    @property
    def weight(self) -> float:
        return self.slider.value() / WEIGHT_STEPS

    def _show_value(self) -> None:
        self.value_label.setText(f"{self.weight:.2f}")


class AdaptersPanel(QGroupBox):
    """LoRAs fused into the live model and the decoder of its frames."""

    status_message = Signal(str)
    reload_requested = Signal()  # the running backend cannot fuse: load the model on PyTorch

    def __init__(self, engine: LiveEngine, settings: AppSettings, parent: QWidget | None = None):
        super().__init__("LoRAs and decoder", parent)
        self.engine, self.settings = engine, settings
        self.rows: list[LoraRow] = []
        self.rows_layout = QVBoxLayout()
        self.add_button = QPushButton("Add LoRA…")
        self.add_button.setToolTip("Fuse a LoRA .safetensors file (diffusers, PEFT or kohya "
                                   "naming) into the model; it runs on PyTorch.")
        self.decoder_edit = QLineEdit(settings.decoder)
        self.decoder_edit.setPlaceholderText("the model's own VAE")
        self.decoder_edit.setToolTip("A TAESD / TAESDXL folder (AutoencoderTiny): much faster "
                                     "live frames, slightly softer detail.")
        self.decoder_browse = QPushButton("Browse…")
        self.decoder_apply = QPushButton("Use")
        self.full_vae_box = QCheckBox("Save images with the full VAE")
        self.full_vae_box.setChecked(settings.save_full_vae)
        self.full_vae_box.setToolTip("Save image decodes the frame again with the model's VAE "
                                     "when a fast decoder drew it.")
        decoder_row = QHBoxLayout()
        decoder_row.addWidget(self.decoder_edit, 1)
        decoder_row.addWidget(self.decoder_browse)
        decoder_row.addWidget(self.decoder_apply)
        form = QFormLayout(self)
        form.addRow("LoRAs", self.rows_layout)
        form.addRow("", self.add_button)
        form.addRow("Fast decoder", decoder_row)
        form.addRow("", self.full_vae_box)
        self.add_button.clicked.connect(self._add_dialog)
        self.decoder_browse.clicked.connect(self._decoder_dialog)
        self.decoder_apply.clicked.connect(self.apply_decoder)
        self.decoder_edit.returnPressed.connect(self.apply_decoder)
        self.full_vae_box.toggled.connect(self._on_full_vae_toggled)
        engine.loras_applied.connect(self._on_applied)
        engine.adapters_failed.connect(self._on_failed)
        if settings.decoder:
            engine.decoder = settings.decoder  # applied when a model loads

    # -- LoRAs -------------------------------------------------------------------------------
    def choices(self) -> list[LoraChoice]:
        return [LoraChoice(row.path, row.weight) for row in self.rows]

    def add_lora(self, path: str, weight: float = 1.0) -> None:
        """Add a LoRA file to the list and fuse the list into the model."""
        self._add_row(path, weight)
        self.apply()

    def remove_lora(self, row: LoraRow) -> None:
        self._drop_row(row)
        self.apply()

    def apply(self) -> None:
        """Hand the list to the engine (the service fuses it before the next frame); a model
        running on ONNX Runtime is loaded again on PyTorch, which fuses it then."""
        if self._needs_torch(bool(self.rows)):
            self.engine.loras = self.choices()  # fused when the model loads again
            self._reload_on_torch()
            return
        self.engine.set_loras(self.choices())

    def _needs_torch(self, wanted: bool) -> bool:
        """Whether the running backend cannot fuse or swap decoders (ONNX Runtime)."""
        return wanted and self.engine.backend_name not in ("", "torch")

    def _reload_on_torch(self) -> None:
        self.status_message.emit("LoRAs and a fast decoder run on PyTorch: loading the model "
                                 "on PyTorch…")
        self.reload_requested.emit()

    def _add_row(self, path: str, weight: float) -> None:
        row = LoraRow(path, weight)
        row.weight_changed.connect(self.apply)
        row.remove_requested.connect(self.remove_lora)
        self.rows.append(row)
        self.rows_layout.addWidget(row)

    def _drop_row(self, row: LoraRow) -> None:
        self.rows.remove(row)
        self.rows_layout.removeWidget(row)
        row.deleteLater()

    def _show(self, loras) -> None:
        """Rebuild the rows from a list of LoraChoices (the engine's word on what runs)."""
        for row in list(self.rows):
            self._drop_row(row)
        for lora in loras:
            self._add_row(lora.path, lora.weight)

    def _on_applied(self, loras) -> None:
        """The newest LoRA set is fused: the rows show it (a restored recipe sets them)."""
        dragging = any(row.slider.isSliderDown() for row in self.rows)
        if not dragging and [(lora.path, lora.weight) for lora in loras] != \
                [(row.path, row.weight) for row in self.rows]:
            self._show(loras)
        names = ", ".join(f"{Path(lora.path).name} {lora.weight:.2f}" for lora in loras)
        self.status_message.emit(f"LoRAs: {names}" if names else "No LoRAs.")

    def _on_failed(self, message: str) -> None:
        self._show(self.engine.loras)
        self.decoder_edit.setText(self.engine.decoder)
        self.settings.decoder = self.engine.decoder
        self.status_message.emit(message)

    def _add_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add a LoRA", self.settings.last_image_folder,
                                              "LoRA (*.safetensors)")
        if path:
            self.add_lora(path)

    # -- decoder -----------------------------------------------------------------------------
    def apply_decoder(self) -> None:
        """Use the folder typed (or none) to decode live frames."""
        folder = self.decoder_edit.text().strip()
        self.settings.decoder = folder
        if self._needs_torch(bool(folder)):
            self.engine.decoder = folder  # used when the model loads again
            self._reload_on_torch()
            return
        self.engine.set_decoder(folder)

    def _decoder_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a TAESD decoder folder",
                                                  self.decoder_edit.text())
        if folder:
            self.decoder_edit.setText(folder)
            self.apply_decoder()

    def _on_full_vae_toggled(self, checked: bool) -> None:
        self.settings.save_full_vae = checked
