"""Help > About: DMD Studio's version, the libraries and device in use, the model's card."""

from __future__ import annotations

import html

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import Qt, qVersion
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from app.bridge import LiveEngine
from app.settings import APP_NAME
from engine.about import model_card, versions


def about_rows(engine: LiveEngine) -> dict[str, str]:
    """What the dialog lists: versions, Qt, and the loaded model's runtime and device."""
    rows = versions()
    rows["Qt"] = f"{qVersion()} (PySide6 {pyside_version})"
    if engine.has_generator:
        rows["Running on"] = f"{engine.backend_name}, {engine.device}"
        rows["Model"] = str(engine.model_dir or engine.description or "")
    else:
        rows["Running on"] = "no model loaded"
    return rows


class AboutDialog(QDialog):
    """A table of versions over the first lines of the loaded model's README.md."""

    def __init__(self, engine: LiveEngine, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"About {APP_NAME}")
        self.rows = about_rows(engine)
        table = "".join(f"<tr><td><b>{html.escape(name)}</b></td><td>{html.escape(value)}</td>"
                        "</tr>" for name, value in self.rows.items())
        self.versions_label = QLabel(
            f"<h3>{APP_NAME}</h3><p>Real-time one-step image generation with Distribution "
            f"Matching Distillation.</p><table cellspacing='4'>{table}</table>")
        self.versions_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.card = model_card(engine.model_dir)
        self.card_view = QPlainTextEdit(self.card or "The loaded model has no model card "
                                                     "(README.md).")
        self.card_view.setReadOnly(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.versions_label)
        layout.addWidget(QLabel("Model card"))
        layout.addWidget(self.card_view, 1)
        layout.addWidget(buttons)
        self.resize(560, 520)
