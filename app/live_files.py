"""The live tab's files, clipboard and recipes: open, paste or drop an image to edit; save
a frame with its recipe; copy it; set every input back to a saved frame's recipe.

A mixin of LiveTab (app/live_tab.py), kept apart so each file reads in one sitting; it uses
the tab's widgets, canvas, engine, history and settings.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog

from app.canvas import array_to_qimage, sketch_layer_from_white
from app.history import HistoryEntry
from engine.api import EngineError, GenerateResult
from engine.recipe import Recipe, read_recipe, text_chunks

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.webp)"
MAX_SEED = 2**31 - 1


class LiveFilesMixin:
    """Files, clipboard and recipes for LiveTab (see the module docstring)."""

    def recipe_of(self, result: GenerateResult) -> Recipe:
        """What made this frame (a preview's recipe asks for the preview's step count)."""
        request = result.request
        if result.preview:  # the service drew it at the request's preview step count
            request = replace(request, steps=request.preview_steps, preview_steps=0)
        return Recipe.from_request(request, self.engine.description, result.backend)

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
        back to a recipe's, then draw one frame. A text recipe leaves the sketch alone."""
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
            if recipe.mode == "sketch" and recipe.sketch is not None:
                self.canvas.replace_sketch(sketch_layer_from_white(recipe.sketch), "Restore")
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

