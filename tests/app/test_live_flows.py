"""The Live tab's state machines without Qt: a round of Variations and a Compare."""

from __future__ import annotations

import ast
from itertools import count
from pathlib import Path

import numpy as np

from app.compare_flow import NO_MODEL, REPLACED, CompareFlow
from app.variations import MAX_SEED, VariationRound
from engine.api import GenerateRequest, GenerateResult, StageTimings

APP_DIR = Path(__file__).resolve().parents[2] / "app"
IMAGE = np.zeros((4, 4, 3), dtype=np.uint8)


def result(request_id: int, total_ms: float = 0.0, error: str | None = None) -> GenerateResult:
    return GenerateResult(request_id, None if error else IMAGE, StageTimings(total_ms=total_ms),
                          error=error)


def test_the_flows_import_no_qt():
    for name in ("variations.py", "compare_flow.py"):
        tree = ast.parse((APP_DIR / name).read_text())
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        modules |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for alias in node.names}
        assert not any(module.startswith(("PySide6", "app.")) for module in modules), name


# -- Variations ------------------------------------------------------------------------------
def test_a_round_queues_full_frames_of_the_inputs_at_drawn_seeds():
    seeds = iter([11, 22, 33, 44])
    drawn = []

    def draw(low: int, high: int) -> int:
        drawn.append((low, high))
        return next(seeds)

    round_ = VariationRound(draw_seed=draw)
    base = GenerateRequest(prompt="owl", seed=5, steps=4, preview_steps=1)
    round_.start(base)
    requests = [round_.next_request() for _ in range(4)]
    assert [r.seed for r in requests] == [11, 22, 33, 44]
    assert all(r.prompt == "owl" and r.steps == 4 and r.preview_steps == 0 for r in requests)
    assert drawn == [(0, MAX_SEED)] * 4
    assert round_.next_request() is None


def test_a_round_claims_its_results_once_and_a_new_input_stops_it():
    round_ = VariationRound(count=3, draw_seed=lambda low, high: 7)
    round_.start(GenerateRequest(prompt="cat"))
    round_.next_request()
    round_.sent(12)
    round_.sent(None)  # the service took nothing: no id to wait for
    assert round_.take(12) and not round_.take(12) and not round_.take(13)
    round_.stop()
    assert round_.next_request() is None


# -- Compare ---------------------------------------------------------------------------------
def test_a_compare_draws_the_student_then_the_teacher_and_reports_the_speed_up():
    flow, ids = CompareFlow(), count(1)
    live = GenerateRequest(prompt="owl", seed=3, steps=2, preview_steps=1)
    update = flow.start(live)
    student = update.submit
    assert (student.prompt, student.seed, student.preview_steps, student.teacher_steps) == (
        "owl", 3, 0, 0)
    assert update.compare_enabled is False and update.summary == "Rendering the student…"
    flow.note_submitted(next(ids), student)
    assert flow.running

    update = flow.handle_result(result(1, total_ms=20.0), student, 25, 4.5)
    teacher = update.submit
    assert update.show == "student" and update.summary == "Rendering the teacher (25 steps)…"
    assert (teacher.teacher_steps, teacher.guidance, teacher.seed) == (25, 4.5, 3)
    assert flow.note_submitted(next(ids), teacher) is None

    update = flow.handle_result(result(2, total_ms=500.0), teacher, 25, 4.5)
    assert update.show == "teacher" and update.compare_enabled is True
    assert update.summary == "student 20 ms · teacher 500 ms (25 steps) · 25.0× faster"
    assert not flow.running and flow.pending is None


def test_a_foreign_request_or_no_model_abandons_the_compare():
    flow = CompareFlow()
    student = flow.start(GenerateRequest(prompt="owl")).submit
    flow.note_submitted(1, student)
    update = flow.note_submitted(2, GenerateRequest(prompt="owl, edited"))
    assert (update.summary, update.compare_enabled) == (REPLACED, True)
    assert not flow.running and flow.handle_result(result(1), student, 20, 4.0) is None

    student = flow.start(GenerateRequest(prompt="owl")).submit
    assert flow.note_submitted(None, student).summary == NO_MODEL
    assert flow.note_submitted(3, GenerateRequest(prompt="cat")) is None  # no compare now


def test_a_failed_frame_ends_the_compare_with_its_error():
    flow = CompareFlow()
    student = flow.start(GenerateRequest(prompt="owl")).submit
    flow.note_submitted(1, student)
    update = flow.handle_result(result(1, error="out of memory"), student, 20, 4.0)
    assert update.summary == "Student failed: out of memory" and update.submit is None
    assert update.compare_enabled is True and not flow.running

    student = flow.start(GenerateRequest(prompt="owl")).submit
    flow.note_submitted(2, student)
    teacher = flow.handle_result(result(2, total_ms=10.0), student, 20, 4.0).submit
    flow.note_submitted(3, teacher)
    update = flow.handle_result(result(3, error="boom"), teacher, 20, 4.0)
    assert (update.summary, update.show, update.compare_enabled) == ("Teacher failed: boom",
                                                                     None, True)
