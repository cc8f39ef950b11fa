"""The live tab's meter line: per-stage milliseconds, the rate a frame's cost allows, and
the rate frames are being shown at."""

from __future__ import annotations

import time
from collections import deque

from engine.api import GenerateResult


class FrameRate:
    """Frames shown per second over the last `window_s` seconds (None with fewer than two)."""

    def __init__(self, window_s: float = 1.0, clock=time.monotonic):
        self.window_s, self.clock = window_s, clock
        self.arrivals: deque[float] = deque()

    def frame_shown(self) -> float | None:
        """Record a frame now; the rate of the frames shown within the window, itself
        included."""
        now = self.clock()
        self.arrivals.append(now)
        while now - self.arrivals[0] > self.window_s:
            self.arrivals.popleft()
        if len(self.arrivals) < 2 or now == self.arrivals[0]:
            return None
        return (len(self.arrivals) - 1) / (now - self.arrivals[0])


def format_meter(result: GenerateResult, shown_fps: float | None = None) -> str:
    """Per-stage milliseconds, the frame rate this frame's cost allows, the rate frames are
    being shown at (while they stream), backend and device, on one line."""
    timings = result.timings
    stages = ["preview"] if result.preview else []
    stages.append(f"text {timings.text_ms:.1f}")
    if timings.encode_ms >= 0.05:
        stages.append(f"encode {timings.encode_ms:.1f}")
    stages += [f"unet {timings.unet_ms:.1f}", f"decode {timings.decode_ms:.1f}"]
    fps = 1000.0 / timings.total_ms if timings.total_ms > 0 else 0.0
    where = "/".join(part for part in (result.backend, result.device) if part) or "?"
    size = f"{result.image.shape[1]}×{result.image.shape[0]} px" if result.image is not None \
        else ""
    shown = f"  |  shown {shown_fps:.1f} FPS" if shown_fps is not None else ""
    drawn = f"  |  drawn as “{result.drawn_as}”" if result.drawn_as else ""
    return (f"{' · '.join(stages)} ms  |  total {timings.total_ms:.1f} ms ({fps:.0f} FPS max)"
            f"{shown}  |  {where}  |  {size}{drawn}")
