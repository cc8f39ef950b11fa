"""Live tab: keystrokes, strokes, undo, errors, compare, files (fake generator)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage

from engine.service import DIRECT_FRAME_MS
from tests.app.conftest import FakeGenerator


def last_delivered_request(window):
    return window.live_tab.last_frame_request


def wait_for_frame(qtbot, window, predicate, timeout=10_000):
    """Wait until the newest delivered frame's request satisfies predicate."""
    def check():
        request = last_delivered_request(window)
        assert request is not None and predicate(request)

    qtbot.waitUntil(check, timeout=timeout)


def stroke(qtbot, canvas, points):
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(*points[0]))
    for point in points[1:]:
        qtbot.mouseMove(canvas, QPoint(*point))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(*points[-1]))


def test_typing_key_by_key_ends_with_the_full_prompt_one_request_in_flight(qtbot, make_window):
    generator = FakeGenerator(delay_s=0.02)
    window = make_window(generator)
    prompt_edit = window.live_tab.prompt_edit
    qtbot.keyClicks(prompt_edit, "red apple")
    wait_for_frame(qtbot, window, lambda request: request.prompt == "red apple")
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)
    assert generator.max_active == 1
    assert generator.requests[-1].prompt == "red apple"
    shade = (sum(map(ord, "red apple")) * 7) % 256  # FakeGenerator's colour for the prompt
    assert window.live_tab.canvas.frame.pixelColor(3, 5).getRgb()[:3] == (shade,) * 3
    assert "FPS" in window.live_tab.meter.text() and "fake/cpu" in window.live_tab.meter.text()


def test_a_stroke_changes_the_sketch_and_triggers_a_frame(qtbot, make_window):
    generator = FakeGenerator()
    window = make_window(generator)
    canvas = window.live_tab.canvas
    wait_for_frame(qtbot, window, lambda request: True)
    blank = canvas.sketch_on_white()
    assert blank.min() == 255
    stroke(qtbot, canvas, [(150, 150), (250, 200), (350, 300)])
    assert canvas.sketch_on_white().min() < 128  # black ink landed on the layer
    assert window.live_tab.mode == "sketch"  # drawing in text mode switches to sketch
    wait_for_frame(qtbot, window, lambda request: request.sketch is not None)
    delivered = last_delivered_request(window).sketch
    assert delivered.shape[2] == 3 and delivered.dtype == np.uint8
    assert np.array_equal(delivered, canvas.sketch_on_white())


def test_undo_restores_the_previous_sketch_and_redo_reapplies(qtbot, make_window):
    window = make_window(FakeGenerator())
    canvas = window.live_tab.canvas
    stroke(qtbot, canvas, [(100, 100), (200, 120)])
    after_first = canvas.sketch_on_white()
    stroke(qtbot, canvas, [(100, 300), (300, 320)])
    after_second = canvas.sketch_on_white()
    assert not np.array_equal(after_first, after_second)
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(canvas.sketch_on_white(), after_first)
    qtbot.keyClick(canvas, Qt.Key.Key_Z,
                   Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert np.array_equal(canvas.sketch_on_white(), after_second)
    canvas.clear_sketch()
    assert canvas.sketch_on_white().min() == 255
    window.live_tab.undo_action.trigger()
    assert np.array_equal(canvas.sketch_on_white(), after_second)


def test_eraser_removes_ink(qtbot, make_window):
    window = make_window(FakeGenerator())
    canvas = window.live_tab.canvas
    window.live_tab.size_spin.setValue(20)
    stroke(qtbot, canvas, [(100, 200), (400, 200)])
    inked = (canvas.sketch_on_white() < 128).sum()
    window.live_tab.eraser_button.click()
    stroke(qtbot, canvas, [(100, 200), (400, 200)])
    assert (canvas.sketch_on_white() < 128).sum() < inked // 4


def test_an_engine_error_shows_a_message_and_the_app_stays_responsive(qtbot, make_window):
    window = make_window(FakeGenerator(fail_on="boom"))
    window.live_tab.prompt_edit.setText("boom")
    qtbot.waitUntil(lambda: "refused" in window.statusBar().currentMessage(), timeout=10_000)
    assert "refused" in window.live_tab.meter.text()
    window.live_tab.prompt_edit.setText("cat face")
    wait_for_frame(qtbot, window, lambda request: request.prompt == "cat face")
    assert "FPS" in window.live_tab.meter.text()


def test_seed_lock_randomise_steps_and_image_edit(qtbot, make_window, tmp_path):
    generator = FakeGenerator()
    window = make_window(generator)
    tab = window.live_tab
    assert tab.seed_lock.isChecked()
    tab.seed_spin.setValue(1234)
    wait_for_frame(qtbot, window, lambda request: request.seed == 1234)
    tab.randomise_button.click()
    assert tab.seed_spin.value() != 1234
    wait_for_frame(qtbot, window, lambda request: request.seed == tab.seed_spin.value())
    tab.steps_combo.setCurrentIndex(2)
    wait_for_frame(qtbot, window, lambda request: request.steps == 4)
    image_path = tmp_path / "photo.png"
    photo = QImage(300, 200, QImage.Format.Format_RGB32)
    photo.fill(Qt.GlobalColor.red)
    assert photo.save(str(image_path))
    assert tab.open_image(str(image_path))
    assert tab.mode == "edit"
    tab.strength_slider.setValue(30)
    wait_for_frame(qtbot, window, lambda request: request.init_image is not None
                   and abs(request.strength - 0.3) < 1e-9)
    init_image = last_delivered_request(window).init_image
    assert init_image.shape == (256, 256, 3) and init_image[128, 128].tolist() == [255, 0, 0]


def test_save_image_and_sketch_write_pngs(qtbot, make_window, tmp_path):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    tab.prompt_edit.setText("rocket")
    qtbot.waitUntil(lambda: tab.canvas.frame is not None, timeout=10_000)
    stroke(qtbot, tab.canvas, [(120, 120), (220, 220)])
    assert tab.save("image", str(tmp_path / "frame.png"))
    assert tab.save("sketch", str(tmp_path / "sketch.png"))
    assert QImage(str(tmp_path / "frame.png")).width() == 16
    sketch = QImage(str(tmp_path / "sketch.png"))
    assert sketch.width() == 256 and sketch.hasAlphaChannel()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".png") == \
        ["frame.png", "sketch.png"]  # no temporary files left behind
    assert not tab.save("image", str(tmp_path / "missing-folder" / "frame.png"))


def test_compare_renders_the_teacher_beside_the_student(qtbot, make_window):
    generator = FakeGenerator()
    window = make_window(generator)
    tab = window.live_tab
    tab.prompt_edit.setText("red apple")
    qtbot.waitUntil(lambda: tab.canvas.frame is not None, timeout=10_000)
    tab.compare.teacher_steps.setValue(8)
    tab.compare.compare_button.click()
    qtbot.waitUntil(lambda: "faster" in tab.compare.summary.text(), timeout=10_000)
    teacher_requests = [r for r in generator.requests if r.teacher_steps]
    assert teacher_requests[-1].teacher_steps == 8
    assert teacher_requests[-1].prompt == "red apple"
    assert teacher_requests[-1].seed == generator.requests[-2].seed
    assert "10.0× faster" in tab.compare.summary.text()
    shade = (sum(map(ord, "red apple")) * 7) % 256  # FakeGenerator's colour for the prompt
    assert tab.compare.teacher_view.image.pixelColor(3, 5).getRgb()[:3] == (shade,) * 3
    assert last_delivered_request(window).teacher_steps == 0  # the canvas keeps the student
    kept = tab.history.entries()[0].recipe  # the teacher frame joins the history
    assert (kept.teacher_steps, kept.prompt) == (8, "red apple")
    assert "teacher 8 steps" in tab.history.item(0).toolTip()


def test_without_a_model_the_live_tab_says_so(qtbot, make_window):
    def no_model(model, backend, device):
        raise AssertionError("not called")

    window = make_window(loader=no_model)
    assert window.live_tab.model_missing.isVisible()
    window.live_tab.prompt_edit.setText("hello")  # no service: nothing to submit, no crash
    assert window.live_tab.last_frame_request is None


def test_a_result_queued_before_close_is_not_shown(qtbot):
    from app.bridge import LiveEngine
    from engine.api import GenerateRequest, GenerateResult

    engine = LiveEngine()
    engine.set_generator(FakeGenerator(), "fake")
    request_id = engine.submit(GenerateRequest("x"))
    shown = []
    engine.result_ready.connect(lambda result, request: shown.append(result))
    engine.close()
    engine._delivered_on_worker.emit(GenerateResult(request_id, np.zeros((4, 4, 3), np.uint8)))
    qtbot.wait(50)
    assert shown == [] and not engine.busy


def test_a_teacher_model_is_named_as_such_in_the_status_bar(make_window, qtbot):
    teacher = FakeGenerator()
    teacher.is_student = False
    window = make_window(generator=teacher)
    qtbot.waitUntil(lambda: "is a teacher" in window.statusBar().currentMessage(), timeout=10_000)
    student = FakeGenerator()
    student.is_student = True
    window.live_tab.engine.set_generator(student, "student")
    qtbot.waitUntil(lambda: window.statusBar().currentMessage() == "Model ready: student",
                    timeout=10_000)


def test_the_steps_box_starts_at_the_steps_the_loaded_student_was_distilled_for(make_window,
                                                                                 qtbot):
    four_step = FakeGenerator()
    four_step.default_steps = 4
    window = make_window(generator=four_step)
    tab = window.live_tab
    wait_for_frame(qtbot, window, lambda request: request.steps == 4)
    assert tab.steps_combo.currentData() == 4
    window.live_tab.engine.set_generator(FakeGenerator(), "one-step")  # no default_steps: 1
    wait_for_frame(qtbot, window, lambda request: request.steps == 1)
    assert tab.steps_combo.currentData() == 1


def test_a_four_step_model_previews_at_one_step_then_refines(make_window, qtbot):
    four_step = FakeGenerator(delay_s=0.01)
    four_step.default_steps = 4
    window = make_window(generator=four_step)
    tab = window.live_tab
    assert tab.preview_combo.currentData() == "auto" and tab.preview_combo.isEnabled()
    shown = []
    window.engine.result_ready.connect(lambda result, request: shown.append(
        (request.prompt, result.preview, tab.meter.text().startswith("preview"))))

    def steps_run(prompt):
        return [r.steps for r in four_step.requests if r.prompt == prompt]

    # the window's first frame (empty prompt): nothing measured yet, so Auto previews first
    qtbot.waitUntil(lambda: ("", False, False) in shown, timeout=10_000)
    assert shown[0] == ("", True, True) and steps_run("") == [1, 4]
    assert four_step.requests[-1].preview_above_ms == DIRECT_FRAME_MS
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)

    tab.prompt_edit.setText("foxy")  # the fake's 4-step frame costs 7.5 ms: shown at once
    qtbot.waitUntil(lambda: ("foxy", False, False) in shown, timeout=10_000)
    assert steps_run("foxy") == [4] and ("foxy", True, True) not in shown
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)

    tab.preview_combo.setCurrentIndex(tab.preview_combo.findData("always"))  # resubmits
    qtbot.waitUntil(lambda: steps_run("foxy") == [4, 1, 4], timeout=10_000)
    assert four_step.requests[-1].preview_above_ms == 0.0
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=10_000)

    tab.preview_combo.setCurrentIndex(tab.preview_combo.findData("off"))
    qtbot.waitUntil(lambda: steps_run("foxy") == [4, 1, 4, 4], timeout=10_000)
    assert four_step.requests[-1].preview_steps == 0
    tab.steps_combo.setCurrentIndex(tab.steps_combo.findData(1))
    assert not tab.preview_combo.isEnabled()


def test_the_meter_shows_the_cost_rate_and_the_rate_frames_are_shown_at():
    from app.meter import FrameRate, format_meter
    from engine.api import GenerateResult, StageTimings

    now = [100.0]
    rate = FrameRate(window_s=1.0, clock=lambda: now[0])
    assert rate.frame_shown() is None  # one frame is no rate
    for _ in range(4):
        now[0] += 0.05
        shown = rate.frame_shown()
    assert shown == pytest.approx(20.0)  # a frame every 50 ms
    now[0] += 5.0  # a pause: the old frames leave the window
    assert rate.frame_shown() is None
    result = GenerateResult(1, np.zeros((8, 8, 3), np.uint8),
                            StageTimings(2.0, 0.0, 10.0, 3.0, 16.0), backend="onnx", device="cpu")
    assert "total 16.0 ms (62 FPS max)  |  shown 20.0 FPS  |  onnx/cpu" in format_meter(result,
                                                                                      20.0)
    assert "shown" not in format_meter(result)


class VocabularyGenerator(FakeGenerator):
    """A fake model with a vocabulary: "a crunchy taco" is drawn as "taco"."""

    vocabulary = object()

    def drawn_as(self, request):
        from engine.pipeline.vocabulary import Match

        if request.match_prompt and request.prompt == "a crunchy taco":
            return Match("taco", "taco", 0.8)
        return None


def test_matching_is_offered_for_a_model_with_a_vocabulary_and_the_meter_names_the_match(
        make_window, qtbot):
    window = make_window(VocabularyGenerator())
    tab = window.live_tab
    qtbot.waitUntil(lambda: not tab.match_box.isHidden(), timeout=10_000)
    assert tab.match_box.isChecked()
    tab.prompt_edit.setText("a crunchy taco")
    wait_for_frame(qtbot, window, lambda request: request.prompt == "a crunchy taco")
    qtbot.waitUntil(lambda: "drawn as “taco”" in tab.meter.text(), timeout=10_000)
    tab.match_box.setChecked(False)  # a frame drawn as typed follows
    wait_for_frame(qtbot, window, lambda request: not request.match_prompt)
    qtbot.waitUntil(lambda: "drawn as" not in tab.meter.text(), timeout=10_000)
    assert window.settings.match_prompt is False
    assert tab.frame_recipe.match_prompt is False
    window.live_tab.engine.set_generator(FakeGenerator(), "no vocabulary")
    qtbot.waitUntil(lambda: tab.match_box.isHidden(), timeout=10_000)
