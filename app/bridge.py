"""Qt side of the engine: results re-emitted on the UI thread, models loaded off it.

GenerationService calls its on_result callback on the worker thread; LiveEngine turns
that call into a queued Qt signal so widgets are only ever touched on the UI thread
(napari's slicer pattern). ModelLoadJob runs engine.service.load_generator in a QThread.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from engine.api import EngineError, GenerateRequest, GenerateResult, LoraChoice
from engine.service import GenerationService

GeneratorLoader = Callable[[str | None, str, str], object]


def default_loader(model: str | None, backend: str, device: str = "auto", **options):
    """engine.service.load_generator, imported lazily (it pulls in torch); options: its
    control, control_type and options (ModelOptions) arguments."""
    from engine.service import load_generator

    return load_generator(model, backend, device, **options)


def error_text(error: BaseException) -> str:
    """One line for the user: EngineError messages as is, others with their type."""
    if isinstance(error, EngineError):
        return str(error)
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first_line}".rstrip(": ")


class LiveEngine(QObject):
    """Owns the GenerationService; submit() on the UI thread, results as signals."""

    result_ready = Signal(object, object)  # GenerateResult, its GenerateRequest (UI thread)
    busy_changed = Signal(bool)  # True while the newest request has no final frame yet
    generator_changed = Signal(str)  # a description: "model · backend/device"
    loras_applied = Signal(object)  # the fused LoRAs (tuple of LoraChoice, with digests)
    adapters_failed = Signal(str)  # a LoRA or decoder could not be used: one sentence
    adapters_changed = Signal()  # LoRAs or the decoder changed: frames look different now
    full_render_ready = Signal(object, object)  # full-VAE image, the GenerateRequest
    full_render_failed = Signal(str)
    _delivered_on_worker = Signal(object)  # internal: emitted on the worker thread
    _job_done_on_worker = Signal(str, object, object)  # internal: kind, future, payload

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._service: GenerationService | None = None
        self._latest_id = 0
        self._busy = False
        self._closed = False
        self.description = ""
        self.model_dir = None  # the loaded model's folder (the About dialog shows its card)
        self.is_student = True
        self.default_steps = 1
        self.prompt_suggestions: list[str] = []
        self.has_vocabulary = False
        self.loras: list[LoraChoice] = []  # what the user chose (re-applied to a new model)
        self.applied_loras: tuple[LoraChoice, ...] = ()  # what the model runs with now
        self.decoder = ""  # the fast decoder folder chosen, "" for the model's VAE
        self.control_info: tuple[str, str] | None = None
        self._latest_jobs: dict[str, object] = {}  # kind -> the newest Future of that kind
        self._delivered_on_worker.connect(self._on_delivered, Qt.ConnectionType.QueuedConnection)
        self._job_done_on_worker.connect(self._on_job_done, Qt.ConnectionType.QueuedConnection)

    # -- model -------------------------------------------------------------------------------
    @property
    def has_generator(self) -> bool:
        return self._service is not None

    @property
    def backend_name(self) -> str:
        return self._service.backend_name if self._service else ""

    @property
    def device(self) -> str:
        return self._service.device if self._service else ""

    def set_generator(self, generator, description: str = "") -> None:
        """Start the service with this generator, or swap it in at the next request."""
        if self._closed:
            return  # a load that finished while the window was closing
        if self._service is None:
            self._service = GenerationService(generator, self._delivered_on_worker.emit)
        else:
            self._service.replace_generator(generator)
        self.description = description
        self.model_dir = getattr(getattr(generator, "backend", None), "model_dir", None)
        # A teacher (no student.json) makes noise in one step; the live tab says so.
        self.is_student = bool(getattr(generator, "is_student", True))
        # The step count the student was distilled for; the live tab starts there.
        self.default_steps = int(getattr(generator, "default_steps", 1))
        # Prompts the model draws well (its prompts.txt); the live tab offers them.
        self.prompt_suggestions = list(getattr(generator, "prompt_suggestions", None) or [])
        # Whether it draws prompts in other words as its nearest training prompt.
        self.has_vocabulary = getattr(generator, "vocabulary", None) is not None
        self.applied_loras = ()
        if self.loras:  # the user's LoRAs and decoder carry over to the new model
            self.set_loras(self.loras)
        if self.decoder:
            self.set_decoder(self.decoder)
        # (folder, type) of the control model that steers sketches; None without one.
        self.control_info = getattr(generator, "control_info", None)
        self.generator_changed.emit(description)

    # -- LoRAs and the fast decoder (run by the service between frames) ------------------------
    def set_loras(self, loras: list[LoraChoice]) -> None:
        """Fuse these LoRAs into the running model; loras_applied or adapters_failed follows."""
        self.loras = list(loras)
        if self._service is not None:
            self._watch("loras", self._service.set_loras(list(loras)))

    def set_decoder(self, folder: str) -> None:
        """Decode live frames with this fast decoder folder ("" for the model's own VAE)."""
        self.decoder = folder
        if self._service is not None:
            self._watch("decoder", self._service.set_decoder(folder or None))

    def render_full(self, request: GenerateRequest) -> bool:
        """Ask for the request's image decoded by the full VAE (full_render_ready follows);
        False when no model is loaded."""
        if self._service is None:
            return False
        self._watch("render", self._service.render_full(request), request)
        return True

    def _watch(self, kind: str, future, payload=None) -> None:
        self._latest_jobs[kind] = future
        future.add_done_callback(
            lambda done: self._job_done_on_worker.emit(kind, done, payload))

    @Slot(str, object, object)
    def _on_job_done(self, kind: str, future, payload) -> None:
        if self._closed or future.cancelled() or future is not self._latest_jobs.get(kind):
            return  # a newer setting replaced it (its result follows), or the window closes
        error = future.exception()
        if kind == "render":
            if error is None:
                self.full_render_ready.emit(future.result(), payload)
            else:
                self.full_render_failed.emit(error_text(error))
            return
        if error is not None:  # back to what the model runs with
            if kind == "decoder":
                self.decoder = ""
            else:
                self.loras = [LoraChoice(lora.path, lora.weight) for lora in self.applied_loras]
            self.adapters_failed.emit(error_text(error))
            return
        if kind == "loras":
            self.applied_loras = tuple(future.result())
            self.loras = [LoraChoice(choice.path, choice.weight) for choice in self.applied_loras]
            self.loras_applied.emit(self.applied_loras)
        self.adapters_changed.emit()

    # -- requests ----------------------------------------------------------------------------
    def submit(self, request: GenerateRequest) -> int | None:
        """Hand the request to the single-slot mailbox; None when no model is loaded."""
        if self._service is None:
            return None
        request_id = self._service.submit(request)
        self._latest_id = request_id
        self._set_busy(True)
        return request_id

    @property
    def busy(self) -> bool:
        return self._busy

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.busy_changed.emit(busy)

    @Slot(object)
    def _on_delivered(self, result: GenerateResult) -> None:
        if self._closed:
            return  # queued before close(); the widgets may be going away
        if result.request_id >= self._latest_id and not result.preview:
            self._set_busy(False)  # the newest request's final frame (a preview refines)
        if result.request is not None:
            self.result_ready.emit(result, result.request)

    def close(self) -> None:
        """Stop the worker thread (the running frame finishes first)."""
        self._closed = True
        if self._service is not None:
            self._service.close()
            self._service = None
        self._set_busy(False)


class ModelLoadJob(QThread):
    """Loads one generator off the UI thread; every exception becomes failed(message)."""

    loaded = Signal(object, str)  # generator, description
    failed = Signal(str)

    def __init__(self, model: str | None, backend: str, description: str,
                 loader: GeneratorLoader = default_loader, parent: QObject | None = None):
        super().__init__(parent)
        self.model, self.backend, self.description = model, backend, description
        self._loader = loader

    def run(self) -> None:
        try:
            generator = self._loader(self.model, self.backend, "auto")
        except BaseException as error:  # noqa: BLE001 - shown to the user, the app lives on
            if not isinstance(error, EngineError):
                traceback.print_exc()
            self.failed.emit(f"Could not load {self.description}: {error_text(error)}")
            return
        self.loaded.emit(generator, self.description)
