"""Help > About: versions, the device and the loaded model's card."""

from __future__ import annotations

from PySide6.QtCore import qVersion

from app.about_dialog import AboutDialog
from engine import __version__
from tests.app.conftest import FakeGenerator


def test_help_about_shows_versions_device_and_the_model_card(qtbot, make_window, tmp_path):

    generator = FakeGenerator()
    model = tmp_path / "model"
    model.mkdir()
    (model / "README.md").write_text("# Emoji student\n\nDraws emoji in two steps.\n"
                                     + "detail\n" * 50, encoding="utf-8")
    generator.backend.model_dir = model
    window = make_window(generator)
    menus = {action.text(): action.menu() for action in window.menuBar().actions()}
    about = next(action for action in menus["&Help"].actions() if "About" in action.text())
    about.trigger()
    dialogs = window.findChildren(AboutDialog)
    assert dialogs and all(dialog.isVisible() for dialog in dialogs)
    dialog = dialogs[0]
    rows = dialog.rows
    assert rows["DMD Studio"] == __version__ and rows["Qt"].startswith(qVersion())
    assert rows["torch"] and rows["diffusers"] and rows["onnxruntime"]
    assert rows["Running on"] == "fake, cpu" and rows["Model"] == str(model)
    text = dialog.versions_label.text()
    assert "diffusers" in text and "onnxruntime" in text and __version__ in text
    assert dialog.card_view.toPlainText().startswith("# Emoji student\n\nDraws emoji")
    assert dialog.card_view.toPlainText().count("detail") < 50  # the first lines only
    dialog.close()


def test_about_without_a_model_says_so(qtbot, make_window):
    window = make_window()
    dialog = window.show_about()
    qtbot.waitExposed(dialog)
    assert isinstance(dialog, AboutDialog)
    assert dialog.rows["Running on"] == "no model loaded"
    assert "no model card" in dialog.card_view.toPlainText()
    dialog.close()
