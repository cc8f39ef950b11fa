"""Engine tab: model loading off the UI thread, distillation in a QProcess, shutdown."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QProcess, Qt

from app.distill_process import DistillOptions, parse_event_line
from tests.app.conftest import FakeGenerator

FAKE_DISTILLER = [sys.executable, str(Path(__file__).with_name("fake_distiller.py"))]
HAS_DISTILL_TRAINER = (importlib.util.find_spec("engine.distill.trainer") is not None
                       and importlib.util.find_spec("engine.cli.distill") is not None)
NEEDS_TRAINER = pytest.mark.skipif(
    not HAS_DISTILL_TRAINER,
    reason="engine/distill/trainer.py and engine/cli/distill.py are not written yet")



def fill_distill_form(panel, teacher: str, out_dir: Path, steps: int = 2) -> None:
    panel.teacher_picker.set_value("folder", teacher)
    panel.steps_spin.setValue(steps)
    panel.batch_spin.setValue(2)
    panel.regression_spin.setValue(0.0)  # no teacher pairs to make: seconds, not minutes
    panel.gan_spin.setValue(0.0)
    panel.out_edit.setText(str(out_dir))


def test_progress_lines_are_parsed_and_log_lines_are_not():
    assert parse_event_line('{"step": 3, "total": 10, "losses": {}}')["event"] == "progress"
    assert parse_event_line('{"event": "done", "step": 2, "stopped": false}')["step"] == 2
    assert parse_event_line("loading teacher...") is None
    assert parse_event_line("{broken json") is None
    assert parse_event_line('{"message": "no step"}') is None
    assert parse_event_line("[1, 2]") is None
    arguments = DistillOptions("embedded", "runs/x", steps=2, resume=True).arguments()
    assert arguments[:4] == ["--teacher", "embedded", "--out", "runs/x"]
    assert arguments[-4:] == ["--progress", "json", "--low-priority", "--resume"]


def test_fine_tuning_fields_reach_the_command_line_only_when_set(qtbot, make_window):
    panel = make_window().engine_tab.distill_panel
    plain = panel.options(resume=False).arguments()
    assert not {"--init-from", "--critic-warmup-steps", "--ema-decay"} & set(plain)
    panel.init_edit.setText(" assets/models/student ")
    panel.warmup_spin.setValue(100)
    panel.ema_spin.setValue(0.99)
    arguments = panel.options(resume=False).arguments()
    for flag, value in (("--init-from", "assets/models/student"),
                        ("--critic-warmup-steps", "100"), ("--ema-decay", "0.99")):
        assert arguments[arguments.index(flag) + 1] == value
    panel.store_settings()
    stored = panel.settings.distill
    assert (stored.init_from, stored.critic_warmup_steps, stored.ema_decay) == \
        ("assets/models/student", 100, 0.99)


def test_onnx_backends_are_greyed_out_with_a_reason_when_absent(qtbot, make_window):
    window = make_window()
    combo = window.engine_tab.model_panel.backend_combo
    assert combo.currentData() == "auto"  # the default
    assert [combo.itemData(i) for i in range(combo.count())] == ["auto", "torch", "onnx",
                                                                 "onnx-int8"]
    present = importlib.util.find_spec("engine.runtime.onnx_backend") is not None
    for backend in ("onnx", "onnx-int8"):
        index = combo.findData(backend)
        assert combo.model().item(index).isEnabled() == present
        tip = combo.itemData(index, Qt.ItemDataRole.ToolTipRole) or ""
        assert ("not available" in tip) != present
    if present:
        tip = combo.itemData(combo.findData("onnx-int8"), Qt.ItemDataRole.ToolTipRole)
        assert "int8" in tip and "CPU" in tip


def test_a_failing_model_load_becomes_a_message(qtbot, make_window):
    def broken_loader(model, backend, device):
        raise RuntimeError("weights are corrupt")

    window = make_window(loader=broken_loader)
    panel = window.engine_tab.model_panel
    panel.picker.set_value("hub", "someone/model")
    panel.load_selected()
    qtbot.waitUntil(lambda: "weights are corrupt" in window.statusBar().currentMessage(),
                    timeout=10_000)
    assert "weights are corrupt" in panel.state_label.text()
    qtbot.waitUntil(lambda: panel.load_button.isEnabled(), timeout=10_000)
    panel.picker.set_value("folder", "/no/such/folder")
    panel.load_selected()
    assert "does not exist" in panel.state_label.text()


def test_distillation_reaches_100_percent_with_plot_and_sample(qtbot, make_window, tmp_path):
    window = make_window(distill_command=FAKE_DISTILLER)
    panel = window.engine_tab.distill_panel
    fill_distill_form(panel, str(tmp_path), tmp_path / "run", steps=6)
    with qtbot.waitSignal(panel.process.finished, timeout=30_000) as finished:
        panel.start_button.click()
        assert not panel.start_button.isEnabled() and panel.cancel_button.isEnabled()
    assert finished.args[0] is True
    assert panel.progress_bar.value() == 100
    assert len(panel.loss_plot.series["dm"]) == 6
    assert panel.shown_sample == tmp_path / "run" / "samples" / "step-6.png"
    assert panel.sample_label.pixmap() is not None and not panel.sample_label.pixmap().isNull()
    assert "distilling" in panel.log_view.toPlainText()
    assert panel.start_button.isEnabled()


def test_a_failing_trainer_shows_its_error(qtbot, make_window, tmp_path):
    window = make_window(distill_command=FAKE_DISTILLER)
    panel = window.engine_tab.distill_panel
    fill_distill_form(panel, str(tmp_path), tmp_path / "run")
    panel.teacher_picker.set_value("hub", "broken")  # not a hub id: refused before starting
    panel.start()
    assert "Teacher" in window.statusBar().currentMessage()
    panel.teacher_picker.set_value("embedded")
    panel.process.command = [*FAKE_DISTILLER]
    options = panel.options(resume=False)
    options.teacher = "broken"
    with qtbot.waitSignal(panel.process.finished, timeout=30_000) as finished:
        panel.process.start(options)
    assert finished.args[0] is False
    assert "could not be loaded" in finished.args[1]


def test_cancel_stops_the_run_with_a_checkpoint_and_resume_goes_on(qtbot, make_window,
                                                                    tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_DISTILL_DELAY", "0.2")
    window = make_window(distill_command=FAKE_DISTILLER)
    panel = window.engine_tab.distill_panel
    run_dir = tmp_path / "run"
    fill_distill_form(panel, str(tmp_path), run_dir, steps=1000)
    panel.start()
    qtbot.waitUntil(lambda: panel.process.last_progress is not None, timeout=30_000)
    with qtbot.waitSignal(panel.process.finished, timeout=30_000) as finished:
        panel.cancel_button.click()
    assert finished.args[0] is True and "checkpoint" in finished.args[1]
    checkpoints = list((run_dir / "checkpoints").glob("step-*"))
    assert checkpoints, "cancel left no checkpoint"
    assert panel.progress_bar.value() < 100
    monkeypatch.setenv("FAKE_DISTILL_DELAY", "0")
    panel.steps_spin.setValue(20)
    with qtbot.waitSignal(panel.process.finished, timeout=30_000):
        panel.resume_button.click()
    assert panel.progress_bar.value() == 100


def test_use_this_student_now_loads_the_snapshot_into_the_live_tab(qtbot, make_window,
                                                                    tmp_path):
    loaded_models = []
    generator = FakeGenerator()

    def loader(model, backend, device):
        loaded_models.append(model)
        return generator

    window = make_window(loader=loader)
    panel = window.engine_tab.distill_panel
    panel.out_edit.setText(str(tmp_path / "run"))
    panel.use_button.click()
    assert "No student snapshot" in window.statusBar().currentMessage()
    (tmp_path / "run" / "student" / "unet").mkdir(parents=True)
    panel.use_button.click()
    qtbot.waitUntil(lambda: window.engine.has_generator, timeout=10_000)
    assert loaded_models == [str(tmp_path / "run" / "student")]
    assert "student of run" in window.engine.description
    window.live_tab.prompt_edit.setText("cat")
    qtbot.waitUntil(lambda: window.live_tab.canvas.frame is not None, timeout=10_000)


def test_closing_the_window_leaves_no_thread_or_process_running(qtbot, make_window, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("FAKE_DISTILL_DELAY", "0.2")
    window = make_window(FakeGenerator(delay_s=0.05), distill_command=FAKE_DISTILLER)
    panel = window.engine_tab.distill_panel
    fill_distill_form(panel, str(tmp_path), tmp_path / "run", steps=1000)
    panel.start()
    qtbot.waitUntil(lambda: panel.process.last_progress is not None, timeout=30_000)
    window.live_tab.prompt_edit.setText("busy")
    process = panel.process.process
    window.close()
    assert process.state() == QProcess.ProcessState.NotRunning
    assert list((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert not [thread for thread in threading.enumerate()
                if thread.name.startswith("generation-worker") and thread.is_alive()]
    assert not window.engine_tab.model_panel.loading


@pytest.mark.slow  # the trainer's start-up takes 15-60 s on 2 cores
@NEEDS_TRAINER
def test_real_two_step_distillation_of_a_tiny_teacher(qtbot, make_window, tiny_model_dir,
                                                      tmp_path):
    window = make_window()
    panel = window.engine_tab.distill_panel
    fill_distill_form(panel, str(tiny_model_dir), tmp_path / "run", steps=2)
    with qtbot.waitSignal(panel.process.finished, timeout=240_000) as finished:
        panel.start()
    assert finished.args[0] is True, panel.log_view.toPlainText()[-2000:]
    assert panel.progress_bar.value() == 100
    assert panel.loss_plot.series, "no losses were plotted"
    # the finished student goes live through the real loader, off the UI thread
    panel.use_button.click()
    qtbot.waitUntil(lambda: window.engine.has_generator, timeout=60_000)
    window.live_tab.prompt_edit.setText("red apple")
    qtbot.waitUntil(lambda: window.live_tab.canvas.frame is not None, timeout=60_000)
    assert window.live_tab.last_result.ok


@pytest.mark.slow  # the trainer's start-up takes 15-60 s on 2 cores
@NEEDS_TRAINER
def test_real_cancel_leaves_a_checkpoint(qtbot, make_window, tiny_model_dir, tmp_path):
    window = make_window()
    panel = window.engine_tab.distill_panel
    run_dir = tmp_path / "run"
    fill_distill_form(panel, str(tiny_model_dir), run_dir, steps=100_000)
    panel.start()
    qtbot.waitUntil(lambda: panel.process.last_progress is not None, timeout=240_000)
    with qtbot.waitSignal(panel.process.finished, timeout=120_000) as finished:
        panel.cancel()
    assert finished.args[0] is True, panel.log_view.toPlainText()[-2000:]
    assert list((run_dir / "checkpoints").glob("step-*"))
