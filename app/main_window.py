"""The main window (Live and Engine tabs, status bar) and run_app(), the app's entry point."""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import traceback
from pathlib import Path

from PySide6.QtCore import QByteArray, QLibraryInfo, QObject, Qt, QTimer
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import QApplication, QMainWindow, QTabWidget, QWidget

from app.about_dialog import AboutDialog
from app.bridge import GeneratorLoader, LiveEngine, default_loader
from app.canvas import save_image_atomic
from app.engine_tab import EngineTab, onnx_backend_available
from app.live_tab import LiveTab
from app.model_picker import looks_like_hub_id
from app.settings import APP_NAME, AppSettings, load_settings, name_application, save_settings
from engine import __version__
from engine.api import BACKENDS, ONNX_BACKENDS

SCREENSHOT_TIMEOUT_MS = 300_000
STATUS_TIMEOUT_MS = 15_000


class MainWindow(QMainWindow):
    """Live and Engine tabs; on close it stops every thread and process and saves settings."""

    def __init__(self, settings: AppSettings, engine: LiveEngine,
                 loader: GeneratorLoader = default_loader,
                 distill_command: list[str] | None = None, settings_notice: str | None = None,
                 save_settings_on_close: bool = True, parent: QWidget | None = None):
        super().__init__(parent)
        self.settings, self.engine = settings, engine
        self.save_settings_on_close = save_settings_on_close
        self.setWindowTitle(APP_NAME)
        self.live_tab = LiveTab(engine, settings)
        self.engine_tab = EngineTab(engine, settings, loader, distill_command)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.live_tab, "Live")
        self.tabs.addTab(self.engine_tab, "Engine")
        self.setCentralWidget(self.tabs)
        self.live_tab.status_message.connect(self.show_message)
        self.engine_tab.status_message.connect(self.show_message)
        self.resize(1180, 820)
        if settings.window_geometry:
            self.restoreGeometry(QByteArray.fromBase64(settings.window_geometry.encode("ascii")))
        help_menu = self.menuBar().addMenu("&Help")
        self.about_action = help_menu.addAction(f"&About {APP_NAME}")
        self.about_action.triggered.connect(self.show_about)
        self._closed = False
        self.show_message(settings_notice or "Ready.")

    def show_about(self) -> AboutDialog:
        """Help > About: versions, device and the loaded model's card (a modeless dialog)."""
        dialog = AboutDialog(self.engine, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def show_message(self, message: str) -> None:
        self.statusBar().showMessage(message, STATUS_TIMEOUT_MS)

    def load_initial_model(self) -> None:
        """Load the model named in the settings (or by --model) off the UI thread."""
        self.engine_tab.model_panel.load_selected()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the trainer, wait for model loads, stop the worker thread, save settings."""
        if self._closed:
            return
        self._closed = True
        self.settings.window_geometry = bytes(self.saveGeometry().toBase64()).decode("ascii")
        self.live_tab.store_settings()
        self.engine_tab.shutdown()
        self.engine.close()
        if self.save_settings_on_close:
            try:
                save_settings(self.settings)
            except OSError as error:
                print(f"Could not save settings: {error}", file=sys.stderr)


class ScreenshotJob(QObject):
    """--screenshot: wait for the first full frame (not a preview), grab the window, quit."""

    def __init__(self, window: MainWindow, path: Path):
        super().__init__(window)
        self.window, self.path = window, path
        self.exit_code: int | None = None
        window.engine.result_ready.connect(self._on_result)
        window.engine_tab.status_message.connect(self._on_engine_message)
        QTimer.singleShot(SCREENSHOT_TIMEOUT_MS, lambda: self._finish(1, "no frame in time"))

    def _on_engine_message(self, message: str) -> None:
        if not self.window.engine.has_generator:  # only load failures reach here before a frame
            self._finish(1, message)

    def _on_result(self, result, request) -> None:
        if not result.ok:
            self._finish(1, result.error)
        elif not request.teacher_steps and not result.preview:
            QTimer.singleShot(100, self._grab)

    def _grab(self) -> None:
        try:
            save_image_atomic(self.window.grab().toImage(), self.path)
        except OSError as error:
            self._finish(1, str(error))
            return
        self._finish(0, None)

    def _finish(self, code: int, problem: str | None) -> None:
        if self.exit_code is not None:
            return
        self.exit_code = code
        if problem:
            print(f"screenshot failed: {problem}", file=sys.stderr)
        else:
            print(f"wrote {self.path}")
        # deferred: a failure can be reported before the event loop has started
        QTimer.singleShot(0, self._quit)

    def _quit(self) -> None:
        self.window.close()
        QApplication.instance().exit(self.exit_code)


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments print one line and exit with status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(prog="main.py", description=f"{APP_NAME}: live one-step generation.")
    parser.add_argument("--model", help="model folder, single-file checkpoint (.safetensors, "
                                        ".ckpt) or hub id (default: the embedded student)")
    parser.add_argument("--backend", choices=("auto", *BACKENDS),
                        help="runtime (default: auto, ONNX Runtime on a CPU for small models "
                             "such as the embedded one, else PyTorch; onnx-int8: int8 matrix "
                             "products on the CPU, the fastest frames)")
    parser.add_argument("--screenshot", metavar="FILE",
                        help="save a PNG of the window after the first frame, then exit")
    parser.add_argument("--prompt", default=None, help="prompt to type at start")
    parser.add_argument("--version", action="version", version=f"dmd-studio {__version__}")
    options = parser.parse_args(argv)
    if options.model and not Path(options.model).expanduser().exists() \
            and not looks_like_hub_id(options.model):
        parser.error(f"--model {options.model}: no such folder or file, and not a hub id "
                     "(owner/name)")
    if options.backend in ONNX_BACKENDS and not onnx_backend_available():
        parser.error(f"--backend {options.backend}: the ONNX Runtime backend is not available "
                     "in this build")
    if options.screenshot and not Path(options.screenshot).expanduser().parent.is_dir():
        parser.error(f"--screenshot {options.screenshot}: the folder does not exist")
    return options


def has_display() -> bool:
    """Whether Qt can open a window: a display server, or a platform chosen explicitly."""
    if sys.platform in ("win32", "darwin"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


# Debian/Ubuntu packages whose libraries (with their dependencies) Qt's xcb platform plugin
# needs; a fresh system may lack some (libxcb-cursor0 since Qt 6.5).
XCB_PACKAGES = ("libxcb-cursor0", "libxkbcommon-x11-0", "libxcb-icccm4", "libxcb-keysyms1",
                "libxcb-shape0", "libxcb-randr0", "libxcb-render-util0", "libxcb-image0",
                "libegl1", "libgl1")


def uses_xcb() -> bool:
    """Whether Qt will open its window through the xcb (X11) platform plugin: on Linux, when
    QT_QPA_PLATFORM names xcb, or names nothing on an X11 display outside a Wayland session."""
    if not sys.platform.startswith("linux"):
        return False
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if platform:
        return platform.split(";")[0].split(":")[0].strip() == "xcb"
    wayland = bool(os.environ.get("WAYLAND_DISPLAY")) \
        and os.environ.get("XDG_SESSION_TYPE", "").lower() == "wayland"
    return bool(os.environ.get("DISPLAY")) and not wayland


def xcb_plugin_error() -> str | None:
    """Why Qt's xcb platform plugin cannot load (the dynamic loader's message: usually a
    missing system library), or None when it loads. Qt itself aborts the process in that case,
    so the plugin is loaded here first, where the failure can be reported."""
    plugins = Path(QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath))
    plugin = plugins / "platforms" / "libqxcb.so"
    if not plugin.is_file():
        return f"{plugin} is missing"
    try:
        ctypes.CDLL(str(plugin))
    except OSError as error:
        return str(error)
    return None


def xcb_error_message(reason: str) -> str:
    return (f"error: Qt's xcb platform plugin cannot load ({reason}); on Debian or Ubuntu "
            f"install its libraries with sudo apt-get install {' '.join(XCB_PACKAGES)} "
            "(or run with QT_QPA_PLATFORM=offscreen for no window).")


def run_app(argv: list[str] | None = None) -> int:
    """Wire QApplication, settings, the live engine and the main window; run the event loop."""
    options = parse_arguments(sys.argv[1:] if argv is None else argv)
    if not has_display():
        if not options.screenshot:
            print("error: no display found (DISPLAY/WAYLAND_DISPLAY unset); run on a desktop, "
                  "or set QT_QPA_PLATFORM=offscreen.", file=sys.stderr)
            return 2
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # a screenshot needs no screen
    elif uses_xcb() and (reason := xcb_plugin_error()):
        if not options.screenshot:
            print(xcb_error_message(reason), file=sys.stderr)
            return 2
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    name_application()
    application = QApplication.instance() or QApplication([sys.argv[0]])
    settings, notice = load_settings()
    if options.model:
        path = Path(options.model).expanduser()
        settings.model_source = "folder" if path.is_dir() else "file" if path.is_file() \
            else "hub"
        settings.model = str(path.resolve()) if path.exists() else options.model
    if options.backend:
        settings.backend = options.backend
    engine = LiveEngine()
    window = MainWindow(settings, engine, settings_notice=notice,
                        save_settings_on_close=not options.screenshot)
    screenshot = ScreenshotJob(window, Path(options.screenshot)) if options.screenshot else None
    window.show()
    if options.prompt:
        window.live_tab.prompt_edit.setText(options.prompt)
    window.load_initial_model()
    previous_hook = sys.excepthook

    def show_unexpected(kind, error, trace) -> None:
        traceback.print_exception(kind, error, trace)
        window.show_message(f"Unexpected error: {kind.__name__}: {error}")

    sys.excepthook = show_unexpected  # an exception in a slot is shown, the app lives on
    try:
        code = application.exec()
    finally:
        sys.excepthook = previous_hook
        window.shutdown()
    if screenshot is not None and screenshot.exit_code is not None:
        return screenshot.exit_code
    return code
