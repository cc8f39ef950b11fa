"""Recipes in saved frames, the history strip, clipboard and drops (fake generator)."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication, QImage

from app.canvas import Canvas, array_to_qimage, sketch_layer_from_white
from engine.recipe import read_recipe
from tests.app.conftest import FakeGenerator
from tests.app.test_live_tab import last_delivered_request, stroke, wait_for_frame


def drop(widget, mime: QMimeData) -> None:
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    widget.dropEvent(event)


def file_mime(path) -> QMimeData:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    return mime


def test_a_sketch_on_white_becomes_a_transparent_layer_that_composites_back_exactly(qtbot):
    rng = np.random.default_rng(0)
    sketch = np.full((256, 256, 3), 255, np.uint8)
    sketch[40:200, 60:70] = (20, 40, 220)  # opaque blue
    sketch[100:110, :] = rng.integers(0, 256, (10, 256, 3))  # anti-aliased, any colour
    layer = sketch_layer_from_white(sketch)
    assert layer.pixelColor(0, 0).alpha() == 0 and layer.pixelColor(65, 50).alpha() == 235
    canvas = Canvas()
    qtbot.addWidget(canvas)
    canvas.replace_sketch(layer, "Restore")
    assert np.abs(canvas.sketch_on_white().astype(int) - sketch).max() <= 1


def test_a_saved_sketch_frame_restores_prompt_seed_steps_and_sketch(qtbot, make_window, tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.prompt_edit.setText("rocket")
    tab.seed_spin.setValue(77)
    tab.steps_combo.setCurrentIndex(tab.steps_combo.findData(2))
    stroke(qtbot, tab.canvas, [(120, 120), (260, 240)])
    wait_for_frame(qtbot, window, lambda request: request.sketch is not None
                   and request.seed == 77 and request.steps == 2)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    saved = last_delivered_request(window)
    path = tmp_path / "rocket.png"
    assert tab.save("image", str(path))
    recipe = read_recipe(path)
    assert (recipe.prompt, recipe.seed, recipe.steps, recipe.mode) == ("rocket", 77, 2, "sketch")
    assert recipe.backend == "fake" and np.array_equal(recipe.sketch, saved.sketch)
    assert tab.history.count() == 1  # a saved frame joins the history at once

    tab.canvas.clear_sketch()
    tab.set_mode("text")
    tab.prompt_edit.setText("cat")
    tab.seed_spin.setValue(3)
    wait_for_frame(qtbot, window, lambda request: request.prompt == "cat" and request.seed == 3)
    assert tab.restore_recipe_file(str(path))
    wait_for_frame(qtbot, window, lambda request: request.prompt == "rocket")
    again = last_delivered_request(window)
    assert (again.seed, again.steps, tab.mode) == (77, 2, "sketch")
    assert np.abs(again.sketch.astype(int) - saved.sketch).max() <= 1
    tab.undo_action.trigger()  # the restore replaced the sketch undoably
    assert tab.canvas.sketch_on_white().min() == 255


def test_an_edit_recipe_brings_back_the_edited_image_and_strength(qtbot, make_window, tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    photo = QImage(64, 64, QImage.Format.Format_RGB32)
    photo.fill(Qt.GlobalColor.darkGreen)
    assert tab.edit_image(photo, "a photo")
    tab.strength_slider.setValue(35)
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None
                   and abs(request.strength - 0.35) < 1e-9)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    saved = last_delivered_request(window)
    path = tmp_path / "edit.png"
    assert tab.save("image", str(path))
    tab.canvas.set_base_image(None)
    tab.set_mode("text")
    drop(tab.history, file_mime(path))  # dropping a saved PNG on the strip restores it
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None)
    again = last_delivered_request(window)
    assert tab.mode == "edit" and abs(again.strength - 0.35) < 1e-9
    assert np.array_equal(again.init_image, saved.init_image)


def test_the_history_keeps_frames_that_settled_and_a_click_draws_one_again(qtbot, make_window):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.history.settle_timer.setInterval(300)
    qtbot.keyClicks(tab.prompt_edit, "red apple")  # a frame per key, none left on screen
    qtbot.waitUntil(lambda: tab.history.count() == 1, timeout=10_000)
    tab.prompt_edit.setText("blue car")
    qtbot.waitUntil(lambda: tab.history.count() == 2, timeout=10_000)
    newest, older = tab.history.entries()
    assert (newest.recipe.prompt, older.recipe.prompt) == ("blue car", "red apple")
    assert "red apple" in tab.history.item(1).toolTip()
    tab.history.itemClicked.emit(tab.history.item(1))
    wait_for_frame(qtbot, window, lambda request: request.prompt == "red apple")
    assert tab.prompt_edit.text() == "red apple"
    qtbot.wait(500)
    assert tab.history.count() == 2  # the same frame again is not a new entry


def test_copy_paste_and_dropping_images_on_the_canvas_open_them_to_edit(qtbot, make_window,
                                                                         tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.prompt_edit.setText("tree")
    qtbot.waitUntil(lambda: tab.canvas.frame is not None, timeout=10_000)
    tab.copy_action.trigger()
    copied = QGuiApplication.clipboard().image()
    assert copied.size() == tab.canvas.frame.size()
    tab.paste_action.trigger()
    assert tab.mode == "edit" and tab.canvas.base_image is not None
    blue = QImage(40, 20, QImage.Format.Format_RGB32)
    blue.fill(Qt.GlobalColor.blue)
    path = tmp_path / "blue.png"
    assert blue.save(str(path))
    drop(tab.canvas, file_mime(path))
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None
                   and request.init_image[128, 128].tolist() == [0, 0, 255])
    mime = QMimeData()
    red = QImage(30, 30, QImage.Format.Format_RGB32)
    red.fill(Qt.GlobalColor.red)
    mime.setImageData(red)
    drop(tab.canvas, mime)
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None
                   and request.init_image[128, 128].tolist() == [255, 0, 0])


def test_a_file_without_a_recipe_is_a_message_not_a_change(qtbot, make_window, tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    messages = []
    tab.status_message.connect(messages.append)
    tab.prompt_edit.setText("kept")
    plain = tmp_path / "plain.png"
    QImage(8, 8, QImage.Format.Format_RGB32).save(str(plain))
    (tmp_path / "junk.png").write_text("not an image")
    assert not tab.restore_recipe_file(str(plain))
    assert not tab.restore_recipe_file(str(tmp_path / "junk.png"))
    assert "has no DMD Studio recipe" in messages[-2] and "not a readable image" in messages[-1]
    assert tab.prompt_edit.text() == "kept"


def test_the_history_outlives_the_window_and_clearing_removes_its_files(qtbot, make_window,
                                                                        isolated_settings):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.history.settle_timer.setInterval(100)
    for prompt in ("sun", "moon"):
        tab.prompt_edit.setText(prompt)
        qtbot.waitUntil(lambda prompt=prompt: tab.history.count() and
                        tab.history.entries()[0].recipe.prompt == prompt, timeout=10_000)
    folder = isolated_settings.parent / "history"
    assert len(list(folder.glob("*.png"))) == 2
    window.close()
    reopened = make_window(FakeGenerator()).live_tab
    assert [entry.recipe.prompt for entry in reopened.history.entries()] == ["moon", "sun"]
    reopened.history.itemClicked.emit(reopened.history.item(1))
    assert reopened.prompt_edit.text() == "sun"
    reopened.history.clear_history()
    assert reopened.history.count() == 0 and not list(folder.glob("*.png"))


def test_the_history_keeps_at_most_its_limit_and_deletes_what_falls_off(qtbot, tmp_path):
    from app.history import HISTORY_LIMIT, HistoryEntry, HistoryStrip
    from engine.recipe import Recipe

    strip = HistoryStrip(tmp_path / "history")
    qtbot.addWidget(strip)
    for number in range(HISTORY_LIMIT + 3):
        frame = QImage(8, 8, QImage.Format.Format_RGB32)
        frame.fill(number)
        strip.add(HistoryEntry(frame, Recipe(prompt=f"p{number}", seed=number)))
    assert strip.count() == HISTORY_LIMIT
    assert strip.entries()[0].recipe.prompt == f"p{HISTORY_LIMIT + 2}"
    assert strip.entries()[-1].recipe.prompt == "p3"
    assert len(list((tmp_path / "history").glob("*.png"))) == HISTORY_LIMIT
    (tmp_path / "history" / "broken.png").write_text("not an image")  # skipped on load
    again = HistoryStrip(tmp_path / "history")
    qtbot.addWidget(again)
    assert [entry.recipe.prompt for entry in again.entries()] == \
        [entry.recipe.prompt for entry in strip.entries()]


def test_variations_fill_the_history_with_new_seeds_and_leave_the_canvas(qtbot, make_window):
    from app.variations import VARIATIONS

    generator = FakeGenerator()
    window = make_window(generator)
    tab = window.live_tab
    tab.prompt_edit.setText("owl")
    wait_for_frame(qtbot, window, lambda request: request.prompt == "owl")
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    shown = last_delivered_request(window)
    tab.variations_button.click()
    qtbot.waitUntil(lambda: tab.history.count() >= VARIATIONS, timeout=10_000)
    seeds = [entry.recipe.seed for entry in tab.history.entries()[:VARIATIONS]]
    assert len(set(seeds)) == VARIATIONS
    assert all(entry.recipe.prompt == "owl" for entry in tab.history.entries()[:VARIATIONS])
    assert last_delivered_request(window) is shown  # the canvas kept its frame
    assert {request.seed for request in generator.requests} >= set(seeds)
    tab.history.itemClicked.emit(tab.history.item(0))
    wait_for_frame(qtbot, window, lambda request: request.seed == seeds[0])
    assert tab.seed_spin.value() == seeds[0]


def test_an_unwritable_history_folder_is_a_message_and_the_strip_still_works(qtbot, tmp_path):
    from app.history import HistoryEntry, HistoryStrip
    from engine.recipe import Recipe

    (tmp_path / "history").write_text("a file where the folder should be")
    strip = HistoryStrip(tmp_path / "history")
    qtbot.addWidget(strip)
    problems = []
    strip.problem.connect(problems.append)
    frame = QImage(8, 8, QImage.Format.Format_RGB32)
    frame.fill(7)
    strip.add(HistoryEntry(frame, Recipe(prompt="kept in memory")))
    assert strip.count() == 1 and strip.entries()[0].path is None
    assert len(problems) == 1 and "Could not keep the frame" in problems[0]


def test_the_models_prompt_suggestions_drop_down_and_surprise_me_picks_one(qtbot, make_window):
    generator = FakeGenerator()
    generator.prompt_suggestions = ["red apple", "green apple", "cat face"]
    window = make_window(generator)
    tab = window.live_tab
    qtbot.waitUntil(lambda: tab.surprise_button.isEnabled(), timeout=10_000)
    completer = tab.prompt_edit.completer()
    completer.setCompletionPrefix("APP")  # case-insensitive, anywhere in the prompt
    assert completer.completionCount() == 2
    tab.surprise_button.click()
    assert tab.prompt_edit.text() in generator.prompt_suggestions
    wait_for_frame(qtbot, window, lambda request: request.prompt == tab.prompt_edit.text())


def test_a_model_without_suggestions_disables_surprise_me(qtbot, make_window):
    window = make_window(FakeGenerator())
    wait_for_frame(qtbot, window, lambda request: True)
    assert not window.live_tab.surprise_button.isEnabled()
    assert window.live_tab.suggestions.rowCount() == 0


def test_the_canvas_scales_frames_smoothly_or_as_square_pixels_and_remembers(qtbot,
                                                                             make_window):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.show_sketch_box.setChecked(False)
    checker = np.zeros((4, 4, 3), np.uint8)
    checker[::2, ::2] = checker[1::2, 1::2] = 255
    wait_for_frame(qtbot, window, lambda request: True)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)  # no frame comes after
    tab.canvas.set_frame(array_to_qimage(checker))

    def grey_levels() -> int:
        shot = tab.canvas.grab().toImage()
        rect = tab.canvas.target_rect().toRect().adjusted(4, 4, -4, -4)
        values = {shot.pixelColor(x, rect.center().y()).red()
                  for x in range(rect.left(), rect.right(), 3)}
        return len(values)

    assert tab.smooth_box.isChecked() and grey_levels() > 2  # blends between the squares
    tab.smooth_box.setChecked(False)
    assert grey_levels() == 2 and window.settings.smooth_display is False


def test_an_entry_drags_out_as_its_image_and_png_and_drops_on_the_canvas_to_edit(qtbot,
                                                                                 make_window):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.prompt_edit.setText("kite")
    wait_for_frame(qtbot, window, lambda request: request.prompt == "kite")
    tab.history.keep_pending()
    assert tab.history.count() == 1
    mime = tab.history.mimeData([tab.history.item(0)])
    entry = tab.history.entries()[0]
    assert QImage(mime.imageData()) == entry.frame
    assert [url.toLocalFile() for url in mime.urls()] == [str(entry.path)]
    assert read_recipe(entry.path).prompt == "kite"
    drop(tab.canvas, mime)
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None)
    assert tab.mode == "edit"


def test_a_saved_preview_records_the_step_count_it_was_drawn_with(qtbot, make_window):
    from engine.api import GenerateRequest, GenerateResult

    window = make_window(FakeGenerator())
    tab = window.live_tab
    asked = GenerateRequest(prompt="owl", steps=2, preview_steps=1, strength=0.5,
                            sketch=np.full((8, 8, 3), 255, np.uint8))
    preview = GenerateResult(1, np.zeros((8, 8, 3), np.uint8), preview=True, request=asked)
    full = GenerateResult(1, np.zeros((8, 8, 3), np.uint8), request=asked)
    assert tab.recipe_of(preview).steps == 1 and tab.recipe_of(full).steps == 2


def test_variations_wait_for_the_final_frame_and_need_a_model(qtbot, make_window):
    window = make_window(FakeGenerator(delay_s=0.3))
    tab = window.live_tab
    tab.prompt_edit.setText("slow")
    qtbot.waitUntil(lambda: window.engine.busy, timeout=10_000)
    assert not tab.variations_button.isEnabled()
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    assert tab.variations_button.isEnabled()
    empty = make_window().live_tab
    messages = []
    empty.status_message.connect(messages.append)
    empty.make_variations()
    assert messages == ["No model is loaded. Pick one in the Engine tab."]


def test_clearing_removes_every_history_file_and_restarts_do_not_duplicate(qtbot, tmp_path):
    from app.history import HistoryEntry, HistoryStrip
    from engine.recipe import Recipe

    folder = tmp_path / "history"
    strip = HistoryStrip(folder)
    qtbot.addWidget(strip)
    frame = QImage(8, 8, QImage.Format.Format_ARGB32)
    frame.fill(Qt.GlobalColor.magenta)
    entry = HistoryEntry(frame, Recipe(prompt="same"))
    strip.add(entry)
    again = HistoryStrip(folder)
    qtbot.addWidget(again)
    again.add(entry)  # loaded from disk in another pixel format, still the same frame
    assert again.count() == 1 and len(list(folder.glob("*.png"))) == 1
    (folder / "unreadable.png").write_text("not an image")
    again.clear_history()
    assert again.count() == 0 and not list(folder.glob("*.png"))


def test_the_save_dialog_suggests_a_name_from_the_prompt_and_seed(qtbot, make_window):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    assert tab.default_save_name("image") in ("image.png", "image-seed-0.png")
    tab.prompt_edit.setText("Smiling cat: face/ünï 🐱")
    tab.seed_spin.setValue(42)
    wait_for_frame(qtbot, window, lambda request: request.seed == 42 and "cat" in request.prompt)
    assert tab.default_save_name("image") == "smiling-cat-face-ünï-seed-42.png"
    assert tab.default_save_name("sketch") == "sketch.png"


def test_ctrl_s_and_ctrl_o_open_the_save_and_open_dialogs(qtbot, make_window, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    window = make_window(FakeGenerator())
    tab = window.live_tab
    asked = []
    monkeypatch.setattr(QFileDialog, "getSaveFileName",
                        lambda *args: asked.append(("save", args[3])) or ("", ""))
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *args: asked.append(("open", args[3])) or ("", ""))
    tab.canvas.setFocus()
    qtbot.keyClick(tab.canvas, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(tab.canvas, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    assert [kind for kind, _ in asked] == ["save", "open"]
    assert asked[0][1] == "PNG (*.png)"


def test_painted_area_grows_the_strokes_and_keeps_a_restored_mask():
    from app.edit_mask import painted_area

    alpha = np.zeros((256, 256), np.uint8)
    alpha[10, 10] = 40  # one faint pixel of ink
    mask = painted_area(alpha)
    assert mask[10, 10] == 255 and mask[10, 16] == 255 and mask[16, 10] == 255
    assert mask[10, 60] == 0 and mask[200, 200] == 0
    restored = np.zeros((128, 128), np.uint8)
    restored[64:, 64:] = 255
    both = painted_area(alpha, restored)
    assert both[10, 10] == 255 and both[250, 250] == 255 and both[60, 200] == 0


def test_a_painted_area_edit_sends_a_mask_and_its_recipe_restores_it(qtbot, make_window,
                                                                     tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    photo = QImage(64, 64, QImage.Format.Format_RGB32)
    photo.fill(Qt.GlobalColor.darkBlue)
    assert tab.edit_image(photo, "a photo")
    assert tab.masked_box.isEnabled()
    tab.masked_box.setChecked(True)
    stroke(qtbot, tab.canvas, [(150, 150), (200, 180)])
    wait_for_frame(qtbot, window, lambda request: request.mask is not None
                   and request.mask.max() == 255)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    saved = last_delivered_request(window)
    painted = tab.canvas.sketch_on_white().min(axis=2) < 255
    assert (saved.mask > 0).sum() > painted.sum() > 0  # the strokes and a margin
    assert tab.canvas.show_mask  # the kept part is dimmed, the redrawn part clear
    tint = tab.canvas.kept_tint()
    row, column = np.argwhere(saved.mask == 255)[0]
    assert tint.pixelColor(int(column), int(row)).alpha() == 0
    row, column = np.argwhere(saved.mask == 0)[0]
    assert tint.pixelColor(int(column), int(row)).alpha() == 102
    assert (saved.mask == 0).sum() > 0 and saved.init_image is not None
    path = tmp_path / "masked.png"
    assert tab.save("image", str(path))
    np.testing.assert_array_equal(read_recipe(path).mask, saved.mask)

    tab.masked_box.setChecked(False)
    assert not tab.canvas.show_mask
    tab.canvas.set_base_image(None)
    tab.set_mode("text")
    assert not tab.masked_box.isEnabled()
    assert tab.restore_recipe_file(str(path))
    wait_for_frame(qtbot, window, lambda request: request.mask is not None)
    again = last_delivered_request(window)
    assert tab.masked_box.isChecked() and tab.mode == "edit"
    assert np.array_equal(again.mask, saved.mask)
    assert np.array_equal(again.init_image, saved.init_image)
    tab.canvas.clear_sketch()  # the restored area is part of the painted area...
    assert tab.canvas.restored_mask is None and tab.canvas.edit_mask().max() == 0
    tab.undo_action.trigger()  # ...and comes back with it
    assert np.array_equal(tab.canvas.edit_mask(), saved.mask)
