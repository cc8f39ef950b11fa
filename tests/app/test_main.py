"""main.py: argument errors, --screenshot on the tiny model, and a real tiny model in-process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_main(*arguments: str, tmp_path: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    environment = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1",
                       DMD_STUDIO_SETTINGS=str(tmp_path / "settings.json"),
                       DMD_STUDIO_CACHE=str(tmp_path / "cache"))
    return subprocess.run([sys.executable, "main.py", *arguments], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_arguments_print_one_line_and_exit_2(tmp_path):
    for arguments in (["--backend", "tensorrt"], ["--model", str(tmp_path / "missing")],
                      ["--no-such-flag"]):
        result = run_main(*arguments, tmp_path=tmp_path, timeout=60)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "error" in result.stderr


def test_screenshot_of_the_tiny_model_writes_a_png(tmp_path, tiny_model_dir):
    screenshot = tmp_path / "shot.png"
    result = run_main("--model", str(tiny_model_dir), "--screenshot", str(screenshot),
                      "--prompt", "red apple", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    image = QImage(str(screenshot))
    assert not image.isNull() and image.width() >= 800 and image.height() >= 600
    assert not (tmp_path / "settings.json").exists()  # a screenshot run leaves settings alone


def test_screenshot_on_the_int8_backend_exports_its_graphs_once(tmp_path, tiny_model_dir):
    import shutil

    model = shutil.copytree(tiny_model_dir, tmp_path / "model",
                            ignore=shutil.ignore_patterns("onnx*"))  # caches of other tests
    result = run_main("--model", str(model), "--backend", "onnx-int8", "--screenshot",
                      str(tmp_path / "shot.png"), "--prompt", "red apple", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    exports = [path.name.split("-", 1)[1] for path in (tmp_path / "cache" / "onnx").iterdir()]
    assert exports == ["onnx-int8"] and not list(model.glob("onnx*"))  # the int8 graphs only
    assert not QImage(str(tmp_path / "shot.png")).isNull()


def test_screenshot_with_an_unloadable_model_fails_with_a_message(tmp_path):
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    result = run_main("--model", str(not_a_model), "--screenshot", str(tmp_path / "x.png"),
                      tmp_path=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "screenshot failed" in result.stderr and "unet/" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_real_tiny_sketch_model_answers_a_stroke(qtbot, make_window, tiny_sketch_model_dir):
    window = make_window(model_dir=tiny_sketch_model_dir)  # the real loader, off the UI thread
    tab = window.live_tab
    tab.prompt_edit.setText("cat")
    qtbot.waitUntil(lambda: tab.canvas.frame is not None, timeout=60_000)
    canvas = tab.canvas
    qtbot.mousePress(canvas, Qt.MouseButton.LeftButton, pos=QPoint(120, 120))
    qtbot.mouseMove(canvas, QPoint(300, 260))
    qtbot.mouseRelease(canvas, Qt.MouseButton.LeftButton, pos=QPoint(300, 260))

    def sketch_frame_arrived():
        request = tab.last_frame_request
        assert request is not None and request.sketch is not None
        assert np.array_equal(request.sketch, canvas.sketch_on_white())

    qtbot.waitUntil(sketch_frame_arrived, timeout=60_000)
    assert tab.last_result.ok and tab.last_result.backend == "onnx"  # auto: a small model
    assert "onnx/CPUExecutionProvider" in tab.meter.text()


def test_no_display_is_a_one_line_error_and_exit_2():
    env = {key: value for key, value in os.environ.items()
           if key not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    result = subprocess.run([sys.executable, "main.py"], cwd=Path(__file__).parents[2], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no display" in lines[0]


def test_an_unloadable_xcb_plugin_names_the_packages_and_exits_2(monkeypatch, capsys):
    import app.main_window as main_window

    monkeypatch.setattr(main_window.sys, "platform", "linux")
    monkeypatch.setenv("DISPLAY", ":0")
    for name in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    loaded = []

    def missing_library(path, *args, **kwargs):
        loaded.append(path)
        raise OSError("libxcb-cursor.so.0: cannot open shared object file: No such file or "
                      "directory")

    def no_window(*args, **kwargs):
        raise AssertionError("the window must not be built")

    monkeypatch.setattr(main_window.ctypes, "CDLL", missing_library)
    monkeypatch.setattr(main_window, "MainWindow", no_window)
    assert main_window.run_app([]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Qt's xcb platform plugin")
    assert "libxcb-cursor.so.0" in lines[0]
    assert all(package in lines[0] for package in main_window.XCB_PACKAGES)
    assert [Path(path).name for path in loaded] == ["libqxcb.so"]
    assert "QT_QPA_PLATFORM" not in os.environ


def test_the_xcb_check_runs_only_where_qt_will_use_xcb(monkeypatch):
    from app.main_window import uses_xcb

    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "DISPLAY", "XDG_SESSION_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    assert uses_xcb()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert not uses_xcb()
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb:nograb")
    assert uses_xcb()
    monkeypatch.delenv("QT_QPA_PLATFORM")
    monkeypatch.setenv("WAYLAND_DISPLAY", "wayland-0")
    monkeypatch.setenv("XDG_SESSION_TYPE", "wayland")
    assert not uses_xcb()  # Qt opens a Wayland window there
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("QT_QPA_PLATFORM", "xcb")
    assert not uses_xcb()


def test_the_xcb_plugin_probe_reports_the_loader_or_nothing():
    from app.main_window import xcb_plugin_error

    reason = xcb_plugin_error()  # this machine's real plugin: loads, or names what it lacks
    assert reason is None or ".so" in reason
