"""The Engine tab's UNet row: a UNet-only release over the chosen model (DMD2's SDXL students
ship that way) and the timesteps its student was distilled for."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from engine.api import EngineError, ModelOptions, parse_timesteps

UNET_FILTER = "UNet weights (*.safetensors *.bin *.ckpt *.pt *.pth)"


class UnetPicker(QWidget):
    """A UNet file field with a browser, and a student timesteps field."""

    def __init__(self, unet_file: str = "", timesteps: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.path_edit = QLineEdit(unet_file)
        self.path_edit.setPlaceholderText("the model's own UNet")
        self.path_edit.setToolTip("A UNet-only file (.safetensors, .bin; diffusers or original "
                                  "keys) that replaces the model's UNet, such as DMD2's SDXL "
                                  "students; a student.json beside it gives its timesteps.")
        self.browse_button = QPushButton("Browse…")
        self.timesteps_edit = QLineEdit(timesteps)
        self.timesteps_edit.setPlaceholderText("timesteps, e.g. 399")
        self.timesteps_edit.setToolTip("The timesteps the student was distilled for: 399 for "
                                       "DMD2's one-step SDXL, 999,749,499,249 for its "
                                       "four-step one (empty: student.json or the model's).")
        self.timesteps_edit.setMaximumWidth(170)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.path_edit, 1)
        layout.addWidget(self.browse_button)
        layout.addWidget(self.timesteps_edit)
        self.browse_button.clicked.connect(self._browse)

    @property
    def unet_file(self) -> str:
        return self.path_edit.text().strip()

    @property
    def timesteps(self) -> str:
        return self.timesteps_edit.text().strip()

    def model_options(self) -> tuple[ModelOptions | None, str | None]:
        """(ModelOptions to load with, or None when both fields are empty; one sentence
        saying what is wrong, or None)."""
        unet, text = self.unet_file, self.timesteps
        if unet and not Path(unet).expanduser().exists():
            return None, f"The UNet file {unet} does not exist."
        try:
            timesteps = tuple(parse_timesteps(text, "Student timesteps")) if text else None
        except EngineError as error:
            return None, str(error)
        options = ModelOptions(unet=str(Path(unet).expanduser()) if unet else None,
                               student_timesteps=timesteps)
        return (options if options.changes_model else None), None

    def _browse(self) -> None:
        start = self.unet_file or ""
        path, _ = QFileDialog.getOpenFileName(self, "Choose a UNet file", start, UNET_FILTER)
        if path:
            self.path_edit.setText(path)
