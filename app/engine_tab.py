"""The Engine tab: which model and backend the live tab runs, and the distillation panel."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from functools import partial
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from app.adapters_panel import AdaptersPanel
from app.bridge import GeneratorLoader, LiveEngine, ModelLoadJob, default_loader
from app.control_panel import ControlPicker, control_name
from app.distill_panel import DistillPanel
from app.model_picker import ModelSourcePicker
from app.settings import AppSettings
from app.unet_picker import UnetPicker
from engine.api import ONNX_BACKENDS, ModelOptions

SIZE_CHOICES = (("Native size", 0), ("512 px", 512), ("768 px", 768), ("1024 px", 1024))
BACKEND_LABELS = (("Automatic", "auto"), ("PyTorch", "torch"), ("ONNX Runtime", "onnx"),
            ("ONNX Runtime int8 (CPU)", "onnx-int8"))


def onnx_backend_available() -> bool:
    """True when the engine ships its onnxruntime backend module."""
    try:
        return importlib.util.find_spec("engine.runtime.onnx_backend") is not None
    except (ImportError, ValueError):
        return False


def embedded_model() -> str | None:
    """The shipped default model folder (student, else teacher), or None."""
    from engine.runtime.loading import default_model

    return default_model()


class ModelPanel(QGroupBox):
    """Loads a generator off the UI thread and hands it to the live engine."""

    status_message = Signal(str)

    def __init__(self, engine: LiveEngine, settings: AppSettings,
                 loader: GeneratorLoader = default_loader, parent: QWidget | None = None):
        super().__init__("Model", parent)
        self.engine, self.settings, self._loader = engine, settings, loader
        self.picker = ModelSourcePicker("Embedded student")
        self.picker.set_value(settings.model_source, settings.model)
        self.picker.last_folder = settings.model if settings.model_source == "folder" else ""
        self.backend_combo = QComboBox()
        for label, backend in BACKEND_LABELS:
            self.backend_combo.addItem(label, backend)
        self.backend_combo.setItemData(0, "ONNX Runtime on a CPU for small models such as the "
                                          "embedded one (about 2x faster frames), PyTorch on a "
                                          "GPU or for big models", Qt.ItemDataRole.ToolTipRole)
        int8_index = self.backend_combo.findData("onnx-int8")
        self.backend_combo.setItemData(int8_index, "int8 matrix products in the text encoder and "
                                       "UNet: the fastest frames on small CPUs (exported once "
                                       "on first use)", Qt.ItemDataRole.ToolTipRole)
        if not onnx_backend_available():
            for backend in ONNX_BACKENDS:
                index = self.backend_combo.findData(backend)
                self.backend_combo.model().item(index).setEnabled(False)
                self.backend_combo.setItemData(index, "Not available: this build has no "
                                               "engine/runtime/onnx_backend.py.",
                                               Qt.ItemDataRole.ToolTipRole)
        index = self.backend_combo.findData(settings.backend)
        if index >= 0 and self.backend_combo.model().item(index).isEnabled():
            self.backend_combo.setCurrentIndex(index)
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the model off the UI thread; the live tab switches "
                                     "to it when ready.")
        self.state_label = QLabel("No model loaded.")
        self.state_label.setWordWrap(True)
        self.size_combo = QComboBox()
        for label, size in SIZE_CHOICES:
            self.size_combo.addItem(label, size)
        self.size_combo.setToolTip("The image size the model renders: its own (SD 1.x 512, "
                                   "SD 2.x 768, SDXL 1024), or 512 for SD-Turbo and SDXL-Turbo.")
        self.size_combo.setCurrentIndex(max(0, self.size_combo.findData(settings.image_size)))
        row = QHBoxLayout()
        row.addWidget(self.backend_combo)
        row.addWidget(self.size_combo)
        row.addWidget(self.load_button)
        row.addStretch(1)
        form = QFormLayout(self)
        form.addRow("Model", self.picker)
        self.unet_picker = UnetPicker(settings.unet_file, settings.student_timesteps)
        form.addRow("UNet", self.unet_picker)
        form.addRow("Backend", row)
        self.control_picker = ControlPicker(settings.control_model, settings.control_type)
        form.addRow("Control", self.control_picker)
        form.addRow("State", self.state_label)
        self.load_button.clicked.connect(self.load_selected)
        self._jobs: list[ModelLoadJob] = []
        self._newest_job: ModelLoadJob | None = None
        self.last_load: tuple[str, str] | None = None  # (model, description) loaded last
        engine.generator_changed.connect(self._on_generator_changed)

    @property
    def backend(self) -> str:
        return self.backend_combo.currentData()

    @property
    def loading(self) -> bool:
        return any(job.isRunning() for job in self._jobs)

    def load_selected(self) -> None:
        """Load what the picker shows; problems become a message, not an exception."""
        problem = self.picker.problem()
        options, unet_problem = self.unet_picker.model_options()
        if problem or unet_problem:
            self._report(problem or unet_problem)
            return
        source, value = self.picker.source, self.picker.value()
        if source == "embedded":
            try:
                model = embedded_model()
            except Exception as error:  # noqa: BLE001 - e.g. torch missing: show, don't crash
                self._report(f"Could not look for the embedded model: {error}")
                return
            if model is None:
                self._report("No embedded model is installed in assets/models; choose a "
                             "folder or a hub id.")
                self.picker.set_value("folder", "")
                return
            name = "embedded student"
        else:
            model, name = value, Path(value).name if source == "folder" else value
        self.settings.model_source, self.settings.model = source, value if source != "embedded" \
            else ""
        self.settings.backend = self.backend
        self.settings.control_model = self.control_picker.folder
        self.settings.control_type = self.control_picker.control_type
        self.settings.unet_file = self.unet_picker.unet_file
        self.settings.student_timesteps = self.unet_picker.timesteps
        self.settings.image_size = self.size_combo.currentData()
        if self.settings.image_size:
            options = replace(options or ModelOptions(), size=self.settings.image_size)
        if options is not None and options.unet:
            name = f"{name} + {Path(options.unet).name}"
        self.load(model, f"{name} ({self.backend})", options)

    def load(self, model: str, description: str, options: ModelOptions | None = None) -> None:
        """Start a background load, with the chosen control model and load options (a UNet
        file, student timesteps); the newest load wins if several overlap."""
        backend = self.backend
        if backend != "torch" and (self.engine.loras or self.engine.decoder):
            backend = "torch"  # LoRAs and a fast decoder run on PyTorch
            if self.backend != "auto":
                self.status_message.emit("LoRAs and a fast decoder run on the PyTorch backend, "
                                         "so PyTorch runs this model instead of ONNX Runtime.")
        self.last_load = (model, description)
        loader, control = self._loader, self.control_picker.loader_options()
        if control:
            loader = partial(loader, **control)
            description = f"{description} + {control_name(control['control'])}"
        if options is not None:
            loader = partial(loader, options=options)
        job = ModelLoadJob(model, backend, description, loader, self)
        job.loaded.connect(lambda generator, text, job=job: self._on_loaded(job, generator, text))
        job.failed.connect(lambda message, job=job: self._on_failed(job, message))
        job.finished.connect(lambda job=job: self._on_job_finished(job))
        self._jobs.append(job)
        self._newest_job = job
        self.state_label.setText(f"Loading {description}…")
        self.load_button.setEnabled(False)
        job.start()

    def reload(self) -> None:
        """Load the last model again (e.g. on PyTorch once LoRAs are chosen)."""
        if self.last_load is not None:
            self.load(*self.last_load)

    def _on_loaded(self, job: ModelLoadJob, generator, description: str) -> None:
        if job is not self._newest_job:
            return  # a newer load was started meanwhile
        self.engine.set_generator(generator, description)
        notice = getattr(getattr(generator, "backend", None), "notice", "")
        if notice:  # e.g. onnx asked for, but no writable place for its export
            self.status_message.emit(notice)

    def _on_failed(self, job: ModelLoadJob, message: str) -> None:
        if job is self._newest_job:  # a superseded load's failure would hide the newer one
            self._report(message)

    def _on_job_finished(self, job: ModelLoadJob) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
        job.deleteLater()
        self.load_button.setEnabled(not self._jobs)

    def _on_generator_changed(self, description: str) -> None:
        where = "/".join(part for part in (self.engine.backend_name, self.engine.device) if part)
        self.state_label.setText(f"Running {description}" + (f" on {where}." if where else "."))

    def _report(self, message: str) -> None:
        self.state_label.setText(message)
        self.status_message.emit(message)

    def shutdown(self, timeout_ms: int = 120_000) -> None:
        """Wait up to timeout_ms for each load in flight (a load cannot be interrupted)."""
        for job in list(self._jobs):
            job.wait(timeout_ms)


class EngineTab(QWidget):
    status_message = Signal(str)

    def __init__(self, engine: LiveEngine, settings: AppSettings,
                 loader: GeneratorLoader = default_loader,
                 distill_command: list[str] | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.model_panel = ModelPanel(engine, settings, loader)
        self.adapters_panel = AdaptersPanel(engine, settings)
        self.distill_panel = DistillPanel(settings, distill_command)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_panel)
        layout.addWidget(self.adapters_panel)
        layout.addWidget(self.distill_panel, 1)
        self.model_panel.status_message.connect(self.status_message)
        self.adapters_panel.status_message.connect(self.status_message)
        self.adapters_panel.reload_requested.connect(self.model_panel.reload)
        self.distill_panel.status_message.connect(self.status_message)
        self.distill_panel.use_student_requested.connect(self._use_student)

    def _use_student(self, student_dir: str, description: str) -> None:
        self.model_panel.load(student_dir, f"{description} ({self.model_panel.backend})")

    def shutdown(self) -> None:
        self.distill_panel.shutdown()
        self.model_panel.shutdown()
