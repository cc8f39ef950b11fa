"""The history strip: frames that stayed on screen a moment, newest first; a click restores.

Typing makes a frame per keystroke, so the strip keeps only frames that were still the
newest after HISTORY_SETTLE_MS (and every saved one). Each entry keeps the frame and its
recipe (engine.recipe), so choosing it sets every input back and draws it again. Entries
are PNGs with their recipes in a folder beside the settings, so the history outlives the
session (and a crash). A saved PNG dropped on the strip restores the recipe written into it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QMimeData, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QIcon,
    QImage,
    QImageReader,
    QPainter,
    QPixmap,
)
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem, QWidget

from app.canvas import local_file, save_image_atomic
from engine.api import EngineError
from engine.recipe import Recipe, read_recipe, text_chunks
from engine.untrusted import MAX_IMAGE_PIXELS

HISTORY_SETTLE_MS = 1500  # a frame shown this long without a newer one joins the history
HISTORY_LIMIT = 48
THUMBNAIL_PX = 64
FRAME_FORMAT = QImage.Format.Format_RGB888  # one format, so equal frames compare equal


def forget(path: Path) -> None:
    """Delete a history file; one already gone, or a read-only folder, is not an error."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


@dataclass(frozen=True, eq=False)
class HistoryEntry:
    """One kept frame and the recipe that draws it again."""

    frame: QImage
    recipe: Recipe
    path: Path | None = None  # its PNG in the history folder, once written there


class HistoryStrip(QListWidget):
    """A row of thumbnails, newest first, kept on disk in `folder` (None: memory only)."""

    entry_chosen = Signal(object)  # HistoryEntry
    file_dropped = Signal(str)  # a local file to read a recipe from
    problem = Signal(str)  # the history folder could not be written

    def __init__(self, folder: Path | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.folder = folder
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMBNAIL_PX, THUMBNAIL_PX))
        self.setFixedHeight(THUMBNAIL_PX + 24)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setAcceptDrops(True)
        self.setDragEnabled(True)  # an entry drags out as its image and its PNG file
        self.setToolTip("History: frames you paused on and frames you saved; click one to "
                        "draw it again, drag one onto the canvas to edit it or out to another "
                        "program. Drop a PNG saved by DMD Studio here to restore its recipe.")
        self._pending: HistoryEntry | None = None
        self.settle_timer = QTimer(self)
        self.settle_timer.setSingleShot(True)
        self.settle_timer.setInterval(HISTORY_SETTLE_MS)
        self.settle_timer.timeout.connect(self.keep_pending)
        self.itemClicked.connect(lambda item: self.entry_chosen.emit(
            item.data(Qt.ItemDataRole.UserRole)))
        clear = QAction("Clear history", self)
        clear.triggered.connect(self.clear_history)
        self.addAction(clear)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self._load()

    def _files(self) -> list[Path]:
        """The folder's PNGs, oldest first (names are times); [] without a folder."""
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.glob("*.png") if not path.name.startswith("."))

    def _load(self) -> None:
        """The newest HISTORY_LIMIT readable PNGs of the folder; older readable ones (fallen
        off the strip, e.g. by a crash before trimming) are deleted, unreadable ones left."""
        kept: list[HistoryEntry] = []
        for path in reversed(self._files()):  # newest first
            try:
                recipe = read_recipe(path)
            except EngineError:
                recipe = None
            reader = QImageReader(str(path))
            size = reader.size()  # from the header: a frame too big is never decoded
            if recipe is None or size.width() * size.height() > MAX_IMAGE_PIXELS:
                continue
            frame = reader.read().convertToFormat(FRAME_FORMAT)  # comparable with add's
            if frame.isNull():
                continue
            if len(kept) == HISTORY_LIMIT:
                forget(path)
            else:
                kept.append(HistoryEntry(frame, recipe, path))
        for entry in reversed(kept):
            self._insert(entry)

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
        entry = replace(entry, frame=entry.frame.convertToFormat(FRAME_FORMAT))
        for row, kept in enumerate(self.entries()):
            if kept.frame == entry.frame and kept.recipe.describe() == entry.recipe.describe():
                self.setCurrentRow(row)  # drawn again (a click, a save after it settled)
                return
        self._insert(replace(entry, path=self._write(entry)))
        self.setCurrentRow(0)
        while self.count() > HISTORY_LIMIT:
            self._remove(self.count() - 1)

    def _insert(self, entry: HistoryEntry) -> None:
        thumbnail = entry.frame.scaled(THUMBNAIL_PX, THUMBNAIL_PX,
                                       Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation)
        item = QListWidgetItem(QIcon(QPixmap.fromImage(thumbnail)), "")
        item.setData(Qt.ItemDataRole.UserRole, entry)
        item.setToolTip(entry.recipe.describe())
        self.insertItem(0, item)

    def _write(self, entry: HistoryEntry) -> Path | None:
        if self.folder is None:
            return None
        path = self.folder / f"{datetime.now():%Y%m%d-%H%M%S-%f}.png"  # sorts by time
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_image_atomic(entry.frame, path, text_chunks(entry.recipe))
        except OSError as error:
            self.problem.emit(f"Could not keep the frame in the history folder {self.folder} "
                              f"({error}).")
            return None
        return path

    def _remove(self, row: int) -> None:
        entry = self.takeItem(row).data(Qt.ItemDataRole.UserRole)
        if entry.path is not None:
            forget(entry.path)

    def clear_history(self) -> None:
        """Remove every entry and its file."""
        self.settle_timer.stop()
        self._pending = None
        while self.count():
            self._remove(0)
        for path in self._files():  # and any the strip did not show
            forget(path)

    def entries(self) -> list[HistoryEntry]:
        return [self.item(row).data(Qt.ItemDataRole.UserRole) for row in range(self.count())]

    def mimeData(self, items: list[QListWidgetItem]) -> QMimeData:
        """What dragging entries out carries: the first one's image and every kept PNG (with
        its recipe), for the canvas (to edit it), other apps and file managers."""
        mime = QMimeData()
        entries = [item.data(Qt.ItemDataRole.UserRole) for item in items]
        if entries:
            mime.setImageData(entries[0].frame)
        mime.setUrls([QUrl.fromLocalFile(str(entry.path)) for entry in entries
                      if entry.path is not None and entry.path.is_file()])
        return mime

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

    dragMoveEvent = dragEnterEvent

    def dropEvent(self, event: QDropEvent) -> None:
        path = local_file(event)
        if path:
            event.acceptProposedAction()
            self.file_dropped.emit(path)
