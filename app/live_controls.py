"""The Live tab's prompt row (with its suggestions and Surprise me) and its generation
controls: mode, strength, painted-area-only, control sliders, steps, preview, seed and
Variations. A mixin of LiveTab (app/live_tab.py), which owns the widgets it builds."""

from __future__ import annotations

import random

from PySide6.QtCore import QStringListModel, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QCompleter,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QSpinBox,
)

from app.control_panel import ControlSliders
from app.variations import MAX_SEED, VARIATIONS
from engine.service import DIRECT_FRAME_MS

MODES = (("Text", "text"), ("Sketch", "sketch"), ("Image edit", "edit"))
PREVIEW_MODES = (("Preview: auto", "auto"), ("Preview: always", "always"),
                 ("Preview: off", "off"))


class GenerationControlsMixin:
    """Builds, lays out and connects the prompt row and the generation controls."""

    def _build_prompt_row(self) -> None:
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
        self.match_box = QCheckBox("Match known prompts")
        self.match_box.setToolTip(
            "Draw a prompt written in other words as the nearest prompt this model was trained "
            "on (\"a crunchy beef taco\" as \"taco\"), by the meaning its text encoder gives "
            "them; the meter says what a frame was drawn as. Off: draw the prompt exactly as "
            "typed. Shown for models that ship a vocabulary, such as the embedded one.")
        self.match_box.setChecked(self.settings.match_prompt)
        self.match_box.setVisible(False)

    def _build_generation_controls(self) -> None:
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

    def _prompt_row(self) -> QHBoxLayout:
        prompt_row = QHBoxLayout()
        prompt_row.addWidget(self.prompt_edit, 1)
        prompt_row.addWidget(self.match_box)
        prompt_row.addWidget(self.surprise_button)
        return prompt_row

    def _generation_rows(self) -> tuple[QHBoxLayout, QHBoxLayout]:
        """The options row (mode to Variations) and the control sliders' row."""
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
        return options, control_row

    def _connect_generation_controls(self) -> None:
        self.prompt_edit.textChanged.connect(self.submit_current)
        self.mode_combo.currentIndexChanged.connect(self._on_mode_changed)
        self.mode_combo.currentIndexChanged.connect(self.submit_current)
        self.strength_slider.valueChanged.connect(self._on_strength_changed)
        self.masked_box.toggled.connect(self._on_masked_toggled)
        self.match_box.toggled.connect(self._on_match_toggled)
        self.control_sliders.changed.connect(self._on_control_changed)
        self.steps_combo.currentIndexChanged.connect(self.submit_current)
        self.steps_combo.currentIndexChanged.connect(self._on_steps_changed)
        self.preview_combo.currentIndexChanged.connect(self.submit_current)
        self.seed_spin.valueChanged.connect(self.submit_current)
        self.randomise_button.clicked.connect(self.randomise_seed)
        self.surprise_button.clicked.connect(self.surprise_prompt)
        self.variations_button.clicked.connect(self.make_variations)

    @property
    def mode(self) -> str:
        return self.mode_combo.currentData()

    def set_mode(self, mode: str) -> None:
        self.mode_combo.setCurrentIndex([value for _, value in MODES].index(mode))

    def surprise_prompt(self) -> None:
        prompts = self.suggestions.stringList()
        if prompts:
            self.prompt_edit.setText(random.choice(prompts))  # textChanged submits

    def randomise_seed(self) -> None:
        self.seed_spin.setValue(random.randint(0, MAX_SEED))  # valueChanged submits

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

    def _on_match_toggled(self, match: bool) -> None:
        self.settings.match_prompt = match
        self.submit_current()

    def _on_masked_toggled(self, masked: bool) -> None:
        self.settings.masked_edit = masked
        self._on_mode_changed()  # shows or hides the kept part's tint
        if self.mode == "edit":
            self.submit_current()
