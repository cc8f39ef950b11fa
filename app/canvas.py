"""The live canvas: the newest frame scaled to fit, a sketch layer with undo, image I/O."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
from PySide6.QtCore import QElapsedTimer, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDropEvent,
    QImage,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QUndoCommand,
    QUndoStack,
)
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.edit_mask import painted_area

SKETCH_SIZE = 256  # sketch layer pixels (square); the engine resizes to the model's size
STROKE_THROTTLE_MS = 120  # at most one sketch_changed per this many ms during a stroke
BACKGROUND = QColor("#2b2b2b")


def qimage_to_array(image: QImage) -> np.ndarray:
    """QImage -> HxWx3 uint8 RGB (a copy)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    buffer = np.frombuffer(rgb.constBits(), np.uint8, count=stride * height)
    return buffer.reshape(height, stride)[:, : width * 3].reshape(height, width, 3).copy()


def array_to_qimage(array: np.ndarray) -> QImage:
    """HxWx3 uint8 RGB -> QImage (a deep copy, independent of the array)."""
    array = np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)
    height, width = array.shape[:2]
    return QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def local_file(event: QDragEnterEvent | QDropEvent) -> str | None:
    """The first local file a drag carries, or None."""
    urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
    paths = [url.toLocalFile() for url in urls if url.isLocalFile()]
    return paths[0] if paths else None


def sketch_layer_from_white(array: np.ndarray) -> QImage:
    """A sketch on white (HxWx3 uint8) -> a transparent sketch layer that composites back
    onto white to the same pixels: white becomes clear, ink keeps its colour ("colour to
    alpha": alpha = 255 - darkest channel, premultiplied colour = value + alpha - 255)."""
    rgb = np.ascontiguousarray(array[:, :, :3], dtype=np.int16)
    alpha = 255 - rgb.min(axis=2)
    premultiplied = rgb + alpha[..., None] - 255
    height, width = alpha.shape
    bgra = np.empty((height, width, 4), np.uint8)  # ARGB32 words, little-endian bytes
    bgra[..., :3] = premultiplied[..., ::-1]
    bgra[..., 3] = alpha
    layer = QImage(bgra.data, width, height, 4 * width,
                   QImage.Format.Format_ARGB32_Premultiplied).copy()
    if (width, height) != (SKETCH_SIZE, SKETCH_SIZE):
        layer = layer.scaled(SKETCH_SIZE, SKETCH_SIZE, Qt.AspectRatioMode.IgnoreAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
    return layer


def save_image_atomic(image: QImage, path: str | Path,
                      texts: dict[str, str] | None = None) -> None:
    """Save a PNG (with `texts` as its text chunks) to a temporary file beside the target,
    then rename over it."""
    path = Path(path)
    if texts:
        image = image.copy()
        for key, value in texts.items():
            image.setText(key, value)
    # a fresh name that QImage creates itself, so the file gets the usual permissions
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.png")
    try:
        if not image.save(str(temporary), "PNG"):
            raise OSError(f"Could not write {path}; check the folder is writable.")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def square_crop(image: QImage, size: int = SKETCH_SIZE) -> QImage:
    """Centre-crop to a square and scale to size x size (RGB888)."""
    side = min(image.width(), image.height())
    left, top = (image.width() - side) // 2, (image.height() - side) // 2
    cropped = image.copy(left, top, side, side)
    scaled = cropped.scaled(size, size, Qt.AspectRatioMode.IgnoreAspectRatio,
                            Qt.TransformationMode.SmoothTransformation)
    return scaled.convertToFormat(QImage.Format.Format_RGB888)


class SketchEdit(QUndoCommand):
    """One stroke, clear or restore: the sketch layer (and a restored recipe's edit mask, part
    of the painted area) before and after."""

    def __init__(self, canvas: Canvas, before: QImage, after: QImage, text: str,
                 masks: tuple[np.ndarray | None, np.ndarray | None] | None = None):
        super().__init__(text)
        self._canvas, self._before, self._after = canvas, before, after
        self._masks = masks or (canvas.restored_mask, canvas.restored_mask)
        self._applied = True  # the edit is already on the canvas when pushed

    def redo(self) -> None:
        if self._applied:
            self._applied = False
            return
        self._canvas.restored_mask = self._masks[1]
        self._canvas.restore_sketch(self._after)

    def undo(self) -> None:
        self._canvas.restored_mask = self._masks[0]
        self._canvas.restore_sketch(self._before)


class Canvas(QWidget):
    """Paints the frame (scaled smoothly or as square pixels, aspect kept) with the sketch
    layer on top."""

    sketch_changed = Signal()  # on stroke end, throttled during a stroke, on undo/redo/clear
    file_dropped = Signal(str)  # a local file dragged onto the canvas
    image_dropped = Signal(QImage)  # image data dragged onto the canvas (e.g. from a browser)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(256, 256)
        self.setCursor(Qt.CursorShape.CrossCursor)
        self.setAcceptDrops(True)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.frame: QImage | None = None  # newest generated frame
        self.base_image: QImage | None = None  # opened image to edit (SKETCH_SIZE square)
        self.restored_mask: np.ndarray | None = None  # a restored recipe's edit mask (HxW)
        self.sketch = self.blank_sketch()
        self.undo_stack = QUndoStack(self)
        self.brush_colour = QColor("#000000")
        self.brush_size = 6
        self.erasing = False
        self.show_sketch = True
        self.show_mask = False  # with the sketch: dim what a "painted area only" edit keeps
        self._kept_tint: tuple[tuple, QImage] | None = None  # (sketch and mask key, tint)
        self.smooth = True  # scale the frame smoothly; False shows its pixels as squares
        self._halo: QImage | None = None  # white outline of the ink, so it shows on dark frames
        self._stroke_before: QImage | None = None
        self._last_point: QPointF | None = None
        self._since_emit = QElapsedTimer()

    @staticmethod
    def blank_sketch() -> QImage:
        image = QImage(SKETCH_SIZE, SKETCH_SIZE, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        return image

    def sizeHint(self) -> QSize:
        return QSize(512, 512)

    # -- content ---------------------------------------------------------------------------
    def set_frame(self, image: QImage) -> None:
        self.frame = image
        self.update()

    def set_base_image(self, image: QImage | None) -> None:
        self.base_image = None if image is None else square_crop(image)
        self.restored_mask = None
        self.update()

    def restore_sketch(self, image: QImage) -> None:
        self.sketch = image.copy()
        self._halo = None
        self.update()
        self.sketch_changed.emit()

    def clear_sketch(self) -> None:
        self.replace_sketch(self.blank_sketch(), "Clear sketch", mask=None)

    def replace_sketch(self, layer: QImage, text: str, mask: np.ndarray | None = None) -> None:
        """Swap the whole sketch layer and the restored edit mask, undoably (clear, a restored
        recipe)."""
        before, masks = self.sketch.copy(), (self.restored_mask, mask)
        self.sketch = layer.convertToFormat(QImage.Format.Format_ARGB32_Premultiplied)
        self.restored_mask = mask
        self._halo = None
        self.undo_stack.push(SketchEdit(self, before, self.sketch.copy(), text, masks))
        self.update()
        self.sketch_changed.emit()

    def sketch_on_white(self) -> np.ndarray:
        """The sketch as HxWx3 uint8 RGB on a white background (request.sketch)."""
        return qimage_to_array(self._composite(QColor("white"), None))

    def edit_source(self) -> np.ndarray:
        """The opened image (or white) with the sketch painted over it (request.init_image)."""
        return qimage_to_array(self._composite(QColor("white"), self.base_image))

    def edit_mask(self) -> np.ndarray:
        """Where a "painted area only" edit redraws (HxW uint8, 255 redraws): the strokes,
        grown by a margin, and the restored recipe's mask."""
        alpha = self.sketch.convertToFormat(QImage.Format.Format_Alpha8)
        stride = alpha.bytesPerLine()
        buffer = np.frombuffer(alpha.constBits(), np.uint8, count=stride * SKETCH_SIZE)
        strokes = buffer.reshape(SKETCH_SIZE, stride)[:, :SKETCH_SIZE]
        return painted_area(strokes, self.restored_mask)

    def _composite(self, background: QColor, base: QImage | None) -> QImage:
        image = QImage(SKETCH_SIZE, SKETCH_SIZE, QImage.Format.Format_RGB32)
        image.fill(background)
        painter = QPainter(image)
        if base is not None:
            painter.drawImage(0, 0, base)
        painter.drawImage(0, 0, self.sketch)
        painter.end()
        return image

    def save_sketch(self, path: str | Path) -> None:
        """The sketch layer as a PNG with transparency, written atomically."""
        save_image_atomic(self.sketch, path)

    def save_frame(self, path: str | Path, texts: dict[str, str] | None = None) -> None:
        if self.frame is None:
            raise OSError("There is no generated image to save yet.")
        save_image_atomic(self.frame, path, texts)

    # -- geometry --------------------------------------------------------------------------
    def target_rect(self) -> QRectF:
        """The square where frame and sketch are shown, centred, as large as fits."""
        side = min(self.width(), self.height())
        return QRectF((self.width() - side) / 2, (self.height() - side) / 2, side, side)

    def _to_sketch(self, position: QPointF) -> QPointF:
        rect = self.target_rect()
        scale = SKETCH_SIZE / max(rect.width(), 1.0)
        return QPointF((position.x() - rect.left()) * scale, (position.y() - rect.top()) * scale)

    # -- painting --------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), BACKGROUND)
        rect = self.target_rect()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.smooth)
        shown = self.frame if self.frame is not None else self.base_image
        if shown is None:
            painter.fillRect(rect, QColor("white"))
            painter.setPen(QColor("#888888"))
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter,
                             "Type a prompt or draw here")
        else:
            painter.drawImage(rect, shown)
        if self.show_sketch:
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            if shown is not None:  # a light outline keeps dark ink visible on dark frames
                halo = self._sketch_halo()
                step = rect.width() / SKETCH_SIZE
                for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                    painter.drawImage(rect.translated(dx * step, dy * step), halo)
            painter.drawImage(rect, self.sketch)
            if self.show_mask:
                painter.drawImage(rect, self.kept_tint())
        painter.end()

    def kept_tint(self) -> QImage:
        """Translucent black over what the masked edit keeps; clear where it redraws."""
        key = (self.sketch.cacheKey(), id(self.restored_mask))
        if self._kept_tint is None or self._kept_tint[0] != key:
            alpha = ((255 - self.edit_mask().astype(np.uint16)) * 2 // 5).astype(np.uint8)
            bgra = np.zeros((SKETCH_SIZE, SKETCH_SIZE, 4), np.uint8)  # premultiplied black
            bgra[..., 3] = alpha
            tint = QImage(bgra.data, SKETCH_SIZE, SKETCH_SIZE, 4 * SKETCH_SIZE,
                          QImage.Format.Format_ARGB32_Premultiplied).copy()
            self._kept_tint = (key, tint)
        return self._kept_tint[1]

    def _sketch_halo(self) -> QImage:
        if self._halo is None:
            halo = self.sketch.copy()
            painter = QPainter(halo)
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_SourceIn)
            painter.fillRect(halo.rect(), QColor(255, 255, 255, 170))
            painter.end()
            self._halo = halo
        return self._halo

    def _draw_segment(self, start: QPointF, end: QPointF) -> None:
        painter = QPainter(self.sketch)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self.erasing:
            painter.setCompositionMode(QPainter.CompositionMode.CompositionMode_Clear)
        pen = QPen(self.brush_colour, self.brush_size, Qt.PenStyle.SolidLine,
                   Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        if start == end:
            painter.drawPoint(start)
        else:
            painter.drawLine(start, end)
        painter.end()
        self._halo = None
        self.update()

    # -- drops -----------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasImage() or local_file(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = local_file(event)
        if path:
            self.file_dropped.emit(path)
        elif event.mimeData().hasImage():
            self.image_dropped.emit(QImage(event.mimeData().imageData()))
        else:
            return
        event.acceptProposedAction()

    # -- mouse -----------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        if event.button() != Qt.MouseButton.LeftButton:
            return
        self._stroke_before = self.sketch.copy()
        self._last_point = self._to_sketch(event.position())
        self._draw_segment(self._last_point, self._last_point)
        self._since_emit.start()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        if self._last_point is None:
            return
        point = self._to_sketch(event.position())
        self._draw_segment(self._last_point, point)
        self._last_point = point
        if self._since_emit.elapsed() >= STROKE_THROTTLE_MS:
            self._since_emit.restart()
            self.sketch_changed.emit()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        if self._last_point is None or event.button() != Qt.MouseButton.LeftButton:
            return
        self._draw_segment(self._last_point, self._to_sketch(event.position()))
        self._last_point = None
        before, self._stroke_before = self._stroke_before, None
        text = "Erase" if self.erasing else "Stroke"
        self.undo_stack.push(SketchEdit(self, before, self.sketch.copy(), text))
        self.sketch_changed.emit()
