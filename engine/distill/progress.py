"""Progress events of a distillation run: JSON lines on stdout (the GUI), a tqdm bar, or none.

JSON events, one object a line:
    {"event": "stage", "name": ..., "step": i, "total": n}
    {"event": "progress", "step": i, "total": n, "losses": {...}, "lr": x, "it_s": x, "eta_s": x}
    {"event": "sample", "step": i, "path": ...}
    {"event": "checkpoint", "step": i, "path": ..., "student": ...}
    {"event": "done", "step": i, "total": n, "student": ..., "stopped": bool}
    {"event": "error", "message": ...}
"""

from __future__ import annotations

import json
import math
import sys


def finite(value: float) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    return float(value) if math.isfinite(value) else None


class ProgressReporter:
    """Emits run events; only the main process reports (enabled=False on other ranks)."""

    def __init__(self, mode: str = "bar", enabled: bool = True, stream=None):
        self.mode = mode if enabled else "none"
        self.stream = stream or sys.stdout
        self.bar = None
        self.stage_bar = None
        self.stage_name = ""

    def emit(self, event: str, **fields) -> None:
        if self.mode == "json":
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()

    # -- events ------------------------------------------------------------------------------
    def stage(self, name: str, step: int, total: int) -> None:
        """A preparation stage (loading, making regression pairs, encoding real images)."""
        self.emit("stage", name=name, step=step, total=total)
        if self.mode == "bar":
            from tqdm import tqdm

            if self.stage_bar is None or self.stage_name != name:
                self.close_stage()
                self.stage_bar = tqdm(total=total, desc=name, unit="it", file=sys.stderr)
                self.stage_name = name
            self.stage_bar.n = step
            self.stage_bar.refresh()
            if step >= total:
                self.close_stage()

    def progress(self, step: int, total: int, losses: dict[str, float], lr: float,
                 it_s: float, eta_s: float) -> None:
        losses = {name: finite(value) for name, value in losses.items()}
        self.emit("progress", step=step, total=total, losses=losses, lr=lr,
                  it_s=finite(it_s), eta_s=finite(eta_s))
        if self.mode == "bar":
            from tqdm import tqdm

            self.close_stage()
            if self.bar is None:
                self.bar = tqdm(total=total, desc="distill", unit="step", file=sys.stderr)
            self.bar.n = step
            shown = {k: f"{v:.4g}" for k, v in losses.items() if v is not None}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.refresh()

    def sample(self, step: int, path: str) -> None:
        self.emit("sample", step=step, path=path)

    def checkpoint(self, step: int, path: str, student: str) -> None:
        self.emit("checkpoint", step=step, path=path, student=student)

    def done(self, step: int, total: int, student: str, stopped: bool) -> None:
        self.close()
        self.emit("done", step=step, total=total, student=student, stopped=stopped)

    def error(self, message: str) -> None:
        self.close()
        self.emit("error", message=message)

    # -- bars --------------------------------------------------------------------------------
    def close_stage(self) -> None:
        if self.stage_bar is not None:
            self.stage_bar.close()
            self.stage_bar = None

    def close(self) -> None:
        self.close_stage()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
