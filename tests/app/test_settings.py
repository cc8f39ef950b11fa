"""Settings: JSON round trip, per-key fallback, corrupt file -> defaults + notice."""

from __future__ import annotations

import json

from app.settings import AppSettings, load_settings, save_settings


def test_settings_round_trip_and_atomic_write(isolated_settings):
    settings = AppSettings(model_source="folder", model="/models/x", brush_size=12)
    settings.distill.steps = 77
    save_settings(settings)
    loaded, notice = load_settings()
    assert notice is None
    assert loaded == settings
    assert [p.name for p in isolated_settings.parent.iterdir()] == ["settings.json"]


def test_bad_values_fall_back_per_key(isolated_settings):
    isolated_settings.write_text(json.dumps({"brush_size": "huge", "backend": "onnx",
                                             "unknown": 1, "distill": {"lr": 1, "steps": 2.5}}))
    loaded, notice = load_settings()
    assert notice is None
    assert loaded.brush_size == AppSettings().brush_size
    assert loaded.backend == "onnx"
    assert loaded.distill.lr == 1.0 and loaded.distill.steps == AppSettings().distill.steps


def test_a_corrupt_file_gives_defaults_and_a_notice(isolated_settings):
    isolated_settings.write_text("{ this is not json")
    loaded, notice = load_settings()
    assert loaded == AppSettings()
    assert "unreadable" in notice and "defaults" in notice
    assert (isolated_settings.parent / "settings.json.corrupt").exists()


def test_the_window_shows_the_notice_and_saves_on_close(qtbot, make_window, isolated_settings):
    isolated_settings.write_text("[1, 2")
    window = make_window()
    assert "using defaults" in window.statusBar().currentMessage()
    window.live_tab.size_spin.setValue(21)
    window.close()
    saved = json.loads(isolated_settings.read_text())
    assert saved["brush_size"] == 21 and saved["window_geometry"]


def test_the_old_preview_switch_maps_onto_the_preview_modes(isolated_settings):
    isolated_settings.write_text(json.dumps({"preview_while_typing": False}))
    assert load_settings()[0].preview == "off"
    isolated_settings.write_text(json.dumps({"preview_while_typing": True}))
    assert load_settings()[0].preview == "auto"  # on meant "preview", which Auto does if slow
    isolated_settings.write_text(json.dumps({"preview_while_typing": False, "preview": "always"}))
    assert load_settings()[0].preview == "always"
