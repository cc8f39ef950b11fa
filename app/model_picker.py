"""A model source row: embedded / folder / hub id, with a path field and a folder browser."""

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

SOURCES = (("Embedded", "embedded"), ("Folder", "folder"), ("Hub id", "hub"))
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(text: str) -> bool:
    """owner/name with no leading dot, slash or tilde (same rule as the engine's loader)."""
    return bool(HUB_ID_PATTERN.match(text)) and not text.startswith((".", "/", "~"))


class ModelSourcePicker(QWidget):
    """Chooses where a model comes from; value() is "embedded", a folder, or a hub id."""

    changed = Signal()

    def __init__(self, embedded_label: str = "Embedded", parent: QWidget | None = None):
        super().__init__(parent)
        self.source_combo = QComboBox()
        for label, source in SOURCES:
            self.source_combo.addItem(embedded_label if source == "embedded" else label, source)
        self.source_combo.setToolTip("The shipped embedded model, a local diffusers-layout "
                                     "folder, or a Hugging Face hub id (needs the network once).")
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
        sources = [value for _, value in SOURCES]
        self.source_combo.setCurrentIndex(sources.index(source) if source in sources else 0)
        self.path_edit.setText(text if source != "embedded" else "")

    def value(self) -> str:
        """"embedded" or the folder path / hub id as typed (stripped)."""
        return "embedded" if self.source == "embedded" else self.path_edit.text().strip()

    def problem(self) -> str | None:
        """One sentence saying what is wrong with the current choice, or None."""
        text = self.value()
        if self.source == "embedded":
            return None
        if not text:
            return "Enter a folder or a hub id first." if self.source == "hub" \
                else "Choose a model folder first."
        if self.source == "folder" and not Path(text).expanduser().is_dir():
            return f"The folder {text} does not exist."
        if self.source == "hub" and not looks_like_hub_id(text):
            return f"{text!r} is not a hub id; use the form owner/name."
        return None

    def _on_source_changed(self) -> None:
        source = self.source
        self.path_edit.setEnabled(source != "embedded")
        self.browse_button.setEnabled(source == "folder")
        self.path_edit.setPlaceholderText({"folder": "a diffusers-layout model folder",
                                           "hub": "owner/name on the Hugging Face hub"}
                                          .get(source, "the model shipped in assets/models"))
        self.changed.emit()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder",
                                                  self.path_edit.text() or self.last_folder)
        if folder:
            self.last_folder = folder
            self.path_edit.setText(folder)
