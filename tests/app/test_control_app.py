"""A control model in the app: the Engine tab loads it with the model, Sketch mode feeds it
the strokes, the sliders set its strength, start and end, and recipes keep it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from engine.api import GenerateRequest
from tests.app.conftest import FakeGenerator
from tests.app.test_live_tab import stroke


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    from engine.pipeline.tiny_control import build_tiny_controlnet

    return build_tiny_controlnet(tmp_path_factory.mktemp("control") / "tiny-scribble")


@pytest.fixture
def control_generator(tiny_student_dir, controlnet_dir):
    from engine.service import load_generator

    return load_generator(str(tiny_student_dir), "torch", "cpu", control=str(controlnet_dir))


def test_sketch_mode_with_a_control_model_follows_a_qtbot_stroke(qtbot, make_window,
                                                                 control_generator):
    window = make_window(control_generator)
    tab = window.live_tab
    assert tab.control_sliders.isVisible()
    tab.prompt_edit.setText("cat")
    stroke(qtbot, tab.canvas, [(150, 150), (250, 200), (350, 300)])
    assert tab.mode == "sketch"

    def controlled_frame_arrived():
        request = tab.last_frame_request
        assert request is not None and request.control_image is not None
        assert request.sketch is None and request.prompt == "cat"
        assert np.array_equal(request.control_image, tab.canvas.sketch_on_white())

    qtbot.waitUntil(controlled_frame_arrived, timeout=60_000)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=60_000)
    result = tab.last_result
    assert result.ok and control_generator.control_cache_misses >= 1
    request = result.request
    plain, _ = control_generator.generate(replace(request, control_image=None))
    assert np.abs(result.image.astype(int) - plain).max() > 0  # the stroke steers the frame

    tab.control_sliders.strength_slider.setValue(0)  # strength 0: the frame without control
    qtbot.waitUntil(lambda: tab.last_frame_request.control_strength == 0.0, timeout=60_000)
    qtbot.waitUntil(lambda: not window.engine.busy, timeout=60_000)
    assert np.array_equal(tab.last_result.image, plain)
    recipe = tab.recipe_of(tab.last_result)
    assert recipe.control_model.endswith("tiny-scribble") and recipe.control_type == "scribble"


def test_the_sliders_stay_hidden_without_a_control_model(qtbot, make_window):
    window = make_window(FakeGenerator())
    tab = window.live_tab
    assert not tab.control_sliders.isVisible()
    tab.set_mode("sketch")
    assert tab.build_request().control_image is None


def test_the_engine_tab_loads_the_chosen_control_model_with_the_model(qtbot, make_window,
                                                                      tmp_path):
    calls = []

    def loader(model, backend, device, **control):
        calls.append(control)
        return FakeGenerator()

    window = make_window(FakeGenerator(), loader=loader)
    panel = window.engine_tab.model_panel
    qtbot.waitUntil(lambda: not panel.loading, timeout=10_000)
    panel.control_picker.folder_edit.setText(str(tmp_path / "scribble-net"))
    panel.control_picker.type_combo.setCurrentIndex(panel.control_picker.type_combo
                                                    .findData("lineart"))
    panel.load_selected()
    qtbot.waitUntil(lambda: len(calls) == 2 and not panel.loading, timeout=10_000)
    assert calls[-1] == {"control": str(tmp_path / "scribble-net"), "control_type": "lineart"}
    assert window.settings.control_model == str(tmp_path / "scribble-net")
    qtbot.waitUntil(lambda: "scribble-net" in window.engine.description, timeout=10_000)


def test_start_never_passes_end_on_the_sliders(qtbot):
    from app.control_panel import ControlSliders

    sliders = ControlSliders()
    qtbot.addWidget(sliders)
    sliders.end_slider.setValue(30)
    sliders.start_slider.setValue(60)
    strength, start, end = sliders.values()
    assert start < end and (start, end) == (0.6, 0.61)
    GenerateRequest("x", control_start=start, control_end=end)  # a valid request


@pytest.mark.parametrize("chosen, expected", [
    ("models/control_v11p_sd15_scribble.safetensors",
     "models/control_v11p_sd15_scribble.safetensors"),
    ("models/scribble-net/config.json", "models/scribble-net"),
])
def test_browse_takes_a_controlnet_file_or_a_folder_by_its_config(qtbot, monkeypatch, tmp_path,
                                                                  chosen, expected):
    from PySide6.QtWidgets import QFileDialog

    from app.control_panel import ControlPicker

    picker = ControlPicker()
    qtbot.addWidget(picker)
    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        lambda *args: (str(tmp_path / chosen), ""))
    picker.browse_button.click()
    assert picker.loader_options() == {"control": str(tmp_path / expected),
                                       "control_type": None}
