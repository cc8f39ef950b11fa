"""The live worker: latest request wins, stale results are dropped, errors don't kill it."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from engine.api import GenerateRequest, StageTimings
from engine.service import GenerationService


class FakeBackend:
    name = "fake"
    device = "cpu"


class GatedGenerator:
    """Blocks inside generate() until released, and records every request it ran."""

    def __init__(self):
        self.backend = FakeBackend()
        self.gate = threading.Event()
        self.started = threading.Event()
        self.ran: list[str] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def generate(self, request):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        self.gate.wait(10)
        with self.lock:
            self.active -= 1
            self.ran.append(request.prompt)
        if request.prompt == "explode":
            raise RuntimeError("backend failure")
        return np.zeros((2, 2, 3), np.uint8), StageTimings(total_ms=1.0)


class Collector:
    def __init__(self):
        self.results = []
        self.arrived = threading.Event()

    def __call__(self, result):
        self.results.append(result)
        self.arrived.set()


@pytest.fixture
def service_parts(no_thread_leak):
    generator, collector = GatedGenerator(), Collector()
    service = GenerationService(generator, collector)
    yield service, generator, collector
    generator.gate.set()
    service.close()
    assert not service.is_alive()


def test_only_the_newest_of_a_flood_is_delivered(service_parts):
    service, generator, collector = service_parts
    service.submit(GenerateRequest("first"))
    assert generator.started.wait(5)
    ids = [service.submit(GenerateRequest(f"prompt {i}")) for i in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    generator.gate.set()
    assert collector.arrived.wait(5)
    service.close()
    # "first" ran but was superseded; of the 100 only the newest ran; one frame delivered.
    assert generator.ran == ["first", "prompt 99"]
    assert [r.request_id for r in collector.results] == [ids[-1]]
    assert collector.results[0].ok and collector.results[0].backend == "fake"
    assert generator.max_active == 1


def test_a_backend_exception_becomes_a_failed_result_and_the_worker_lives(service_parts):
    service, generator, collector = service_parts
    generator.gate.set()
    service.submit(GenerateRequest("explode"))
    assert collector.arrived.wait(5)
    failed = collector.results[0]
    assert not failed.ok and "backend failure" in failed.error and failed.image is None
    collector.arrived.clear()
    service.submit(GenerateRequest("fine"))
    assert collector.arrived.wait(5)
    assert collector.results[-1].ok and service.is_alive()


def test_a_broken_callback_does_not_kill_the_worker(no_thread_leak):
    generator = GatedGenerator()
    generator.gate.set()
    calls = []

    def callback(result):
        calls.append(result)
        if len(calls) == 1:
            raise ValueError("ui bug")

    service = GenerationService(generator, callback)
    service.submit(GenerateRequest("a"))
    for _ in range(100):
        if calls:
            break
        threading.Event().wait(0.02)
    service.submit(GenerateRequest("b"))
    for _ in range(100):
        if len(calls) == 2:
            break
        threading.Event().wait(0.02)
    service.close()
    assert len(calls) == 2


def test_close_joins_and_rejects_new_requests(no_thread_leak):
    from engine.api import EngineError

    service = GenerationService(GatedGenerator(), Collector())
    service.close()
    assert not service.is_alive()
    with pytest.raises(EngineError):
        service.submit(GenerateRequest("late"))


def test_real_generator_through_the_service(tiny_model_dir, no_thread_leak):
    from engine.service import load_generator

    collector = Collector()
    service = GenerationService(load_generator(str(tiny_model_dir), "torch", "cpu"), collector)
    service.submit(GenerateRequest("red apple", seed=3))
    assert collector.arrived.wait(30)
    service.close()
    result = collector.results[0]
    assert result.ok and result.image.shape == (32, 32, 3)
    assert result.backend == "torch" and result.device == "cpu"
    assert result.timings.text_ms >= 0 and result.timings.total_ms > 0


def test_engine_imports_no_qt():
    code = ("import importlib, pkgutil, sys, engine;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(engine.__path__, "
            "'engine.')];"
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'PyQt', 'shiboken'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
