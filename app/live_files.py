"""The Live tab's files, clipboard and recipes: open, paste or drop an image to edit, save
a frame with its recipe (with the full VAE when asked), set every input back to a saved
frame's recipe. A mixin of LiveTab (app/live_tab.py)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from PySide6.QtGui import QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog

from app.canvas import array_to_qimage, save_image_atomic, sketch_layer_from_white
from app.history import HistoryEntry
from app.variations import MAX_SEED
from engine.api import EngineError, GenerateRequest, GenerateResult
from engine.recipe import Recipe, read_recipe, text_chunks

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.bmp *.webp)"


class FilesAndRecipesMixin:
    """Opens, pastes, saves and restores; reports every problem on status_message."""

    def _connect_files_and_recipes(self) -> None:
        self.recipe_button.clicked.connect(self._open_recipe_dialog)
        self.history.entry_chosen.connect(lambda entry: self.restore_recipe(entry.recipe))
        self.history.file_dropped.connect(self.restore_recipe_file)
        self.history.problem.connect(self.status_message)
        self.canvas.file_dropped.connect(self.open_image)
        self.canvas.image_dropped.connect(lambda image: self.edit_image(image, "the dropped image"))

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
                  self.strength_slider, self.masked_box, self.match_box, self.canvas)
        for widget in inputs:
            widget.blockSignals(True)
        try:
            self.prompt_edit.setText(recipe.prompt)
            self.match_box.setChecked(recipe.match_prompt)
            self.settings.match_prompt = recipe.match_prompt
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
