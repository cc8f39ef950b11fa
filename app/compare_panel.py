"""Student vs teacher: the two frames of a compare side by side, with their timings."""

from __future__ import annotations

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

from app.compare_flow import CompareFlow, CompareUpdate
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
    """Shows a CompareFlow (app/compare_flow.py): the two frames, their timings, the teacher's
    steps and guidance."""

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
        self.flow = CompareFlow()

    @property
    def running(self) -> bool:
        return self.flow.running

    def start(self, request: GenerateRequest) -> None:
        """Begin a compare for this (student) request."""
        self._apply(self.flow.start(request))

    def note_submitted(self, request_id: int | None, request: GenerateRequest) -> None:
        """Called for every submit: remembers our ids, abandons on a foreign request."""
        self._apply(self.flow.note_submitted(request_id, request))

    def handle_result(self, result: GenerateResult, request: GenerateRequest,
                      image: QImage | None) -> None:
        self._apply(self.flow.handle_result(result, request, self.teacher_steps.value(),
                                            self.guidance.value()), image)

    def _apply(self, update: CompareUpdate | None, image: QImage | None = None) -> None:
        if update is None:
            return
        if update.show is not None:
            view = self.student_view if update.show == "student" else self.teacher_view
            view.set_image(image)
        if update.summary is not None:
            self.summary.setText(update.summary)
        if update.compare_enabled is not None:
            self.compare_button.setEnabled(update.compare_enabled)
        if update.submit is not None:
            self.submit_requested.emit(update.submit)
