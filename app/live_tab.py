"""The Live tab: prompt, canvas, mode, seed, steps, meter and compare, all request-driven.

Every input change snapshots the state into a frozen GenerateRequest and submits it; the
service's single-slot mailbox drops stale ones, so there is no button and no debounce. A
multi-step frame may be shown first at one step and refined when the input pauses: always,
never, or (auto) only while the full frame is expected to take longer than DIRECT_FRAME_MS.
A round of Variations is a VariationRound (app/variations.py), a Compare a CompareFlow
(app/compare_flow.py): the tab submits their requests and shows their frames.

LiveTab is put together from mixins, one a module: the prompt row and generation controls
(app/live_controls.py), the canvas toolbar (app/live_tools.py), the results (app/live_frames.py)
and the files, clipboard and recipes (app/live_files.py); every widget is an attribute of the
tab, and every slot runs on the GUI thread.
"""

from __future__ import annotations

import itertools
import random

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.bridge import LiveEngine
from app.canvas import Canvas
from app.compare_panel import ComparePanel
from app.history import HistoryStrip
from app.live_controls import GenerationControlsMixin
from app.live_files import FilesAndRecipesMixin
from app.live_frames import FrameResultsMixin
from app.live_tools import CanvasToolsMixin
from app.meter import FrameRate
from app.settings import AppSettings, history_folder
from app.variations import MAX_SEED, VariationRound
from engine.api import GenerateRequest, GenerateResult
from engine.recipe import Recipe
from engine.service import DIRECT_FRAME_MS


class LiveTab(GenerationControlsMixin, CanvasToolsMixin, FrameResultsMixin, FilesAndRecipesMixin,
              QWidget):
    status_message = Signal(str)  # for the main window's status bar

    def __init__(self, engine: LiveEngine, settings: AppSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.engine, self.settings = engine, settings
        self.last_frame_request: GenerateRequest | None = None
        self.last_result: GenerateResult | None = None
        self.frame_recipe: Recipe | None = None  # what made the frame on the canvas
        self._full_saves: dict[int, tuple[str, Recipe]] = {}  # full-VAE saves under way, by id
        self._full_save_ids = itertools.count(1)
        self.variations = VariationRound()  # Variations' frames go to the history strip
        self.frame_rate = FrameRate()
        self.canvas = Canvas()
        self.canvas.brush_size = settings.brush_size
        self.canvas.brush_colour = QColor(settings.brush_colour)
        self.compare = ComparePanel()
        self.compare.teacher_steps.setValue(settings.teacher_steps)
        self.compare.guidance.setValue(settings.teacher_guidance)
        self._build_controls()
        self._build_layout()
        self._connect()
        self._on_steps_changed()
        self.show_model_missing(not engine.has_generator)

    # -- construction ------------------------------------------------------------------------
    def _build_controls(self) -> None:
        self._build_prompt_row()
        self._build_generation_controls()
        self._build_canvas_tools()
        self.history = HistoryStrip(history_folder())
        self.recipe_button = self._tool_button(
            "Open recipe…", "Set the prompt, seed, steps, mode and sketch back to what made an "
            "image saved by DMD Studio (or drop the PNG on the history strip)", checkable=False)
        # status
        self.model_missing = QLabel("No model is loaded. Pick one in the Engine tab.")
        self.model_missing.setStyleSheet("background:#fff3cd; color:#664d03; padding:4px;")
        self.meter = QLabel("No frame yet")
        self.meter.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(90)
        self.busy_bar.setMaximumHeight(12)
        self.busy_bar.setToolTip("Generating")
        policy = self.busy_bar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.busy_bar.setSizePolicy(policy)
        self.busy_bar.hide()

    def _build_layout(self) -> None:
        options, control_row = self._generation_rows()
        middle = QHBoxLayout()
        middle.addWidget(self.canvas, 1)
        self.compare.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Preferred)
        self.compare.setFixedWidth(220)
        middle.addWidget(self.compare)
        history_row = QHBoxLayout()
        history_row.addWidget(self.recipe_button, 0, Qt.AlignmentFlag.AlignTop)
        history_row.addWidget(self.history, 1)
        meter_row = QHBoxLayout()
        meter_row.addWidget(self.meter, 1)
        meter_row.addWidget(self.busy_bar)
        layout = QVBoxLayout(self)
        layout.addWidget(self.model_missing)
        layout.addLayout(self._prompt_row())
        layout.addLayout(options)
        layout.addLayout(control_row)
        layout.addLayout(self._canvas_tools_row())
        layout.addLayout(middle, 1)
        layout.addLayout(history_row)
        layout.addLayout(meter_row)
        self._on_mode_changed()

    def _connect(self) -> None:
        self._connect_generation_controls()
        self.canvas.sketch_changed.connect(self._on_sketch_changed)
        self._connect_canvas_tools()
        self._connect_files_and_recipes()
        self.compare.compare_button.clicked.connect(self.start_compare)
        self.compare.submit_requested.connect(self.submit_request)
        self.engine.result_ready.connect(self._on_result)
        self.engine.busy_changed.connect(self.busy_bar.setVisible)
        self.engine.busy_changed.connect(lambda busy: self.variations_button.setEnabled(not busy))
        self.engine.generator_changed.connect(self._on_generator_changed)
        self.engine.adapters_changed.connect(self.submit_current)  # LoRAs, decoder: redraw
        self.engine.full_render_ready.connect(self._save_full_render)
        self.engine.full_render_failed.connect(
            lambda message: self.status_message.emit(f"Could not save: {message}"))

    # -- requests ----------------------------------------------------------------------------
    def build_request(self) -> GenerateRequest:
        """Snapshot every input that affects the image into one frozen request."""
        if not self.seed_lock.isChecked():
            self.seed_spin.blockSignals(True)
            self.seed_spin.setValue(random.randint(0, MAX_SEED))
            self.seed_spin.blockSignals(False)
        mode, steps = self.mode, int(self.steps_combo.currentData())
        preview = self.preview_combo.currentData()
        control = self.control_request_fields(mode)
        return GenerateRequest(
            prompt=self.prompt_edit.text(),
            match_prompt=self.match_box.isChecked(),
            seed=self.seed_spin.value(),
            steps=steps,
            preview_steps=1 if preview != "off" and steps > 1 else 0,
            preview_above_ms=DIRECT_FRAME_MS if preview == "auto" else 0.0,
            sketch=self.canvas.sketch_on_white() if mode == "sketch" and not control
            else None,
            init_image=self.canvas.edit_source() if mode == "edit" else None,
            mask=self.canvas.edit_mask() if mode == "edit" and self.masked_box.isChecked()
            else None,
            strength=self.strength_slider.value() / 100 if mode == "edit" or
            mode == "sketch" and not control else 1.0,
            **control,
        )

    def control_request_fields(self, mode: str) -> dict:
        """With a control model loaded: its image (Sketch: the strokes; Image edit: the
        opened image with the strokes, or for a scribble or line-art model the strokes
        alone), strength, start and end; {} without one or in Text mode."""
        if self.engine.control_info is None or mode == "text":
            return {}
        strength, start, end = self.control_sliders.values()
        if mode == "edit" and self.engine.control_info[1] == "canny":
            image = self.canvas.edit_source()
        else:
            image = self.canvas.sketch_on_white()
        return {"control_image": image, "control_strength": strength, "control_start": start,
                "control_end": end}

    def submit_current(self) -> None:
        self.submit_request(self.build_request())

    def submit_request(self, request: GenerateRequest) -> None:
        self.variations.stop()  # a new input ends a round of variations
        try:
            request_id = self.engine.submit(request)
        except Exception as error:  # noqa: BLE001 - e.g. a closed service; never crash the UI
            self.status_message.emit(f"Could not submit: {error}")
            return
        self.compare.note_submitted(request_id, request)

    def start_compare(self) -> None:
        """Render the current request with the student, then with the teacher."""
        self.compare.start(self.build_request())

    def _on_sketch_changed(self) -> None:
        if self.mode == "text":
            self.set_mode("sketch")  # drawing means the sketch should count; this submits
        else:
            self.submit_current()

    def store_settings(self) -> None:
        self.settings.preview = self.preview_combo.currentData()
        self.settings.teacher_steps = self.compare.teacher_steps.value()
        self.settings.teacher_guidance = float(self.compare.guidance.value())
