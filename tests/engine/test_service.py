"""The live worker: latest request wins, finished frames are shown, previews refine, errors
don't kill it."""

import subprocess
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest

from engine.api import GenerateRequest, GenerationInterrupted, StageTimings
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
        self.steps: list[int] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def generate(self, request, interrupt=None):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        self.started.set()
        self.gate.wait(10)
        with self.lock:
            self.active -= 1
            self.ran.append(request.prompt)
            self.steps.append(request.steps)
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


def wait_for(condition, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return True
        threading.Event().wait(0.01)
    return condition()


def test_a_flood_runs_only_the_newest_and_every_finished_frame_is_shown(service_parts):
    service, generator, collector = service_parts
    first = service.submit(GenerateRequest("first"))
    assert generator.started.wait(5)
    ids = [service.submit(GenerateRequest(f"prompt {i}")) for i in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    generator.gate.set()
    assert wait_for(lambda: len(collector.results) == 2)
    service.close()
    # "first" was running when the flood came: its frame is still shown (the canvas keeps
    # moving); of the 100 waiting requests only the newest ran.
    assert generator.ran == ["first", "prompt 99"]
    assert [r.request_id for r in collector.results] == [first, ids[-1]]
    assert all(r.ok and r.backend == "fake" and not r.preview for r in collector.results)
    assert generator.max_active == 1


class SteppingGenerator:
    """Takes `step_s` per student step and honours interrupt() between steps."""

    def __init__(self, step_s: float = 0.02):
        self.backend, self.step_s = FakeBackend(), step_s
        self.runs: list[tuple[str, int, str]] = []  # prompt, steps, "done" | "interrupted"

    def generate(self, request, interrupt=None):
        for _ in range(request.steps):
            if interrupt is not None and interrupt():
                self.runs.append((request.prompt, request.steps, "interrupted"))
                raise GenerationInterrupted
            threading.Event().wait(self.step_s)
        self.runs.append((request.prompt, request.steps, "done"))
        return np.full((2, 2, 3), request.steps, np.uint8), StageTimings(total_ms=1.0)


def test_a_progressive_request_shows_its_preview_then_its_full_frame(no_thread_leak):
    generator, collector = SteppingGenerator(), Collector()
    service = GenerationService(generator, collector, refine_delay_s=0.05)
    request_id = service.submit(GenerateRequest("apple", steps=4, preview_steps=1))
    assert wait_for(lambda: len(collector.results) == 2)
    service.close()
    assert [(r.request_id, r.preview, int(r.image[0, 0, 0])) for r in collector.results] == \
        [(request_id, True, 1), (request_id, False, 4)]
    assert generator.runs == [("apple", 1, "done"), ("apple", 4, "done")]


def test_typing_within_the_refine_delay_skips_the_refinement(no_thread_leak):
    generator, collector = SteppingGenerator(), Collector()
    service = GenerationService(generator, collector, refine_delay_s=5.0)
    service.submit(GenerateRequest("a", steps=4, preview_steps=1))
    assert wait_for(lambda: len(collector.results) == 1)
    last = service.submit(GenerateRequest("ap", steps=4, preview_steps=1))
    assert wait_for(lambda: len(collector.results) == 2)
    service.close()  # "ap" waits for its 5 s pause: closing drops its refinement too
    assert generator.runs == [("a", 1, "done"), ("ap", 1, "done")]
    assert collector.results[-1].request_id == last and collector.results[-1].preview


def test_a_new_keystroke_interrupts_a_refinement_between_steps(no_thread_leak):
    generator, collector = SteppingGenerator(step_s=0.2), Collector()
    service = GenerationService(generator, collector, refine_delay_s=0.0)
    service.submit(GenerateRequest("a", steps=4, preview_steps=1))
    assert wait_for(lambda: len(collector.results) == 1)  # preview shown, refining now
    threading.Event().wait(0.1)
    last = service.submit(GenerateRequest("ab", steps=4, preview_steps=1))
    assert wait_for(lambda: len(collector.results) == 3)
    service.close()
    assert generator.runs == [("a", 1, "done"), ("a", 4, "interrupted"), ("ab", 1, "done"),
                              ("ab", 4, "done")]
    assert [(r.request_id, r.preview) for r in collector.results[1:]] == [(last, True),
                                                                           (last, False)]


def test_previews_only_where_steps_decide_the_image():
    assert GenerateRequest("a", steps=4, preview_steps=1).preview().steps == 1
    assert GenerateRequest("a", steps=4, preview_steps=1).preview().preview_steps == 0
    assert GenerateRequest("a", steps=1, preview_steps=1).preview() is None
    assert GenerateRequest("a", steps=4).preview() is None
    assert GenerateRequest("a", steps=4, preview_steps=1, teacher_steps=20).preview() is None
    image = np.zeros((8, 8, 3), np.uint8)
    assert GenerateRequest("a", steps=4, preview_steps=1, init_image=image,
                           strength=0.5).preview() is None
    assert GenerateRequest("a", steps=4, preview_steps=1, init_image=image,
                           strength=1.0).preview() is not None
    # A sketch is an edit only on a model without sketch channels, and only below strength 1.
    sketched = GenerateRequest("a", steps=4, preview_steps=1, sketch=image, strength=0.5)
    assert sketched.preview(sketch_channels=True) is not None
    assert sketched.preview(sketch_channels=False) is None
    assert replace(sketched, strength=1.0).preview(sketch_channels=False) is not None


@pytest.mark.parametrize("channels, expected_steps", [(0, [4]), (4, [1, 4])])
def test_a_sketch_edit_on_a_model_without_sketch_channels_runs_once(no_thread_leak, channels,
                                                                     expected_steps):
    generator, collector = SteppingGenerator(), Collector()
    generator.backend.conditioning_channels = channels
    service = GenerationService(generator, collector, refine_delay_s=0.05)
    sketch = np.zeros((8, 8, 3), np.uint8)
    service.submit(GenerateRequest("cat", steps=4, preview_steps=1, sketch=sketch, strength=0.6))
    assert wait_for(lambda: len(collector.results) == len(expected_steps))
    threading.Event().wait(0.1)
    service.close()
    assert [steps for _, steps, _ in generator.runs] == expected_steps
    assert [r.preview for r in collector.results] == [True] * (len(expected_steps) - 1) + [False]


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
    timings = result.timings  # consecutive stages: they add up to the total
    assert min(timings.text_ms, timings.unet_ms, timings.decode_ms) > 0
    stages = timings.text_ms + timings.encode_ms + timings.unet_ms + timings.decode_ms
    assert stages == pytest.approx(timings.total_ms)


def test_the_real_generator_stops_when_interrupted(tiny_model_dir):
    from engine.service import load_generator

    generator = load_generator(str(tiny_model_dir), "torch", "cpu")
    request = GenerateRequest("red apple", seed=3, steps=4)
    asked = []

    def interrupt_before_third_call():
        asked.append(1)
        return len(asked) == 3

    with pytest.raises(GenerationInterrupted):
        generator.generate(request, interrupt_before_third_call)
    assert len(asked) == 3  # asked before each UNet call, stopped before the third
    plain, _ = generator.generate(request)
    never, _ = generator.generate(request, lambda: False)
    assert np.array_equal(plain, never)


def test_engine_imports_no_qt():
    code = ("import importlib, pkgutil, sys, engine;"
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(engine.__path__, "
            "'engine.')];"
            "bad = [m for m in sys.modules if m.startswith(('PySide6', 'PyQt', 'shiboken'))];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_frame_cost_estimate_adds_unet_steps_to_the_first_frames_other_costs():
    from engine.service import FrameCostEstimate

    estimate = FrameCostEstimate(smoothing=0.5)
    assert estimate.predict(2) is None
    estimate.update(StageTimings(text_ms=5.0, unet_ms=10.0, total_ms=17.0), steps=1,
                    first_of_request=True)
    assert estimate.predict(2) == pytest.approx(2 * 10.0 + 7.0)
    # a refinement reused the cached text: it teaches the UNet's cost, not the rest
    estimate.update(StageTimings(unet_ms=16.0, total_ms=18.0), steps=2, first_of_request=False)
    assert estimate.unet_per_step_ms == pytest.approx(9.0) and estimate.other_ms == 7.0
    assert estimate.predict(4) == pytest.approx(4 * 9.0 + 7.0)


class TimedGenerator:
    """Reports `unet_step_ms` per UNet step plus `other_ms`, without taking that long."""

    def __init__(self, unet_step_ms: float, other_ms: float = 5.0):
        self.backend, self.unet_step_ms, self.other_ms = FakeBackend(), unet_step_ms, other_ms
        self.steps_run: list[int] = []

    def generate(self, request, interrupt=None):
        self.steps_run.append(request.steps)
        unet = self.unet_step_ms * request.steps
        return np.zeros((2, 2, 3), np.uint8), StageTimings(unet_ms=unet,
                                                            total_ms=unet + self.other_ms)


def type_keys(service, collector, prompts, **fields):
    """Submit each prompt and wait for its full frame (after the preview, if any)."""
    for prompt in prompts:
        request_id = service.submit(GenerateRequest(prompt, steps=2, preview_steps=1, **fields))
        assert wait_for(lambda request_id=request_id: any(
            r.request_id == request_id and not r.preview for r in collector.results))


@pytest.mark.parametrize(("unet_step_ms", "previews"), [(8.0, False), (12.0, True)])
def test_auto_preview_skips_the_quick_frame_when_the_full_one_is_fast(
        no_thread_leak, unet_step_ms, previews):
    generator, collector = TimedGenerator(unet_step_ms), Collector()
    service = GenerationService(generator, collector, refine_delay_s=0.01)
    try:
        type_keys(service, collector, ["a", "ab", "abc"], preview_above_ms=25.0)
    finally:
        service.close()
    # the first key previews (nothing measured yet); then 2 x 8 + 5 = 21 ms <= 25 runs the
    # two-step frame at once, while 2 x 12 + 5 = 29 ms keeps previewing
    later = [1, 2, 1, 2] if previews else [2, 2]
    assert generator.steps_run == [1, 2] + later
    assert service.frame_cost.predict(2) == pytest.approx(2 * unet_step_ms + 5.0)


def test_auto_preview_is_off_by_default_and_relearns_after_a_model_swap(no_thread_leak):
    fast, collector = TimedGenerator(2.0), Collector()
    service = GenerationService(fast, collector, refine_delay_s=0.01)
    try:
        type_keys(service, collector, ["a", "ab"])  # preview_above_ms 0: always preview
        assert fast.steps_run == [1, 2, 1, 2]
        type_keys(service, collector, ["abc"], preview_above_ms=25.0)
        assert fast.steps_run[-1:] == [2]
        other = TimedGenerator(2.0)
        service.replace_generator(other)
        type_keys(service, collector, ["abcd"], preview_above_ms=25.0)
    finally:
        service.close()
    assert other.steps_run == [1, 2]  # nothing known about the new model: preview first
