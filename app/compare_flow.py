"""Compare: the same request through the student, then through the N-step teacher, on the
live service, with their timings. No Qt: ComparePanel shows what each step returns.

A live edit in between supersedes the pending request (latest wins), so the compare is
abandoned with a note rather than queued.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.api import GenerateRequest, GenerateResult

NO_MODEL = "No model is loaded; load one in the Engine tab."
REPLACED = "A new edit replaced the compare; press Compare again."


@dataclass(frozen=True)
class CompareUpdate:
    """What the panel does after a step: show the result's image, set the summary line,
    enable or disable Compare, submit the next request (in that order)."""

    show: str | None = None  # "student" or "teacher": the result's image goes there
    summary: str | None = None
    compare_enabled: bool | None = None
    submit: GenerateRequest | None = None


class CompareFlow:
    """Student request, its result, teacher request, its result; abandoned on a foreign one."""

    def __init__(self):
        self.pending: GenerateRequest | None = None  # the student request being compared
        self.student_id: int | None = None
        self.teacher_id: int | None = None
        self.student_ms = 0.0

    @property
    def running(self) -> bool:
        return self.student_id is not None or self.teacher_id is not None

    def start(self, request: GenerateRequest) -> CompareUpdate:
        """Begin a compare for this request, drawn by the student at its full step count."""
        self.pending = dataclasses.replace(request, teacher_steps=0, preview_steps=0)
        self.student_id = self.teacher_id = None
        return CompareUpdate(summary="Rendering the student…", compare_enabled=False,
                             submit=self.pending)

    def note_submitted(self, request_id: int | None,
                       request: GenerateRequest) -> CompareUpdate | None:
        """Every submit of the tab: remember our ids, abandon on a foreign request."""
        if self.pending is None:
            return None
        if request_id is None:
            return self.abandon(NO_MODEL)
        if request.teacher_steps:
            self.teacher_id = request_id
        elif request is self.pending:
            self.student_id = request_id
        else:
            return self.abandon(REPLACED)
        return None

    def handle_result(self, result: GenerateResult, request: GenerateRequest,
                      teacher_steps: int, guidance: float) -> CompareUpdate | None:
        """The student's result asks for the teacher's frame; the teacher's ends the compare
        with both timings and the speed-up. Other results are not ours (None)."""
        if result.request_id == self.student_id:
            self.student_id = None
            if not result.ok:
                return self.abandon(f"Student failed: {result.error}")
            self.student_ms = result.timings.total_ms
            teacher = dataclasses.replace(self.pending, teacher_steps=teacher_steps,
                                          guidance=float(guidance))
            return CompareUpdate(show="student", submit=teacher,
                                 summary=f"Rendering the teacher ({teacher_steps} steps)…")
        if result.request_id == self.teacher_id:
            self.teacher_id = None
            self.pending = None
            if not result.ok:
                return CompareUpdate(summary=f"Teacher failed: {result.error}",
                                     compare_enabled=True)
            teacher_ms = result.timings.total_ms
            speed_up = teacher_ms / self.student_ms if self.student_ms > 0 else float("nan")
            return CompareUpdate(
                show="teacher", compare_enabled=True,
                summary=f"student {self.student_ms:.0f} ms · teacher {teacher_ms:.0f} ms "
                        f"({request.teacher_steps} steps) · {speed_up:.1f}× faster")
        return None

    def abandon(self, note: str) -> CompareUpdate:
        self.pending = None
        self.student_id = self.teacher_id = None
        return CompareUpdate(summary=note, compare_enabled=True)
