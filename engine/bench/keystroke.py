"""Keystroke-to-frame latency through GenerationService while a prompt is typed."""

from __future__ import annotations

import threading
import time

from engine.api import EngineError, GenerateRequest, GenerateResult
from engine.bench.timing import percentile

PROMPT = "a red apple on a wooden table at sunrise"  # 40 characters, one per keystroke


def type_prompt(generator, prompt: str = PROMPT, rate: float | None = 20.0,
                timeout: float = 60.0, steps: int = 1, preview_steps: int = 0,
                preview_above_ms: float = 0.0) -> dict:
    """Submit every prefix of prompt (rate keystrokes/s, None: as fast as possible), each
    a request for a frame of `steps` student steps, shown first at `preview_steps` (0: no
    preview) unless the full frame is expected within `preview_above_ms`, as the live tab
    does.

    Returns each answered keystroke's latency (ms) from the key to its request's first frame,
    the settle time from the last key to its full-step frame, and delivery counts.
    """
    from engine.service import GenerationService

    submitted: dict[int, float] = {}
    first_frame: dict[int, float] = {}  # request id -> arrival of its first frame
    final_frame: dict[int, float] = {}  # request id -> arrival of its full-step frame
    errors: list[str] = []
    frames = previews = 0
    arrived = threading.Event()

    def on_result(result: GenerateResult) -> None:
        nonlocal frames, previews
        now = time.perf_counter()
        if result.ok:
            frames += 1
            previews += result.preview
            first_frame.setdefault(result.request_id, now)
        else:
            errors.append(result.error or "unknown error")
        if not result.preview:
            final_frame[result.request_id] = now
        arrived.set()

    generator.clear_caches()  # every prefix is a new prompt, as when typing
    service = GenerationService(generator, on_result)
    start = time.perf_counter()
    try:
        for index in range(1, len(prompt) + 1):
            if rate:
                delay = start + (index - 1) / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            pressed = time.perf_counter()
            request_id = service.submit(GenerateRequest(prompt=prompt[:index], seed=0,
                                                        steps=steps,
                                                        preview_steps=preview_steps,
                                                        preview_above_ms=preview_above_ms))
            submitted[request_id] = pressed
        deadline = time.perf_counter() + timeout
        while request_id not in final_frame:
            if time.perf_counter() > deadline:
                raise EngineError(f"The last keystroke's frame did not arrive in {timeout:.0f} s.")
            arrived.wait(0.01)
            arrived.clear()
        elapsed = time.perf_counter() - start
    finally:
        service.close()
    if errors:
        raise EngineError(f"Generation failed during the keystroke benchmark: {errors[0]}")
    latencies = [(at - submitted[request_id]) * 1e3 for request_id, at in first_frame.items()]
    return {"keystrokes": len(submitted), "frames_delivered": frames,
            "previews_delivered": previews,
            "requests_dropped": len(submitted) - len(first_frame),
            "settle_ms": (final_frame[request_id] - submitted[request_id]) * 1e3,
            "latencies_ms": latencies, "seconds": elapsed}


def keystroke_stats(generator, sessions: int, rate: float | None, steps: int = 1,
                    preview_steps: int = 0, preview_above_ms: float = 0.0) -> dict:
    """Pool several typing sessions: p50/p95 latency to a key's first frame, the median
    settle time (last key to its full-step frame), frames shown, requests never run."""
    latencies: list[float] = []
    settles: list[float] = []
    totals = {"keystrokes": 0, "frames_delivered": 0, "previews_delivered": 0,
              "requests_dropped": 0, "seconds": 0.0}
    for _ in range(max(1, sessions)):
        session = type_prompt(generator, rate=rate, steps=steps, preview_steps=preview_steps,
                              preview_above_ms=preview_above_ms)
        latencies += session["latencies_ms"]
        settles.append(session["settle_ms"])
        for key in totals:
            totals[key] += session[key]
    return {
        "rate_keys_per_s": rate or "max",
        "sessions": max(1, sessions),
        "p50_ms": percentile(latencies, 0.5),
        "p95_ms": percentile(latencies, 0.95),
        "max_ms": max(latencies, default=0.0),
        "settle_ms": percentile(settles, 0.5),
        "keystrokes": totals["keystrokes"],
        "frames_delivered": totals["frames_delivered"],
        "previews_delivered": totals["previews_delivered"],
        "requests_dropped": totals["requests_dropped"],
        "delivered_fps": totals["frames_delivered"] / totals["seconds"] if totals["seconds"]
        else 0.0,
    }
