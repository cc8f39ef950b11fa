"""App test helpers: a fake generator that records concurrency, and a window factory."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from engine.api import EngineError, GenerateRequest, StageTimings


@dataclass
class FakeBackend:
    name: str = "fake"
    device: str = "cpu"


class FakeGenerator:
    """Stands in for engine.pipeline.generator.Generator; records every request it runs."""

    def __init__(self, delay_s: float = 0.01, fail_on: str | None = None, size: int = 16):
        self.backend = FakeBackend()
        self.delay_s, self.fail_on, self.size = delay_s, fail_on, size
        self.requests: list[GenerateRequest] = []
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def generate(self, request: GenerateRequest, interrupt=None):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.requests.append(request)
        try:
            time.sleep(self.delay_s * (3 if request.teacher_steps else 1))
            if self.fail_on and self.fail_on in request.prompt:
                raise EngineError("The fake model refused this prompt.")
            shade = (sum(map(ord, request.prompt)) * 7) % 256
            image = np.full((self.size, self.size, 3), shade, np.uint8)
            total = 30.0 if request.teacher_steps else 3.0
            return image, StageTimings(1.0, 0.0, 1.5, 0.5, total)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Every test reads and writes its own settings file, never the user's."""
    path = tmp_path / "settings.json"
    monkeypatch.setenv("DMD_STUDIO_SETTINGS", str(path))
    return path


@pytest.fixture(autouse=True)
def no_worker_left(no_thread_leak):
    """Every app test ends with no generation worker running (tests/conftest.py)."""
    yield


@pytest.fixture
def make_window(qtbot):
    """make_window(generator=None, loader=None, distill_command=None) -> a shown MainWindow.

    With a generator, the window's model loader returns it and the test waits until the
    live engine runs it. Windows are closed at teardown, before no_worker_left checks that
    no generation worker is left running.
    """
    from app.bridge import LiveEngine
    from app.main_window import MainWindow
    from app.settings import load_settings

    windows = []

    def factory(generator=None, loader=None, distill_command=None, model_dir=None):
        settings, notice = load_settings()
        if model_dir is not None:
            settings.model_source, settings.model = "folder", str(model_dir)
        elif generator is not None:
            settings.model_source, settings.model = "hub", "fake/model"
        engine = LiveEngine()
        if loader is None and generator is not None:
            def loader(model, backend, device):
                return generator
        kwargs = {"loader": loader} if loader is not None else {}
        window = MainWindow(settings, engine, distill_command=distill_command,
                            settings_notice=notice, **kwargs)
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        windows.append(window)
        if generator is not None or model_dir is not None:
            window.load_initial_model()
            qtbot.waitUntil(lambda: engine.has_generator, timeout=60_000)
        return window

    yield factory
    for window in windows:
        window.close()
