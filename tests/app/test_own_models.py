"""The Engine tab with the user's own models: a single-file checkpoint, a UNet file over a
base with its student timesteps, and bad input as a message."""

from __future__ import annotations

from safetensors.torch import save_file

from tests.engine.original_layout import component_state


def test_the_engine_tab_loads_a_single_file_checkpoint_and_renders(qtbot, make_window,
                                                                    tiny_family_models):
    """Through the real loader, off the UI thread: the frame has the family's native size."""
    _, checkpoint = tiny_family_models["sd1"]
    window = make_window()
    panel = window.engine_tab.model_panel
    panel.picker.set_value("file", str(checkpoint))
    panel.backend_combo.setCurrentIndex(panel.backend_combo.findData("auto"))
    panel.load_selected()
    qtbot.waitUntil(lambda: window.engine.has_generator, timeout=120_000)
    assert "sd1.safetensors" in panel.state_label.text()
    window.live_tab.prompt_edit.setText("red apple")
    qtbot.waitUntil(lambda: window.live_tab.canvas.frame is not None, timeout=120_000)
    result = window.live_tab.last_result
    assert result.ok and result.image.shape == (512, 512, 3)  # SD 1.x's native size
    assert result.backend == "torch"  # auto runs a single file on PyTorch
    assert (window.settings.model_source, window.settings.model) == ("file", str(checkpoint))


def test_a_unet_file_and_timesteps_reach_the_loader(qtbot, make_window, tiny_family_models,
                                                    tmp_path):
    base, _ = tiny_family_models["sdxl"]
    state, _ = component_state(base, "unet")
    unet = tmp_path / "student_unet.safetensors"
    save_file(state, str(unet))
    calls = []

    def recording_loader(model, backend, device, **options):
        calls.append((model, options))
        raise RuntimeError("stop here")

    window = make_window(loader=recording_loader)
    panel = window.engine_tab.model_panel
    panel.picker.set_value("folder", str(base))
    panel.unet_picker.path_edit.setText(str(unet))
    panel.unet_picker.timesteps_edit.setText("399")
    panel.size_combo.setCurrentIndex(panel.size_combo.findData(512))
    panel.load_selected()
    qtbot.waitUntil(lambda: bool(calls), timeout=10_000)
    options = calls[0][1]["options"]
    assert (options.unet, options.student_timesteps, options.size) == (str(unet), (399,), 512)
    assert (window.settings.unet_file, window.settings.student_timesteps,
            window.settings.image_size) == (str(unet), "399", 512)
    qtbot.waitUntil(lambda: panel.load_button.isEnabled(), timeout=10_000)
    for text, fragment in (("abc", "must be integers"), ("249,999", "must decrease")):
        panel.unet_picker.timesteps_edit.setText(text)
        panel.load_selected()
        assert fragment in panel.state_label.text()
    panel.unet_picker.timesteps_edit.setText("")
    panel.unet_picker.path_edit.setText(str(tmp_path / "missing.safetensors"))
    panel.load_selected()
    assert "does not exist" in panel.state_label.text() and len(calls) == 1


def test_a_bad_checkpoint_is_a_message_and_the_app_lives(qtbot, make_window, tmp_path):
    truncated = tmp_path / "broken.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{" + b"0" * 20)
    window = make_window()
    panel = window.engine_tab.model_panel
    panel.picker.set_value("file", str(truncated))
    panel.load_selected()
    qtbot.waitUntil(lambda: "not a complete safetensors file" in panel.state_label.text(),
                    timeout=60_000)
    assert "not a complete safetensors file" in window.statusBar().currentMessage()
    panel.picker.set_value("file", str(tmp_path / "notes.txt"))
    (tmp_path / "notes.txt").write_text("x")
    panel.load_selected()
    assert "is not a .safetensors or .ckpt checkpoint" in panel.state_label.text()
    assert not window.engine.has_generator
