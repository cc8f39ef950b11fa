"""The Engine tab's LoRA list and fast decoder drive live frames through the service."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.pipeline.generator import Generator
from engine.runtime.lora import lora_components
from engine.runtime.torch_backend import TorchBackend
from tests.engine.adapter_files import random_layers, write_peft, write_tiny_decoder


@pytest.fixture
def real_window(make_window, tiny_student_dir):
    """A window running the tiny student on PyTorch (the real generator, service, bridge)."""

    def loader(model, backend, device):
        return Generator(TorchBackend.load(str(tiny_student_dir), "cpu"))

    window = make_window(loader=loader, model_dir=tiny_student_dir)
    window.live_tab.prompt_edit.setText("cat")
    return window


def frame_after(qtbot, tab, condition) -> np.ndarray:
    """The canvas frame once the last result satisfies condition(result)."""
    qtbot.waitUntil(lambda: tab.last_result is not None and tab.last_result.ok
                    and condition(tab.last_result) and not tab.engine.busy, timeout=60_000)
    return tab.last_result.image.astype(int)


def test_the_lora_list_drives_frames(qtbot, real_window, tiny_student_dir, tmp_path):
    tab, panel = real_window.live_tab, real_window.engine_tab.adapters_panel
    plain = frame_after(qtbot, tab, lambda result: result.request.prompt == "cat")
    components = lora_components(TorchBackend.load(str(tiny_student_dir), "cpu").parts)
    path = write_peft(tmp_path / "style.safetensors", random_layers(components), alpha=2.0)

    panel.add_lora(str(path))
    styled = frame_after(qtbot, tab, lambda result: len(result.loras) == 1
                         and result.loras[0].weight == 1.0)
    assert np.abs(styled - plain).max() > 0
    assert tab.frame_recipe.loras[0].sha256 == tab.last_result.loras[0].sha256
    styled_recipe = tab.frame_recipe

    panel.rows[0].slider.setValue(0)  # weight 0: the model as loaded, pixel for pixel
    zero = frame_after(qtbot, tab, lambda result: result.loras and result.loras[0].weight == 0)
    assert np.abs(zero - plain).max() == 0

    panel.remove_lora(panel.rows[0])
    removed = frame_after(qtbot, tab, lambda result: result.loras == ())
    assert np.abs(removed - plain).max() == 0 and panel.rows == []

    tab.restore_recipe(styled_recipe)  # its LoRA comes back, in the list and the frame
    again = frame_after(qtbot, tab, lambda result: result.loras == styled_recipe.loras)
    assert np.abs(again - styled).max() == 0
    assert [(row.path, row.weight) for row in panel.rows] == [(str(path), 1.0)]


def test_a_bad_lora_file_is_a_message_and_the_app_lives_on(qtbot, real_window, tmp_path):
    tab, panel = real_window.live_tab, real_window.engine_tab.adapters_panel
    frame_after(qtbot, tab, lambda result: True)
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x00" * 40)
    with qtbot.waitSignal(panel.status_message, timeout=60_000) as message:
        panel.add_lora(str(bad))
    assert "broken.safetensors" in message.args[0] and "readable" in message.args[0]
    assert panel.rows == [] and real_window.engine.loras == []
    tab.seed_spin.setValue(tab.seed_spin.value() + 1)
    frame_after(qtbot, tab, lambda result: result.request.seed == tab.seed_spin.value())


def test_a_fast_decoder_changes_frames_and_saves_with_the_full_vae(qtbot, real_window,
                                                                   tmp_path):
    tab, panel = real_window.live_tab, real_window.engine_tab.adapters_panel
    full = frame_after(qtbot, tab, lambda result: result.request.prompt == "cat")
    decoder = write_tiny_decoder(tmp_path / "taesd", seed=5)
    panel.decoder_edit.setText(str(decoder))
    panel.apply_decoder()
    fast = frame_after(qtbot, tab, lambda result: result.decoder == str(decoder))
    assert np.abs(fast - full).max() > 0
    assert tab.frame_recipe.decoder == str(decoder)

    assert panel.full_vae_box.isChecked()
    path = tmp_path / "saved.png"
    with qtbot.waitSignal(tab.status_message, timeout=60_000,
                          check_params_cb=lambda text: text.startswith("Saved")):
        assert tab.save("image", str(path))
    with Image.open(path) as image:
        saved = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(saved - full).max() == 0  # the full VAE's frame, exactly
    from engine.recipe import read_recipe

    assert read_recipe(path).decoder == ""

    panel.full_vae_box.setChecked(False)
    fast_path = tmp_path / "fast.png"
    assert tab.save("image", str(fast_path))
    with Image.open(fast_path) as image:
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - fast).max() == 0


def test_a_lora_on_an_onnx_model_loads_it_again_on_pytorch(qtbot, make_window, tiny_student_dir,
                                                          tmp_path):
    window = make_window(model_dir=tiny_student_dir)  # the real loader: auto picks onnx here
    tab, panel = window.live_tab, window.engine_tab.adapters_panel
    tab.prompt_edit.setText("cat")
    frame_after(qtbot, tab, lambda result: result.backend == "onnx")
    components = lora_components(TorchBackend.load(str(tiny_student_dir), "cpu").parts)
    path = write_peft(tmp_path / "style.safetensors", random_layers(components), alpha=2.0)
    panel.add_lora(str(path), 0.5)
    frame_after(qtbot, tab, lambda result: result.backend == "torch" and len(result.loras) == 1)
    assert tab.last_result.loras[0].weight == 0.5 and len(panel.rows) == 1
