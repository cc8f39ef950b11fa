"""The Live tab's results: a frame onto the canvas, the meter and the history strip, a
round of Variations into the strip, Compare's frames to its panel, and a newly loaded
model's suggestions, steps and control sliders. A mixin of LiveTab (app/live_tab.py)."""

from __future__ import annotations

from app.canvas import array_to_qimage
from app.history import HistoryEntry
from app.meter import format_meter
from engine.api import GenerateRequest, GenerateResult


class FrameResultsMixin:
    """Shows what the engine sends back; submits the next frame of a round of Variations."""

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
        self.match_box.setVisible(self.engine.has_vocabulary)
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
