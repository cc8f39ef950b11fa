"""Distillation controls: teacher, method, hyperparameters; progress, losses, samples, log."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from app.distill_process import DistillOptions, DistillProcess, runs_folder, trainer_folder
from app.loss_plot import LossPlot
from app.model_picker import ModelSourcePicker
from app.settings import AppSettings, DistillSettings

SAMPLE_NAME = re.compile(r"step-(\d+)\.png$")


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def newest_sample(run_dir: Path) -> Path | None:
    """samples/step-N.png with the largest N, or None."""
    best, best_step = None, -1
    for path in (run_dir / "samples").glob("step-*.png"):
        match = SAMPLE_NAME.search(path.name)
        if match and int(match.group(1)) > best_step:
            best, best_step = path, int(match.group(1))
    return best


def spin(low: float, high: float, value: float, tip: str, decimals: int = 0,
         step: float = 1.0) -> QSpinBox | QDoubleSpinBox:
    box = QDoubleSpinBox() if decimals else QSpinBox()
    if decimals:
        box.setDecimals(decimals)
        box.setSingleStep(step)
    box.setRange(low, high)
    box.setValue(value)
    box.setToolTip(tip)
    return box


class DistillPanel(QGroupBox):
    status_message = Signal(str)
    use_student_requested = Signal(str, str)  # student folder, description

    def __init__(self, settings: AppSettings, command: list[str] | None = None,
                 parent: QWidget | None = None):
        super().__init__("Distillation", parent)
        self.settings = settings
        self.process = DistillProcess(command, self)
        self.shown_sample: Path | None = None
        self.run_dir: Path | None = None
        self._build(settings.distill)
        self.process.event_received.connect(self._on_event)
        self.process.log_line.connect(self.log_view.appendPlainText)
        self.process.running_changed.connect(self._on_running_changed)
        self.process.finished.connect(self._on_finished)
        self._on_running_changed(False)

    def _build(self, values: DistillSettings) -> None:
        defaults = DistillSettings()
        self.teacher_picker = ModelSourcePicker("Embedded teacher", files=False)
        if values.teacher == "embedded":
            self.teacher_picker.set_value("embedded")
        else:
            source = "folder" if Path(values.teacher).expanduser().exists() else "hub"
            self.teacher_picker.set_value(source, values.teacher)
        self.method_combo = QComboBox()
        self.method_combo.addItem("DMD2 (two-time-scale critic, optional GAN)", "dmd2")
        self.method_combo.addItem("DMD (distribution matching + regression)", "dmd")
        self.method_combo.setCurrentIndex(0 if values.method == "dmd2" else 1)
        self.method_combo.setToolTip("DMD: Yin et al. 2024a; DMD2: Yin et al. 2024b.")
        self.steps_spin = spin(1, 10_000_000, values.steps, "Generator updates. "
                               f"Default {defaults.steps}.")
        self.batch_spin = spin(1, 4096, values.batch, "Student samples per step. "
                               f"Default {defaults.batch}.")
        self.lr_spin = spin(1e-8, 1.0, values.lr, f"Learning rate of student and critic. "
                            f"Default {defaults.lr:g}.", decimals=7, step=1e-6)
        self.guidance_spin = spin(0.0, 30.0, values.guidance, "Teacher CFG scale for the real "
                                  f"score. Default {defaults.guidance}.", decimals=2, step=0.5)
        self.critic_spin = spin(1, 100, values.critic_ratio, "Critic (fake score) updates per "
                                "generator update (DMD2 TTUR; DMD uses 1). Default "
                                f"{defaults.critic_ratio}.")
        self.gan_spin = spin(0.0, 10.0, values.gan_weight, "Weight of the DMD2 GAN loss; 0 turns "
                             "it off. Above 0 it needs real images (the embedded teacher has "
                             f"the emoji set). Default {defaults.gan_weight}.", decimals=4,
                             step=0.001)
        self.regression_spin = spin(0.0, 100.0, values.regression_weight, "Weight of DMD's "
                                    "regression loss on teacher pairs; 0 turns it off. "
                                    f"Default {defaults.regression_weight}.", decimals=3,
                                    step=0.05)
        self.student_steps_combo = QComboBox()
        for count in (1, 2, 4):
            self.student_steps_combo.addItem(f"{count} step{'s' if count > 1 else ''}", count)
        self.student_steps_combo.setCurrentIndex({1: 0, 2: 1, 4: 2}.get(values.student_steps, 0))
        self.student_steps_combo.setToolTip("Steps of the student generator (more than 1 needs "
                                            "DMD2: backward simulation). Default 1.")
        self.init_edit = QLineEdit(values.init_from)
        self.init_edit.setPlaceholderText("the teacher (a new student)")
        self.init_edit.setToolTip("Fine-tune an existing student: its model folder (e.g. "
                                  "assets/models/student) or a run's checkpoints/step-N folder. "
                                  "Empty: the student starts as a copy of the teacher.")
        self.init_browse = QPushButton("Browse…")
        self.init_browse.clicked.connect(self._browse_init)
        init_row = QHBoxLayout()
        init_row.addWidget(self.init_edit, 1)
        init_row.addWidget(self.init_browse)
        self.warmup_spin = spin(0, 1_000_000, values.critic_warmup_steps, "Steps that train "
                                "the critic alone before the student moves; useful when "
                                "fine-tuning, where the critic starts as the teacher. Default 0.")
        self.ema_spin = spin(0.0, 0.9999, values.ema_decay, "Decay of a moving average of the "
                             "student's weights, used for student/ and the samples; 0 turns it "
                             "off. 0.99 steadies one-step fine-tuning of the embedded student. "
                             "Default 0.",
                             decimals=4, step=0.01)
        self.out_edit = QLineEdit(values.out_dir)
        self.out_edit.setPlaceholderText(f"{runs_folder() / 'distill-<time>'} (a new run folder)")
        self.out_browse = QPushButton("Browse…")
        self.out_browse.clicked.connect(self._browse_out)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out_edit, 1)
        out_row.addWidget(self.out_browse)
        form = QFormLayout()
        form.addRow("Teacher", self.teacher_picker)
        form.addRow("Method", self.method_combo)
        for label, widget in (("Steps", self.steps_spin), ("Batch", self.batch_spin),
                              ("Learning rate", self.lr_spin), ("Guidance", self.guidance_spin),
                              ("Critic ratio", self.critic_spin), ("GAN weight", self.gan_spin),
                              ("Regression weight", self.regression_spin),
                              ("Student steps", self.student_steps_combo)):
            form.addRow(label, widget)
        form.addRow("Start from", init_row)
        form.addRow("Critic warm-up", self.warmup_spin)
        form.addRow("EMA decay", self.ema_spin)
        form.addRow("Output folder", out_row)
        self.extra_edit = QLineEdit(values.extra_flags)
        self.extra_edit.setPlaceholderText("e.g. --real-data data/emoji --sample-every 50")
        self.extra_edit.setToolTip("More flags of `python -m engine distill` (see its --help), "
                                   "appended to the command line.")
        form.addRow("Extra flags", self.extra_edit)
        self.start_button = QPushButton("Start")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Save a checkpoint and stop (SIGINT).")
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the run in the output folder from its newest "
                                      "checkpoint.")
        self.use_button = QPushButton("Use this student now")
        self.use_button.setToolTip("Load the run's newest student/ snapshot into the Live tab; "
                                   "training continues.")
        buttons = QHBoxLayout()
        for button in (self.start_button, self.cancel_button, self.resume_button,
                       self.use_button):
            buttons.addWidget(button)
        self.start_button.clicked.connect(lambda: self.start(resume=False))
        self.resume_button.clicked.connect(lambda: self.start(resume=True))
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self.use_student)
        left = QVBoxLayout()
        left.addLayout(form)
        left.addLayout(buttons)
        left.addStretch(1)
        # progress, plot, sample, log
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        self.progress_label = QLabel("Not running.")
        self.loss_plot = LossPlot()
        self.sample_label = QLabel("Samples appear here")
        self.sample_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.sample_label.setMinimumSize(160, 160)
        self.sample_label.setSizePolicy(QSizePolicy.Policy.Preferred,
                                        QSizePolicy.Policy.Preferred)
        self.sample_label.setStyleSheet("background:#f0f0f0;")
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setPlaceholderText("Trainer log")
        charts = QHBoxLayout()
        charts.addWidget(self.loss_plot, 2)
        charts.addWidget(self.sample_label, 1)
        right = QVBoxLayout()
        right.addWidget(self.progress_bar)
        right.addWidget(self.progress_label)
        right.addLayout(charts, 2)
        right.addWidget(self.log_view, 1)
        layout = QHBoxLayout(self)
        layout.addLayout(left)
        layout.addLayout(right, 1)

    # -- actions -----------------------------------------------------------------------------
    def options(self, resume: bool) -> DistillOptions:
        """The form as a command line; raises ValueError for unbalanced quotes in extras."""
        extra = tuple(shlex.split(self.extra_edit.text()))
        out_dir = self.out_edit.text().strip()
        if not out_dir:
            out_dir = str(runs_folder() / time.strftime("distill-%Y%m%d-%H%M%S"))
            self.out_edit.setText(out_dir)
        return DistillOptions(
            teacher=self.teacher_picker.value(), out_dir=out_dir,
            method=self.method_combo.currentData(), steps=self.steps_spin.value(),
            batch=self.batch_spin.value(), lr=self.lr_spin.value(),
            guidance=self.guidance_spin.value(), critic_ratio=self.critic_spin.value(),
            gan_weight=self.gan_spin.value(), regression_weight=self.regression_spin.value(),
            student_steps=int(self.student_steps_combo.currentData()),
            init_from=self.init_edit.text().strip(),
            critic_warmup_steps=self.warmup_spin.value(), ema_decay=self.ema_spin.value(),
            resume=resume, extra=extra,
        )

    def start(self, resume: bool = False) -> None:
        problem = self.teacher_picker.problem()
        if problem:
            self._report(f"Teacher: {problem}")
            return
        if resume and not self.out_edit.text().strip():
            self._report("Choose the run folder to resume in Output folder.")
            return
        try:
            options = self.options(resume)
        except ValueError as error:
            self._report(f"Extra flags: {error}.")
            return
        self.store_settings()
        self.run_dir, self.shown_sample = Path(options.out_dir), None
        self.loss_plot.clear()
        self.progress_bar.setValue(0)
        self.progress_label.setText("Starting…")
        try:
            self.process.start(options)
        except RuntimeError as error:
            self._report(str(error))

    def cancel(self) -> None:
        self.process.cancel()
        self.progress_label.setText("Cancelling: saving a checkpoint…")

    def use_student(self) -> None:
        run_dir = Path(self.out_edit.text().strip() or ".")
        student_dir = run_dir / "student"
        if not (student_dir / "unet").is_dir():
            self._report(f"No student snapshot in {student_dir} yet; it appears at the first "
                         "checkpoint.")
            return
        step = (self.process.last_progress or {}).get("step")
        description = f"student of {run_dir.name}" + (f" at step {step}" if step else "")
        self.use_student_requested.emit(str(student_dir), description)

    # -- process events ----------------------------------------------------------------------
    def _on_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "progress":
            self._on_progress(event)
        elif kind == "stage":
            self.progress_label.setText(f"{event.get('name', 'preparing')}: "
                                        f"{event.get('step', 0)}/{event.get('total', '?')}")
        elif kind == "sample" and event.get("path"):
            self._show_sample(self._resolve(str(event["path"])))
        elif kind == "checkpoint":
            self.log_view.appendPlainText(f"checkpoint at step {event.get('step')}: "
                                          f"{event.get('path')}")
            self.use_button.setToolTip(f"Load {event.get('student')} into the Live tab.")
        elif kind == "done" and not event.get("stopped"):
            self.progress_bar.setValue(100)
        elif kind == "error":
            self._report(f"Distillation error: {event.get('message')}")

    def _on_progress(self, event: dict) -> None:
        step, total = int(event.get("step") or 0), max(int(event.get("total") or 1), 1)
        self.progress_bar.setValue(round(100 * min(step, total) / total))
        parts = [f"step {step}/{total}"]
        if isinstance(event.get("it_s"), int | float):
            parts.append(f"{event['it_s']:.2f} it/s")
        if isinstance(event.get("eta_s"), int | float):
            parts.append(f"ETA {format_duration(event['eta_s'])}")
        if isinstance(event.get("lr"), int | float):
            parts.append(f"lr {event['lr']:.2g}")
        self.progress_label.setText(" · ".join(parts))
        losses = event.get("losses")
        if isinstance(losses, dict):
            self.loss_plot.add_point(step, losses)
        self._show_newest_sample()

    @staticmethod
    def _resolve(path: str) -> Path:
        """Event paths are relative to the trainer's working directory, the data folder."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else trainer_folder() / candidate

    def _show_newest_sample(self) -> None:
        if self.run_dir is None:
            return
        sample = newest_sample(self.run_dir)
        if sample is not None and sample != self.shown_sample:
            self._show_sample(sample)

    def _show_sample(self, sample: Path) -> None:
        image = QImage(str(sample))
        if image.isNull():
            return  # still being written; the next event retries
        self.shown_sample = sample
        size = self.sample_label.size()
        self.sample_label.setPixmap(QPixmap.fromImage(image).scaled(
            size, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.FastTransformation))
        self.sample_label.setToolTip(str(sample))

    def _on_running_changed(self, running: bool) -> None:
        self.start_button.setEnabled(not running)
        self.resume_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def _on_finished(self, success: bool, summary: str) -> None:
        self._show_newest_sample()
        if success and not self.process.cancelling:
            self.progress_bar.setValue(100)
        self.progress_label.setText(summary)
        self.log_view.appendPlainText(summary)
        self.status_message.emit(summary)

    def _report(self, message: str) -> None:
        self.progress_label.setText(message)
        self.status_message.emit(message)

    def _browse_out(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder",
                                                  self.out_edit.text() or str(runs_folder()))
        if folder:
            self.out_edit.setText(folder)

    def _browse_init(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Student or checkpoint folder",
                                                  self.init_edit.text() or str(runs_folder()))
        if folder:
            self.init_edit.setText(folder)

    def store_settings(self) -> None:
        self.settings.distill = DistillSettings(
            teacher=self.teacher_picker.value() or "embedded",
            method=self.method_combo.currentData(), steps=self.steps_spin.value(),
            batch=self.batch_spin.value(), lr=self.lr_spin.value(),
            guidance=self.guidance_spin.value(), critic_ratio=self.critic_spin.value(),
            gan_weight=self.gan_spin.value(), regression_weight=self.regression_spin.value(),
            student_steps=int(self.student_steps_combo.currentData()),
            init_from=self.init_edit.text().strip(),
            critic_warmup_steps=self.warmup_spin.value(), ema_decay=self.ema_spin.value(),
            out_dir=self.out_edit.text().strip(), extra_flags=self.extra_edit.text().strip())
        if self.out_edit.text().strip():
            self.settings.last_run_folder = str(Path(self.out_edit.text().strip()).parent)

    def shutdown(self) -> None:
        self.store_settings()
        self.process.shutdown()
