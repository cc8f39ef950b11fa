"""The app starts, with a notice, whatever its settings file and history folder hold."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.settings import AppSettings, history_folder, load_settings, settings_path
from engine.recipe import RECIPE_KEY, Recipe, png_info
from tests.engine.test_reliability import NESTED, png_declaring


def save_frame(path, recipe_text: str | None = None, recipe: Recipe | None = None) -> None:
    info = png_info(recipe) if recipe is not None else PngImagePlugin.PngInfo()
    if recipe_text is not None:
        info.add_itxt(RECIPE_KEY, recipe_text)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(path, pnginfo=info)


def test_deeply_nested_settings_start_the_app_with_defaults_and_a_notice(
        qtbot, make_window, isolated_settings):
    isolated_settings.write_text('{"distill": ' + NESTED + "}")
    window = make_window()
    message = window.statusBar().currentMessage()
    assert "it nests 100,001 levels deep" in message and "using defaults" in message
    assert window.settings.distill == AppSettings().distill
    assert (isolated_settings.parent / "settings.json.corrupt").is_file()


def test_history_with_nested_or_oversized_entries_still_starts(qtbot, make_window,
                                                               isolated_settings):
    folder = history_folder()
    folder.mkdir(parents=True)
    save_frame(folder / "20260101-000000-000001.png", NESTED)
    (folder / "20260101-000000-000002.png").write_bytes(png_declaring(13_000, 13_000))
    save_frame(folder / "20260101-000000-000003.png", recipe=Recipe(prompt="red apple"))
    window = make_window()
    entries = window.live_tab.history.entries()
    assert [entry.recipe.prompt for entry in entries] == ["red apple"]


def test_a_settings_path_that_is_a_folder_is_left_alone(isolated_settings):
    isolated_settings.mkdir()
    (isolated_settings / "mine.txt").write_text("keep")
    settings, notice = load_settings()
    assert settings == AppSettings()
    assert "is a folder, not a file" in notice
    assert (isolated_settings / "mine.txt").read_text() == "keep"
    assert not (isolated_settings.parent / "settings.json.corrupt").exists()


def test_numbers_out_of_range_keep_their_defaults(isolated_settings):
    isolated_settings.write_text('{"teacher_guidance": 1e308, "brush_size": -4, '
                                 '"teacher_steps": 30, "distill": {"lr": Infinity, "batch": 8}}')
    settings, notice = load_settings()
    assert notice is None
    defaults = AppSettings()
    assert (settings.teacher_guidance, settings.brush_size, settings.teacher_steps) == \
        (defaults.teacher_guidance, defaults.brush_size, 30)
    assert (settings.distill.lr, settings.distill.batch) == (defaults.distill.lr, 8)


def test_the_settings_path_is_the_one_the_readme_names(qapp, monkeypatch, tmp_path):
    from app.settings import name_application

    monkeypatch.delenv("DMD_STUDIO_SETTINGS")
    monkeypatch.delenv("DMD_STUDIO_CONFIG")
    monkeypatch.setattr("sys.platform", "linux")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    name_application()
    assert settings_path() == tmp_path / "dmd-studio" / "settings.json"
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    assert "`~/.config/dmd-studio/settings.json`" in readme


def test_an_earlier_versions_settings_and_history_are_carried_over(qapp, monkeypatch, tmp_path):
    import app.settings as settings_module

    earlier = tmp_path / "earlier"
    (earlier / "history").mkdir(parents=True)
    (earlier / "settings.json").write_text('{"brush_size": 9}')
    save_frame(earlier / "history" / "20260101-000000-000001.png", recipe=Recipe(prompt="cat"))
    monkeypatch.delenv("DMD_STUDIO_SETTINGS")
    monkeypatch.setattr(settings_module, "earlier_folder", lambda: earlier)
    assert load_settings()[0].brush_size == 9  # read from where the earlier version kept it
    settings_module.save_settings(AppSettings(brush_size=12))
    assert settings_path().is_file() and load_settings()[0].brush_size == 12
    folder = history_folder()
    assert folder.parent == settings_module.data_dir()
    assert (folder / "20260101-000000-000001.png").is_file()  # moved once
    assert not (earlier / "history").exists() and history_folder() == folder


def test_onnx_with_no_writable_cache_opens_on_pytorch_with_a_notice(
        qtbot, make_window, isolated_settings, tiny_student_dir, tmp_path, monkeypatch,
        read_only):
    import shutil

    pytest.importorskip("onnxruntime")
    model = read_only(shutil.copytree(tiny_student_dir, tmp_path / "student"))
    monkeypatch.setenv("DMD_STUDIO_CACHE", str(read_only(tmp_path / "cache")))
    isolated_settings.write_text(json.dumps({"backend": "onnx"}))
    messages = []
    window = make_window(model_dir=model)
    window.engine_tab.status_message.connect(messages.append)
    qtbot.waitUntil(lambda: window.engine.backend_name == "torch", timeout=60_000)
    assert window.engine.has_generator
    assert any("Running PyTorch instead" in text for text in
               [*messages, window.statusBar().currentMessage()]), messages
