"""The Live tab: prompt, canvas, mode, seed, steps, meter and compare, all request-driven;
its files, clipboard and recipes (open, paste or drop an image to edit, save a frame with
its recipe, set every input back to a saved frame's recipe).

Every input change snapshots the state into a frozen GenerateRequest and submits it; the
service's single-slot mailbox drops stale ones, so there is no button and no debounce. A
multi-step frame may be shown first at one step and refined when the input pauses: always,
never, or (auto) only while the full frame is expected to take longer than DIRECT_FRAME_MS.
A round of Variations is a VariationRound (app/variations.py), a Compare a CompareFlow
(app/compare_flow.py): the tab submits their requests and shows their frames.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import QStringListModel, Qt, Signal
from PySide6.QtGui import QAction, QColor, QGuiApplication, QIcon, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QCompleter,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.bridge import LiveEngine
from app.canvas import Canvas, array_to_qimage, save_image_atomic, sketch_layer_from_white
from app.compare_panel import ComparePanel
from app.control_panel import ControlSliders
from app.history import HistoryEntry, HistoryStrip
from app.meter import FrameRate, format_meter
from app.settings import AppSettings, history_folder
from app.variations import MAX_SEED, VARIATIONS, VariationRound
from engine.api import EngineError, GenerateRequest, GenerateResult
from engine.recipe import Recipe, read_recipe, text_chunks
from engine.service import DIRECT_FRAME_MS

MODES = (("Text", "text"), ("Sketch", "sketch"), ("Image edit", "edit"))
PREVIEW_MODES = (("Preview: auto", "auto"), ("Preview: always", "always"),
                 ("Preview: off", "off"))
IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.webp)"


class LiveTab(QWidget):
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
        self.prompt_edit = QLineEdit()
        self.prompt_edit.setPlaceholderText("Describe the image; every keystroke renders a frame")
        self.prompt_edit.setClearButtonEnabled(True)
        self.suggestions = QStringListModel(self)
        completer = QCompleter(self.suggestions, self)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setMaxVisibleItems(10)
        self.prompt_edit.setCompleter(completer)
        self.surprise_button = QPushButton("Surprise me")
        self.surprise_button.setToolTip("A random prompt from the ones this model suggests "
                                        "(its prompts.txt); they also drop down as you type.")
        self.surprise_button.setEnabled(False)
        self.mode_combo = QComboBox()
        for label, mode in MODES:
            self.mode_combo.addItem(label, mode)
        self.mode_combo.setToolTip("Text only; sketch conditioning; or edit an image "
                                   "(with the sketch painted over it).")
        self.strength_slider = QSlider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(0, 100)
        self.strength_slider.setValue(60)
        self.strength_slider.setToolTip("Image edit strength: 0 keeps the image, 100 ignores it. "
                                        "In sketch mode it applies to models without sketch "
                                        "conditioning, which edit the sketch instead.")
        self.strength_label = QLabel("0.60")
        self.control_sliders = ControlSliders()  # shown while a control model is loaded
        self.control_sliders.setVisible(False)
        self.masked_box = QCheckBox("Painted area only")
        self.masked_box.setToolTip("Image edit: redraw only where you painted over the image "
                                   "(and a margin around it); keep the rest of it exactly. At "
                                   "strength 1 the painted area is redrawn from the prompt alone.")
        self.masked_box.setChecked(self.settings.masked_edit)
        self.steps_combo = QComboBox()
        for steps in (1, 2, 4):
            self.steps_combo.addItem(f"{steps} step{'s' if steps > 1 else ''}", steps)
        self.steps_combo.setToolTip("Student steps per frame.")
        self.preview_combo = QComboBox()
        for label, mode in PREVIEW_MODES:
            self.preview_combo.addItem(label, mode)
        self.preview_combo.setCurrentIndex(max(0, self.preview_combo.findData(
            self.settings.preview)))
        self.preview_combo.setToolTip(
            "With 2 or 4 steps, what a keystroke shows first. Auto: the full frame when this "
            f"machine makes it within {DIRECT_FRAME_MS:g} ms, else a one-step preview, then the "
            "full frame when you pause. Always: the one-step frame first. Off: always the full "
            "frame.")
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, MAX_SEED)
        self.seed_spin.setToolTip("Noise seed; locked, an edit changes the image, not the noise.")
        self.seed_lock = QCheckBox("Lock")
        self.seed_lock.setChecked(True)
        self.seed_lock.setToolTip("Unlocked: every frame draws a new random seed.")
        self.randomise_button = QPushButton("Randomise")
        self.randomise_button.setToolTip("Pick a new random seed.")
        self.variations_button = QPushButton("Variations")
        self.variations_button.setToolTip(f"Draw {VARIATIONS} new seeds of the current inputs "
                                          "into the history strip; click one to take it.")
        # sketch tools
        self.brush_button = self._tool_button("Brush", "Draw on the sketch layer (B)", "B")
        self.eraser_button = self._tool_button("Eraser", "Erase the sketch layer (E)", "E")
        self.brush_button.setChecked(True)
        tools = QButtonGroup(self)
        tools.setExclusive(True)
        tools.addButton(self.brush_button)
        tools.addButton(self.eraser_button)
        self.colour_button = self._tool_button("Colour", "Brush colour", checkable=False)
        self._show_colour()
        self.size_spin = QSpinBox()
        self.size_spin.setRange(1, 64)
        self.size_spin.setValue(self.canvas.brush_size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush size in sketch pixels (the sketch is 256 px).")
        self.clear_button = self._tool_button("Clear", "Clear the sketch (undoable)",
                                              checkable=False)
        stack = self.canvas.undo_stack
        self.undo_action = QAction("Undo", self)
        self.undo_action.setToolTip("Undo the last stroke (Ctrl+Z)")
        self.undo_action.setShortcuts([QKeySequence("Ctrl+Z")])
        self.undo_action.triggered.connect(stack.undo)
        self.undo_action.setEnabled(False)
        stack.canUndoChanged.connect(self.undo_action.setEnabled)
        self.redo_action = QAction("Redo", self)
        self.redo_action.setToolTip("Redo (Ctrl+Shift+Z)")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.redo_action.triggered.connect(stack.redo)
        self.redo_action.setEnabled(False)
        stack.canRedoChanged.connect(self.redo_action.setEnabled)
        for action in (self.undo_action, self.redo_action):
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            self.addAction(action)
        self.undo_button, self.redo_button = QToolButton(), QToolButton()
        self.undo_button.setDefaultAction(self.undo_action)
        self.redo_button.setDefaultAction(self.redo_action)
        self.show_sketch_box = QCheckBox("Show sketch")
        self.show_sketch_box.setChecked(True)
        self.smooth_box = QCheckBox("Smooth")
        self.smooth_box.setToolTip("Scale the frame smoothly to the canvas; off shows its "
                                   "pixels as squares.")
        self.smooth_box.setChecked(self.settings.smooth_display)
        self.canvas.smooth = self.settings.smooth_display
        self.open_button = self._tool_button("Open image…", "Open an image to edit (Ctrl+O)",
                                             checkable=False)
        self.save_image_button = self._tool_button(
            "Save image…", "Save the frame as PNG, with its recipe (Ctrl+S)", checkable=False)
        self.save_sketch_button = self._tool_button("Save sketch…", "Save the sketch as PNG",
                                                    checkable=False)
        self.history = HistoryStrip(history_folder())
        self.recipe_button = self._tool_button(
            "Open recipe…", "Set the prompt, seed, steps, mode and sketch back to what made an "
            "image saved by DMD Studio (or drop the PNG on the history strip)", checkable=False)
        self.copy_action = self._action("Copy image", "Ctrl+Shift+C", self.copy_frame)
        self.paste_action = self._action("Paste image to edit", "Ctrl+Shift+V", self.paste_image)
        self.canvas.addActions([
            self.copy_action, self.paste_action,
            self._action("Open image to edit…", "Ctrl+O", self._open_image_dialog),
            self._action("Save image…", "Ctrl+S", lambda: self._save_dialog("image")),
        ])
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

    def _tool_button(self, text: str, tip: str, shortcut: str = "",
                     checkable: bool = True) -> QToolButton:
        button = QToolButton()
        button.setText(text)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        if shortcut:
            button.setShortcut(QKeySequence(shortcut))
        return button

    def _action(self, text: str, shortcut: str, slot) -> QAction:
        action = QAction(text, self)
        if shortcut:
            action.setShortcut(QKeySequence(shortcut))
            action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            action.setToolTip(f"{text} ({shortcut})")
            self.addAction(action)
        action.triggered.connect(slot)
        return action

    def _build_layout(self) -> None:
        options = QHBoxLayout()
        for widget in (QLabel("Mode"), self.mode_combo, QLabel("Strength"), self.strength_slider,
                       self.strength_label, self.masked_box, self.steps_combo,
                       self.preview_combo,
                       QLabel("Seed"), self.seed_spin,
                       self.seed_lock, self.randomise_button, self.variations_button):
            options.addWidget(widget)
        options.addStretch(1)
        control_row = QHBoxLayout()
        control_row.addWidget(self.control_sliders)
        control_row.addStretch(1)
        tools = QHBoxLayout()
        for widget in (self.brush_button, self.eraser_button, self.colour_button, self.size_spin,
                       self.clear_button, self.undo_button, self.redo_button,
                       self.show_sketch_box, self.smooth_box):
            tools.addWidget(widget)
        tools.addStretch(1)
        for widget in (self.open_button, self.save_image_button, self.save_sketch_button):
            tools.addWidget(widget)
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
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.prompt_edit, 1)
        prompt_row.addWidget(self.surprise_button)
        layout.addLayout(prompt_row)
        layout.addLayout(options)
        layout.addLayout(control_row)
        layout.addLayout(tools)
        layout.addLayout(middle, 1)
        layout.addLayout(history_row)
        layout.addLayout(meter_row)
        self._on_mode_changed()

    def _connect(self) -> None:
        self.prompt_edit.textChanged.connect(self.submit_current)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.mode_combo.currentIndexChanged.connect(self.submit_current)
        self.strength_slider.valueChanged.connect(self._on_strength_changed)
        self.masked_box.toggled.connect(self._on_masked_toggled)
        self.control_sliders.changed.connect(self._on_control_changed)
        self.steps_combo.currentIndexChanged.connect(self.submit_current)
        self.steps_combo.currentIndexChanged.connect(self._on_steps_changed)
        self.preview_combo.currentIndexChanged.connect(self.submit_current)
        self.seed_spin.valueChanged.connect(self.submit_current)
        self.randomise_button.clicked.connect(self.randomise_seed)
        self.surprise_button.clicked.connect(self.surprise_prompt)
        self.variations_button.clicked.connect(self.make_variations)
        self.canvas.sketch_changed.connect(self._on_sketch_changed)
        self.brush_button.toggled.connect(self._on_tool_changed)
        self.colour_button.clicked.connect(self._pick_colour)
        self.size_spin.valueChanged.connect(self._on_size_changed)
        self.clear_button.clicked.connect(self.canvas.clear_sketch)
        self.show_sketch_box.toggled.connect(self._on_show_sketch)
        self.smooth_box.toggled.connect(self._on_smooth_toggled)
        self.open_button.clicked.connect(self._open_image_dialog)
        self.save_image_button.clicked.connect(lambda: self._save_dialog("image"))
        self.save_sketch_button.clicked.connect(lambda: self._save_dialog("sketch"))
        self.recipe_button.clicked.connect(self._open_recipe_dialog)
        self.history.entry_chosen.connect(lambda entry: self.restore_recipe(entry.recipe))
        self.history.file_dropped.connect(self.restore_recipe_file)
        self.history.problem.connect(self.status_message)
        self.canvas.file_dropped.connect(self.open_image)
        self.canvas.image_dropped.connect(lambda image: self.edit_image(image, "the dropped image"))
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
    @property
    def mode(self) -> str:
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex([value for _, value in MODES].index(mode))

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

    def surprise_prompt(self) -> None:
        prompts = self.suggestions.stringList()
        if prompts:
            self.prompt_edit.setText(random.choice(prompts))  # textChanged submits

    def randomise_seed(self) -> None:
        self.seed_spin.setValue(random.randint(0, MAX_SEED))  # valueChanged submits

    # -- results -----------------------------------------------------------------------------
    def make_variations(self) -> None:
        """Render the current inputs at VARIATIONS random seeds, one after another (a new
        input stops the round), into the history strip rather than onto the canvas; only
        once the canvas has its final frame (the button is off while a frame is made)."""
        if not self.engine.has_generator:
            self.status_message.emit("No model is loaded. Pick one in the Engine tab.")
            return
        if self.engine.busy:
            return
        self.variations.start(self.build_request())
        self._submit_next_variation()

    def _submit_next_variation(self) -> None:
        request = self.variations.next_request()
        if request is None:
            return
        try:
            request_id = self.engine.submit(request)
        except Exception as error:  # noqa: BLE001 - as in submit_request
            self.status_message.emit(f"Could not submit: {error}")
            return
        self.variations.sent(request_id)

    def _on_result(self, result: GenerateResult, request: GenerateRequest) -> None:
        if self.variations.take(result.request_id):
            if result.ok:
                self.history.add(HistoryEntry(array_to_qimage(result.image),
                                              self.recipe_of(result)))
            else:
                self.status_message.emit(f"Generation failed: {result.error}")
            self._submit_next_variation()
            return
        image = array_to_qimage(result.image) if result.ok else None
        if not request.teacher_steps:
            if result.ok:
                self.canvas.set_frame(image)
                self.last_frame_request = request
                self.frame_recipe = self.recipe_of(result)
                if not result.preview:
                    self.history.offer(HistoryEntry(image, self.frame_recipe))
                self.meter.setStyleSheet("")
                self.meter.setText(format_meter(result, self.frame_rate.frame_shown()))
            else:
                self.meter.setStyleSheet("color:#b00020;")
                self.meter.setText(f"Error: {result.error}")
                self.status_message.emit(f"Generation failed: {result.error}")
            self.last_result = result
        elif result.ok:  # Compare's teacher frame: kept in the strip, to save or drag out
            self.history.add(HistoryEntry(image, self.recipe_of(result)))
        self.compare.handle_result(result, request, image)

    def _on_generator_changed(self, description: str) -> None:
        self.show_model_missing(False)
        self.suggestions.setStringList(self.engine.prompt_suggestions)
        self.control_sliders.setVisible(self.engine.control_info is not None)
        self.surprise_button.setEnabled(bool(self.engine.prompt_suggestions))
        index = self.steps_combo.findData(self.engine.default_steps)
        if index >= 0:
            self.steps_combo.blockSignals(True)  # one frame for the new model, below
            self.steps_combo.setCurrentIndex(index)
            self.steps_combo.blockSignals(False)
            self._on_steps_changed()
        if self.engine.is_student:
            self.status_message.emit(f"Model ready: {description}")
        else:
            self.status_message.emit(
                f"Model ready: {description} is a teacher, not a distilled student, so one-step "
                "frames look like noise; try 4 steps or Compare, or distill it in the Engine tab.")
        self.submit_current()

    def show_model_missing(self, missing: bool) -> None:
        self.model_missing.setVisible(missing)

    # -- handlers ----------------------------------------------------------------------------
    def _on_mode_changed(self) -> None:
        uses_strength = self.mode != "text"
        self.strength_slider.setEnabled(uses_strength)
        self.strength_label.setEnabled(uses_strength)
        self.masked_box.setEnabled(self.mode == "edit")
        self.canvas.show_mask = self.mode == "edit" and self.masked_box.isChecked()
        self.canvas.update()

    def _on_control_changed(self) -> None:
        if self.mode != "text":
            self.submit_current()

    def _on_steps_changed(self) -> None:
        self.preview_combo.setEnabled(int(self.steps_combo.currentData()) > 1)

    def _on_strength_changed(self, value: int) -> None:
        self.strength_label.setText(f"{value / 100:.2f}")
        if self.mode != "text":
            self.submit_current()

    def _on_masked_toggled(self, masked: bool) -> None:
        self.settings.masked_edit = masked
        self._on_mode_changed()  # shows or hides the kept part's tint
        if self.mode == "edit":
            self.submit_current()

    def _on_sketch_changed(self) -> None:
        if self.mode == "text":
            self.set_mode("sketch")  # drawing means the sketch should count; this submits
        else:
            self.submit_current()

    def _on_tool_changed(self) -> None:
        self.canvas.erasing = self.eraser_button.isChecked()

    def _on_size_changed(self, size: int) -> None:
        self.canvas.brush_size = size
        self.settings.brush_size = size

    def _on_show_sketch(self, shown: bool) -> None:
        self.canvas.show_sketch = shown
        self.canvas.update()

    def _on_smooth_toggled(self, smooth: bool) -> None:
        self.canvas.smooth = self.settings.smooth_display = smooth
        self.canvas.update()

    def _show_colour(self) -> None:
        swatch = QPixmap(16, 16)
        swatch.fill(self.canvas.brush_colour)
        self.colour_button.setIcon(QIcon(swatch))
        self.colour_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

    def _pick_colour(self) -> None:
        colour = QColorDialog.getColor(self.canvas.brush_colour, self, "Brush colour")
        if colour.isValid():
            self.set_brush_colour(colour)

    def set_brush_colour(self, colour: QColor) -> None:
        self.canvas.brush_colour = colour
        self.settings.brush_colour = colour.name()
        self._show_colour()

    def store_settings(self) -> None:
        self.settings.preview = self.preview_combo.currentData()
        self.settings.teacher_steps = self.compare.teacher_steps.value()
        self.settings.teacher_guidance = float(self.compare.guidance.value())

    # -- files, clipboard and recipes ---------------------------------------------------------
    def recipe_of(self, result: GenerateResult) -> Recipe:
        """What made this frame (a preview's recipe asks for the preview's step count)."""
        request = result.request
        if result.preview:  # the service drew it at the request's preview step count
            request = replace(request, steps=request.preview_steps, preview_steps=0)
        control_model, control_type = self.engine.control_info or ("", "")
        return Recipe.from_request(request, self.engine.description, result.backend,
                                   control_model, control_type, loras=result.loras,
                                   decoder=result.decoder)

    def edit_image(self, image: QImage, name: str) -> bool:
        """Make an image the one Image edit mode paints over and edits."""
        if image.isNull():
            self.status_message.emit(f"Could not read {name} as an image.")
            return False
        self.canvas.set_base_image(image)
        if self.mode == "edit":
            self.submit_current()
        else:
            self.set_mode("edit")
        self.status_message.emit(f"Editing {name}")
        return True

    def open_image(self, path: str) -> bool:
        if not self.edit_image(QImage(path), path):
            return False
        self.settings.last_image_folder = str(Path(path).parent)
        if self._file_recipe(path, quiet=True) is not None:
            self.status_message.emit(f"Editing {Path(path).name}; it was saved by DMD Studio: "
                                     "Open recipe… draws it again instead.")
        return True

    def _open_image_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image to edit",
                                              self.settings.last_image_folder, IMAGE_FILTER)
        if path:
            self.open_image(path)

    def copy_frame(self) -> None:
        if self.canvas.frame is None:
            self.status_message.emit("There is no generated image to copy yet.")
            return
        QGuiApplication.clipboard().setImage(self.canvas.frame)
        self.status_message.emit("Copied the image.")

    def paste_image(self) -> None:
        image = QGuiApplication.clipboard().image()
        if image.isNull():
            self.status_message.emit("The clipboard holds no image.")
            return
        self.edit_image(image, "the pasted image")

    def _file_recipe(self, path: str, quiet: bool = False) -> Recipe | None:
        try:
            recipe = read_recipe(path)
        except EngineError as error:
            recipe, problem = None, str(error)
        else:
            problem = f"{Path(path).name} has no DMD Studio recipe (it was not saved by DMD " \
                      "Studio)."
        if recipe is None and not quiet:
            self.status_message.emit(problem)
        return recipe

    def restore_recipe_file(self, path: str) -> bool:
        recipe = self._file_recipe(path)
        if recipe is not None:
            self.settings.last_image_folder = str(Path(path).parent)
            self.restore_recipe(recipe)
        return recipe is not None

    def _open_recipe_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a saved image's recipe",
                                              self.settings.last_image_folder, "PNG (*.png)")
        if path:
            self.restore_recipe_file(path)

    def restore_recipe(self, recipe: Recipe) -> None:
        """Set the prompt, seed, steps, mode, strength and sketch (undoably) or edited image
        back to a recipe's, then draw one frame. A text recipe leaves the sketch alone. The
        recipe's LoRAs (the same files, by digest) replace those fused now."""
        wanted = [(lora.path, lora.weight) for lora in recipe.loras]
        if wanted != [(lora.path, lora.weight) for lora in self.engine.loras]:
            self.engine.set_loras(list(recipe.loras))  # the Engine tab's list follows
        inputs = (self.prompt_edit, self.seed_spin, self.steps_combo, self.mode_combo,
                  self.strength_slider, self.masked_box, self.canvas)
        for widget in inputs:
            widget.blockSignals(True)
        try:
            self.prompt_edit.setText(recipe.prompt)
            self.seed_lock.setChecked(True)
            seed = min(max(recipe.seed, 0), MAX_SEED)
            self.seed_spin.setValue(seed)
            steps_index = self.steps_combo.findData(recipe.steps)
            if steps_index >= 0:
                self.steps_combo.setCurrentIndex(steps_index)
            self.strength_slider.setValue(round(recipe.strength * 100))
            self.strength_label.setText(f"{recipe.strength:.2f}")
            self.set_mode(recipe.mode)
            self.control_sliders.set_values(recipe.control_strength, recipe.control_start,
                                            recipe.control_end)
            drawing = recipe.sketch if recipe.sketch is not None else recipe.control_image
            if recipe.mode == "sketch" and drawing is not None:
                self.canvas.replace_sketch(sketch_layer_from_white(drawing), "Restore")
            elif recipe.mode == "edit" and recipe.init_image is not None:
                self.canvas.set_base_image(array_to_qimage(recipe.init_image))
                self.canvas.replace_sketch(self.canvas.blank_sketch(), "Restore", recipe.mask)
                self.masked_box.setChecked(recipe.mask is not None)
                self.settings.masked_edit = recipe.mask is not None
        finally:
            for widget in inputs:
                widget.blockSignals(False)
        self._on_mode_changed()
        self._on_steps_changed()
        self.submit_current()
        notes = [" (the student draws it; the recipe used the teacher)"] \
            if recipe.teacher_steps else []
        if seed != recipe.seed:
            notes.append(f" (seed {seed}: the app's seeds lie in 0...{MAX_SEED})")
        self.status_message.emit(f"Restored {recipe.describe()}{''.join(notes)}")

    def save(self, what: str, path: str) -> bool:
        """Save the frame ("image", with its recipe) or the sketch layer ("sketch") as PNG,
        atomically; a saved frame joins the history."""
        try:
            if what == "image" and self._save_with_full_vae(path):
                return True
            if what == "image":
                recipe = self.frame_recipe
                self.canvas.save_frame(path, text_chunks(recipe) if recipe else None)
                if recipe is not None:
                    self.history.keep_pending()
                    self.history.add(HistoryEntry(self.canvas.frame, recipe))
            else:
                self.canvas.save_sketch(path)
        except OSError as error:
            self.status_message.emit(str(error))
            return False
        self.settings.last_save_folder = str(Path(path).parent)
        self.status_message.emit(f"Saved {path}")
        return True

    def _save_with_full_vae(self, path: str) -> bool:
        """When a fast decoder drew the frame and the user saves with the full VAE, ask the
        engine to decode the frame's request with it; _save_full_render saves it."""
        recipe = self.frame_recipe
        if not (self.settings.save_full_vae and recipe is not None and recipe.decoder):
            return False
        full_recipe = replace(recipe, decoder="")
        save_id = next(self._full_save_ids)
        if not self.engine.render_full(replace(full_recipe.request(), request_id=save_id)):
            return False
        self._full_saves[save_id] = (path, full_recipe)
        self.status_message.emit(f"Saving {path} with the full VAE…")
        return True

    def _save_full_render(self, image, request: GenerateRequest) -> None:
        path, recipe = self._full_saves.pop(request.request_id, (None, None))
        if path is None:
            return
        frame = array_to_qimage(image)
        try:
            save_image_atomic(frame, path, text_chunks(recipe))
        except OSError as error:
            self.status_message.emit(str(error))
            return
        self.history.add(HistoryEntry(frame, recipe))
        self.settings.last_save_folder = str(Path(path).parent)
        self.status_message.emit(f"Saved {path} (full VAE)")

    def default_save_name(self, what: str) -> str:
        """'red-apple-seed-7.png' for the frame (from its recipe), 'sketch.png' otherwise."""
        recipe = self.frame_recipe if what == "image" else None
        if recipe is None:
            return f"{what}.png"
        words = re.findall(r"[\w]+", recipe.prompt.lower())
        stem = "-".join(words)[:48].strip("-") or "image"
        return f"{stem}-seed-{recipe.seed}.png"

    def _save_dialog(self, what: str) -> None:
        folder = Path(self.settings.last_save_folder or Path.home())
        default = str(folder / self.default_save_name(what))
        path, _ = QFileDialog.getSaveFileName(self, f"Save {what}", default, "PNG (*.png)")
        if path:
            self.save(what, path if path.lower().endswith(".png") else path + ".png")

