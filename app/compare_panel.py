"""Student vs teacher: the same prompt and seed through the N-step teacher, with timings."""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPainter, QPaintEvent
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from engine.api import GenerateRequest, GenerateResult


class PixelView(QWidget):
    """A small square image view, nearest-neighbour scaled, with a caption when empty."""

    def __init__(self, caption: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.caption = caption
        self.image: QImage | None = None
        self.setMinimumSize(128, 128)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(160, 160)

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        return width

    def set_image(self, image: QImage | None) -> None:
        self.image = image
        self.update()

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        side = min(self.width(), self.height())
        rect = self.rect().adjusted(0, 0, side - self.width(), side - self.height())
        rect.moveCenter(self.rect().center())
        if self.image is None:
            painter.fillRect(rect, Qt.GlobalColor.lightGray)
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, self.caption)
        else:
            painter.drawImage(rect, self.image)
        painter.end()


class ComparePanel(QGroupBox):
    """Runs a compare as two requests in a row on the live service: student, then teacher.

    A live edit in between supersedes the pending request (latest wins), so the compare is
    abandoned with a note rather than queued.
    """

    submit_requested = Signal(object)  # GenerateRequest to send to the live engine

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Compare with teacher", parent)
        self.student_view = PixelView("student")
        self.teacher_view = PixelView("teacher")
        self.teacher_steps = QSpinBox()
        self.teacher_steps.setRange(1, 1000)
        self.teacher_steps.setValue(20)
        self.teacher_steps.setToolTip("DDIM steps of the teacher sampler.")
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 30.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setValue(4.0)
        self.guidance.setToolTip("Classifier-free guidance scale of the teacher.")
        self.compare_button = QPushButton("Compare")
        self.compare_button.setToolTip("Render the current prompt and seed with the teacher "
                                       "and show it beside the student frame.")
        self.summary = QLabel("Student and teacher for the same prompt and seed.")
        self.summary.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Teacher steps", self.teacher_steps)
        form.addRow("Guidance", self.guidance)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Student"))
        layout.addWidget(self.student_view)
        layout.addWidget(QLabel("Teacher"))
        layout.addWidget(self.teacher_view)
        layout.addLayout(form)
        layout.addWidget(self.compare_button)
        layout.addWidget(self.summary)
        layout.addStretch(1)
        self._pending: GenerateRequest | None = None  # the student request being compared
        self._student_id: int | None = None
        self._teacher_id: int | None = None
        self._student_ms = 0.0

    @property
    def running(self) -> bool:
        return self._student_id is not None or self._teacher_id is not None

    def start(self, request: GenerateRequest) -> None:
        """Begin a compare for this (student) request."""
        self._pending = dataclasses.replace(request, teacher_steps=0, preview_steps=0)
        self._student_id = self._teacher_id = None
        self.summary.setText("Rendering the student…")
        self.compare_button.setEnabled(False)
        self.submit_requested.emit(self._pending)

    def note_submitted(self, request_id: int | None, request: GenerateRequest) -> None:
        """Called for every submit: remembers our ids, abandons on a foreign request."""
        if self._pending is None:
            return
        if request_id is None:
            self._abandon("No model is loaded; load one in the Engine tab.")
        elif request.teacher_steps:
            self._teacher_id = request_id
        elif request is self._pending:
            self._student_id = request_id
        else:
            self._abandon("A new edit replaced the compare; press Compare again.")

    def handle_result(self, result: GenerateResult, request: GenerateRequest,
                      image: QImage | None) -> None:
        if result.request_id == self._student_id:
            self._student_id = None
            if not result.ok:
                self._abandon(f"Student failed: {result.error}")
                return
            self.student_view.set_image(image)
            self._student_ms = result.timings.total_ms
            self.summary.setText(f"Rendering the teacher ({self.teacher_steps.value()} steps)…")
            teacher = dataclasses.replace(self._pending, teacher_steps=self.teacher_steps.value(),
                                          guidance=float(self.guidance.value()))
            self.submit_requested.emit(teacher)
        elif result.request_id == self._teacher_id:
            self._teacher_id = None
            self._pending = None
            self.compare_button.setEnabled(True)
            if not result.ok:
                self.summary.setText(f"Teacher failed: {result.error}")
                return
            self.teacher_view.set_image(image)
            teacher_ms = result.timings.total_ms
            speed_up = teacher_ms / self._student_ms if self._student_ms > 0 else float("nan")
            self.summary.setText(
                f"student {self._student_ms:.0f} ms · teacher {teacher_ms:.0f} ms "
                f"({request.teacher_steps} steps) · {speed_up:.1f}× faster")

    def _abandon(self, note: str) -> None:
        self._pending = None
        self._student_id = self._teacher_id = None
        self.compare_button.setEnabled(True)
        self.summary.setText(note)
