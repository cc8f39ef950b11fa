"""A model source row: embedded / folder / checkpoint file / hub id, with a path field and a
browser."""

from __future__ import annotations

import re
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QWidget,
)

SOURCES = (("Embedded", "embedded"), ("Folder", "folder"), ("Checkpoint file", "file"),
           ("Hub id", "hub"))
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")  # the engine's single files
CHECKPOINT_FILTER = "Checkpoints (*.safetensors *.ckpt *.pt *.pth)"
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """owner/name with no leading dot, slash or tilde (same rule as the engine's loader)."""
    return bool(HUB_ID_PATTERN.match(text)) and not text.startswith((".", "/", "~"))


class ModelSourcePicker(QWidget):
    """Chooses where a model comes from; value() is "embedded", a folder, a single-file
    checkpoint (SD 1.x, SD 2.x, SDXL) or a hub id."""

    changed = Signal()

    def __init__(self, embedded_label: str = "Embedded", parent: QWidget | None = None,
                 files: bool = True):
        """files: offer single-file checkpoints (the distillation teacher needs a folder)."""
        super().__init__(parent)
        self.source_combo = QComboBox()
        for label, source in SOURCES:
            if source != "file" or files:
                self.source_combo.addItem(embedded_label if source == "embedded" else label,
                                          source)
        self.source_combo.setToolTip("The shipped embedded model, a local diffusers-layout "
                                     "folder, a single-file checkpoint (.safetensors or .ckpt: "
                                     "SD 1.x, SD 2.x, SDXL), or a Hugging Face hub id (needs "
                                     "the network once).")
        self.source_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.source_combo.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.path_edit = QLineEdit()
        self.path_edit.setMinimumWidth(200)
        self.browse_button = QPushButton("Browse…")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.source_combo)
        layout.addWidget(self.path_edit, 1)
        layout.addWidget(self.browse_button)
        self.source_combo.currentIndexChanged.connect(self._on_source_changed)
        self.path_edit.textChanged.connect(self.changed)
        self.browse_button.clicked.connect(self._browse)
        self.last_folder = ""
        self._on_source_changed()

    @property
    def source(self) -> str:
        return self.source_combo.currentData()

    def set_value(self, source: str, text: str = "") -> None:
        self.source_combo.setCurrentIndex(max(0, self.source_combo.findData(source)))
        self.path_edit.setText(text if source != "embedded" else "")

    def value(self) -> str:
        """"embedded" or the folder path / file path / hub id as typed (stripped)."""
        return "embedded" if self.source == "embedded" else self.path_edit.text().strip()

    def problem(self) -> str | None:
        """One sentence saying what is wrong with the current choice, or None."""
        text = self.value()
        if self.source == "embedded":
            return None
        if not text:
            return {"hub": "Enter a hub id first.", "file": "Choose a checkpoint file first."
                    }.get(self.source, "Choose a model folder first.")
        if self.source == "folder" and not Path(text).expanduser().is_dir():
            return f"The folder {text} does not exist."
        if self.source == "file":
            path = Path(text).expanduser()
            if not path.is_file():
                return f"The checkpoint file {text} does not exist."
            if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
                return f"{path.name} is not a .safetensors or .ckpt checkpoint."
        if self.source == "hub" and not looks_like_hub_id(text):
            return f"{text!r} is not a hub id; use the form owner/name."
        return None

    def _on_source_changed(self) -> None:
        source = self.source
        self.path_edit.setEnabled(source != "embedded")
        self.browse_button.setEnabled(source in ("folder", "file"))
        self.path_edit.setPlaceholderText({"folder": "a diffusers-layout model folder",
                                           "file": "a .safetensors or .ckpt checkpoint",
                                           "hub": "owner/name on the Hugging Face hub"}
                                          .get(source, "the model shipped in assets/models"))
        self.changed.emit()

    def _browse(self) -> None:
        start = self.path_edit.text() or self.last_folder
        if self.source == "file":
            path, _ = QFileDialog.getOpenFileName(self, "Choose a checkpoint file", start,
                                                  CHECKPOINT_FILTER)
            if path:
                self.last_folder = str(Path(path).parent)
                self.path_edit.setText(path)
            return
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder", start)
        if folder:
            self.last_folder = folder
            self.path_edit.setText(folder)
