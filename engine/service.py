"""The live generation worker: a latest-request-wins single-slot mailbox on one thread.

submit() overwrites the pending slot, so a flood of keystrokes never builds a queue and a
request that was overtaken before it started is dropped. Every frame the worker finishes
is delivered, so the canvas keeps moving while the user types even when a frame takes
longer than the gap between keystrokes. A progressive request (preview_steps) delivers a
quick frame first and, once no newer request has come for refine_delay_s, its full-step
frame; a newer request interrupts that refinement between UNet steps. A request with
preview_above_ms skips the preview while the full frame is expected to be that quick (the
estimate comes from the timings of the frames already made). Every exception becomes a
failed GenerateResult; the thread lives on.
"""

from __future__ import annotations

import dataclasses
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from typing import Protocol

from engine.api import (
    EngineError,
    GenerateRequest,
    GenerateResult,
    GenerationInterrupted,
    ModelOptions,
    StageTimings,
)

ResultCallback = Callable[[GenerateResult], None]
# The live tab's preview_above_ms: one frame at 30 FPS. The estimate comes from frames made
# between keystrokes, which cost more than back-to-back ones on a shared host (an idle gap
# has tripled the decoder's time on a 2-core VM), so it errs towards previews. Measured with
# the embedded student on 2 cores (docs/benchmarks.md): onnx-int8 then shows mostly full
# two-step frames and onnx mostly previews, keystroke p50 24.6-28.1 ms either way.
DIRECT_FRAME_MS = 33.0


class FrameCostEstimate:
    """A running estimate of a student frame's milliseconds from recent frames' timings:
    UNet ms per step, times the steps, plus everything else the first frame of a request
    costs (text encoding, image encoding, decode, glue)."""

    def __init__(self, smoothing: float = 0.3):
        self.smoothing = smoothing
        self.unet_per_step_ms: float | None = None
        self.other_ms: float | None = None

    def _blend(self, old: float | None, new: float) -> float:
        return new if old is None else old + self.smoothing * (new - old)

    def update(self, timings: StageTimings, steps: int, first_of_request: bool) -> None:
        """Learn from a finished frame of `steps` UNet steps; only a request's first frame
        paid for its text encoding, so only it teaches the rest of the cost."""
        self.unet_per_step_ms = self._blend(self.unet_per_step_ms, timings.unet_ms / steps)
        if first_of_request:
            self.other_ms = self._blend(self.other_ms, timings.total_ms - timings.unet_ms)

    def predict(self, steps: int) -> float | None:
        """Expected ms of a request's first frame at `steps` steps; None before any frame."""
        if self.unet_per_step_ms is None or self.other_ms is None:
            return None
        return self.unet_per_step_ms * steps + self.other_ms


class ImageGenerator(Protocol):
    """What the service runs: engine.pipeline.generator.Generator or a test fake."""

    backend: object

    def generate(self, request: GenerateRequest, interrupt: Callable[[], bool] | None = None): ...


def load_generator(model: str | None = None, backend: str = "torch", device: str = "auto",
                   control: str | None = None, control_type: str | None = None,
                   options: ModelOptions | None = None):
    """Load a model folder or single-file checkpoint (default: the embedded student) on a
    backend, warmed up; control: a ControlNet or T2I-Adapter folder to load with it
    (control_type: its preprocessing, default: the folder's control.json or name), which runs
    the model on PyTorch; options: a replacement UNet, student timesteps, size (ModelOptions)."""
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend
    from engine.runtime.loading import default_model

    model = model or default_model()
    if model is None:
        raise EngineError("No model given and no embedded model is installed in assets/models.")
    runtime = create_backend(model, backend, device, control=bool(control), options=options)
    control_model = None
    if control:
        from engine.runtime.control import load_control

        control_model = load_control(control, runtime, control_type)
    runtime.warm_up()
    return Generator(runtime, control=control_model)


class GenerationService:
    """Owns one worker thread; results go to on_result, called on that worker thread."""

    def __init__(self, generator: ImageGenerator, on_result: ResultCallback,
                 refine_delay_s: float = 0.1):
        self._generator = generator
        self.refine_delay_s = refine_delay_s
        self.frame_cost = FrameCostEstimate()  # worker thread only
        self._on_result = on_result
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: GenerateRequest | None = None
        self._latest_id = 0
        self._closed = False
        self._generator_changed = False
        self._jobs: dict[str, tuple[Callable, Future]] = {}  # run between frames, by key
        self._thread = threading.Thread(target=self._run, name="generation-worker", daemon=True)
        self._thread.start()

    @property
    def backend_name(self) -> str:
        return getattr(getattr(self._generator, "backend", None), "name", "")

    @property
    def device(self) -> str:
        return getattr(getattr(self._generator, "backend", None), "device", "")

    def submit(self, request: GenerateRequest) -> int:
        """Replace the pending request with this one; returns its new, increasing id."""
        with self._lock:
            if self._closed:
                raise EngineError("The generation service is closed.")
            self._latest_id += 1
            self._pending = dataclasses.replace(request, request_id=self._latest_id)
            self._wake.notify()
            return self._latest_id

    def replace_generator(self, generator: ImageGenerator) -> None:
        """Swap the model (e.g. a fresher student snapshot); takes effect at the next request."""
        with self._lock:
            self._generator = generator
            self._generator_changed = True

    def run_between_frames(self, key: str, job: Callable[[ImageGenerator], object]) -> Future:
        """Run job(generator) on the worker before its next frame (fusing LoRAs, a full-VAE
        render); the Future gets its result or exception. A newer job with the same key
        replaces one still waiting, whose Future is cancelled (a dragged slider fuses once)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise EngineError("The generation service is closed.")
            replaced = self._jobs.pop(key, None)
            self._jobs[key] = (job, future)
            self._wake.notify()
        if replaced is not None:
            replaced[1].cancel()
        return future

    def set_loras(self, loras: list) -> Future:
        """Fuse these LoRAs (engine.api.LoraChoice) before the next frame; [] removes them.
        The Future holds the fused set with digests, or the EngineError of a bad file."""
        return self.run_between_frames("loras", lambda generator: generator.set_loras(loras))

    def set_decoder(self, folder: str | None) -> Future:
        """Decode frames with a fast decoder folder from the next frame on (None: the VAE)."""
        return self.run_between_frames("decoder", lambda generator: generator.set_decoder(folder))

    def render_full(self, request: GenerateRequest) -> Future:
        """The request drawn again with the model's full VAE decoding it (for saving a frame
        that a fast decoder drew): on a deterministic backend the same latents, so exactly
        the full VAE's frame."""
        return self.run_between_frames(
            "render-full", lambda generator: generator.generate(request, full_decoder=True)[0])

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Drop the pending request, let the running one finish, join the thread."""
        with self._lock:
            self._closed = True
            self._pending = None
            jobs, self._jobs = list(self._jobs.values()), {}
            self._wake.notify()
        for _, future in jobs:
            future.cancel()
        self._thread.join(timeout)

    def _take(self) -> tuple[GenerateRequest | None, ImageGenerator]:
        while True:
            self._run_jobs()
            with self._lock:
                while self._pending is None and not self._closed and not self._jobs:
                    self._wake.wait()
                if self._jobs and not self._closed:
                    continue  # settings first: the request then runs with them
                request, self._pending = self._pending, None
                if self._generator_changed:  # another model or backend: learn its costs anew
                    self.frame_cost, self._generator_changed = FrameCostEstimate(), False
                return request, self._generator

    def _run_jobs(self) -> bool:
        """Run the waiting between-frame jobs; True when there were any."""
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
            generator = self._generator
        for job, future in jobs:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job(generator))
            except BaseException as error:  # noqa: BLE001 - the caller's Future reports it
                future.set_exception(error)
        return bool(jobs)

    def _newer_waiting(self) -> bool:
        with self._lock:
            return self._pending is not None or self._closed

    def _quiet_for(self, seconds: float) -> bool:
        """Wait until a request arrives or `seconds` pass; True when none arrived."""
        with self._lock:
            self._wake.wait_for(lambda: self._pending is not None or self._closed, seconds)
            return self._pending is None and not self._closed

    def _run(self) -> None:
        while True:
            request, generator = self._take()
            if request is None:
                return
            preview = request.preview(bool(getattr(generator.backend, "conditioning_channels", 0)))
            learns = preview is not None  # a plain student frame: its timings predict others
            if learns and self._quick_enough(request):
                preview = None
            if preview is not None:
                first = self._execute(generator, preview, preview=True, asked=request)
                self._deliver(first)
                if first.ok:
                    self.frame_cost.update(first.timings, preview.steps, first_of_request=True)
                if not first.ok or not self._quiet_for(self.refine_delay_s):
                    continue  # failed, or still typing: the newer request goes first
            result = self._execute(generator, request,
                                   self._newer_waiting if preview is not None else None)
            if result is not None:
                self._deliver(result)
                if learns and result.ok:
                    self.frame_cost.update(result.timings, request.steps,
                                           first_of_request=preview is None)

    def _quick_enough(self, request: GenerateRequest) -> bool:
        """Whether the full frame is expected within the request's preview_above_ms."""
        expected = self.frame_cost.predict(request.steps)
        return request.preview_above_ms > 0 and expected is not None \
            and expected <= request.preview_above_ms

    def _deliver(self, result: GenerateResult) -> None:
        with self._lock:
            if self._closed:
                return
        try:
            self._on_result(result)
        except Exception:  # noqa: BLE001 - a broken callback must not kill the worker
            traceback.print_exc()

    def _execute(self, generator: ImageGenerator, request: GenerateRequest,
                 interrupt: Callable[[], bool] | None = None, preview: bool = False,
                 asked: GenerateRequest | None = None) -> GenerateResult | None:
        """The request's frame or failure (the result names `asked`, by default the request
        itself); None when interrupt() stopped it."""
        backend = getattr(generator, "backend", None)
        names = {"backend": getattr(backend, "name", ""), "device": getattr(backend, "device", ""),
                 "preview": preview, "request": asked or request,
                 "loras": tuple(getattr(generator, "loras", ())),
                 "decoder": str(getattr(generator, "decoder", ""))}
        try:
            if interrupt is None:
                image, timings = generator.generate(request)
            else:
                image, timings = generator.generate(request, interrupt)
            match = generator.drawn_as(request) if hasattr(generator, "drawn_as") else None
            return GenerateResult(request.request_id, image, timings,
                                  drawn_as=match.prompt if match else "", **names)
        except GenerationInterrupted:
            return None
        except EngineError as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - every failure becomes a failed result
            message = f"{type(error).__name__}: {error}"
        return GenerateResult(request.request_id, None, StageTimings(), message, **names)
