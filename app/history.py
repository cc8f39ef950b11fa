"""The history strip: frames that stayed on screen a moment, newest first; a click restores.

Typing makes a frame per keystroke, so the strip keeps only frames that were still the
newest after HISTORY_SETTLE_MS (and every saved one). Each entry keeps the frame and its
recipe (engine.recipe), so choosing it sets every input back and draws it again. A saved
PNG dropped on the strip restores the recipe written into it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QIcon, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem, QWidget

from app.canvas import local_file
from engine.recipe import Recipe

HISTORY_SETTLE_MS = 1500  # a frame shown this long without a newer one joins the history
HISTORY_LIMIT = 48
THUMBNAIL_PX = 64


@dataclass(frozen=True, eq=False)
class HistoryEntry:
    frame: QImage
    recipe: Recipe


class HistoryStrip(QListWidget):
    entry_chosen = Signal(object)  # HistoryEntry
    file_dropped = Signal(str)  # a local file to read a recipe from

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
        self.setFixedHeight(THUMBNAIL_PX + 24)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAcceptDrops(True)
        self.setToolTip("History: frames you paused on and frames you saved; click one to "
                        "draw it again. Drop a PNG saved by DMD Studio here to restore its "
                        "recipe.")
        self._pending: HistoryEntry | None = None
        self.settle_timer = QTimer(self)
        self.settle_timer.setSingleShot(True)
        self.settle_timer.setInterval(HISTORY_SETTLE_MS)
        self.settle_timer.timeout.connect(self.keep_pending)
        self.itemClicked.connect(lambda item: self.entry_chosen.emit(
            item.data(Qt.ItemDataRole.UserRole)))

    def offer(self, entry: HistoryEntry) -> None:
        """The newest finished frame: kept if nothing replaces it within HISTORY_SETTLE_MS."""
        self._pending = entry
        self.settle_timer.start()

    def keep_pending(self) -> HistoryEntry | None:
        """Add the offered frame now (on save, or when it settled); returns it."""
        self.settle_timer.stop()
        entry, self._pending = self._pending, None
        if entry is not None:
            self.add(entry)
        return entry

    def add(self, entry: HistoryEntry) -> None:
        for row, kept in enumerate(self.entries()):
            if kept.frame == entry.frame and kept.recipe.describe() == entry.recipe.describe():
                self.setCurrentRow(row)  # drawn again (a click, a save after it settled)
                return
        thumbnail = entry.frame.scaled(THUMBNAIL_PX, THUMBNAIL_PX,
                                       Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
        item = QListWidgetItem(QIcon(QPixmap.fromImage(thumbnail)), "")
        item.setData(Qt.ItemDataRole.UserRole, entry)
        item.setToolTip(entry.recipe.describe())
        self.insertItem(0, item)
        while self.count() > HISTORY_LIMIT:
            self.takeItem(self.count() - 1)
        self.setCurrentItem(item)

    def entries(self) -> list[HistoryEntry]:
        return [self.item(row).data(Qt.ItemDataRole.UserRole) for row in range(self.count())]

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self.count() == 0:
            painter = QPainter(self.viewport())
            painter.setPen(QColor("#888888"))
            painter.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                             "History: the frames you pause on and save appear here; "
                             "click one to draw it again")
            painter.end()

    # -- drops: a saved PNG's recipe ---------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if local_file(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if local_file(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = local_file(event)
        if path:
            event.acceptProposedAction()
            self.file_dropped.emit(path)
