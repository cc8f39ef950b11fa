"""Runs the live-path benchmark for one backend, or for each backend in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from engine.api import ONNX_BACKENDS, EngineError, ModelOptions
from engine.bench.keystroke import PROMPT, keystroke_stats
from engine.bench.stages import find_teacher, stage_ms, student_vs_teacher
from engine.bench.timing import machine_info, peak_rss_mb
from engine.service import DIRECT_FRAME_MS

KEYSTROKE_RATE = 20.0  # keys per second, a fast typist


def load_backend(model: str, backend: str, device: str, threads: int | None,
                 options: ModelOptions | None = None):
    """create_backend with an explicit thread count; returns (backend, threads in use)."""
    import torch

    from engine.runtime import create_backend

    if threads and backend not in ONNX_BACKENDS:
        torch.set_num_threads(threads)
    runtime = create_backend(model, backend, device, onnx_threads=threads, options=options)
    return runtime, getattr(runtime, "threads", None) or torch.get_num_threads()


def bench_backend(model: str, backend: str = "onnx", device: str = "auto", repeats: int = 10,
                  threads: int | None = None, label: str = "", steps: int | None = None,
                  preview_steps: int | None = None,
                  preview_above_ms: float = DIRECT_FRAME_MS,
                  options: ModelOptions | None = None) -> dict:
    """Every figure of docs/benchmarks.md for one backend, as one flat JSON-ready dict; the
    typed frames use `steps` student steps (None: the count the student was distilled for),
    previewed at `preview_steps` (None: 1 for multi-step frames) unless expected within
    `preview_above_ms` (0: always), as the live tab does."""
    from engine.bench.stages import TeacherView
    from engine.pipeline.generator import Generator

    start = time.perf_counter()
    runtime, threads_used = load_backend(model, backend, device, threads, options)
    runtime.warm_up()
    load_s = time.perf_counter() - start
    generator = Generator(runtime)
    teacher_dir = find_teacher(runtime.student_config, Path(runtime.model_dir))
    if teacher_dir is not None:
        teacher_runtime, _ = load_backend(str(teacher_dir), backend, device, threads)
        teacher_runtime.warm_up()
        teacher_generator = Generator(TeacherView(teacher_runtime))
        teacher_label = f"teacher folder {teacher_dir}"
    else:
        teacher_generator = Generator(TeacherView(runtime))
        teacher_label = "same UNet run as teacher (no loadable teacher folder)"
    sessions = max(1, min(repeats // 2, 3))  # typing sessions and teacher runs
    result = {
        "backend": runtime.name, "device": runtime.device, "threads": threads_used,
        "model": str(runtime.model_dir), "label": label,
        "image_size": runtime.image_size, "latent_size": runtime.latent_size,
        "repeats": repeats, "load_s": load_s,
    }
    result.update(stage_ms(runtime, repeats))
    result.update(student_vs_teacher(generator, teacher_generator, repeats, sessions))
    result["teacher_label"] = teacher_label
    steps = steps or generator.default_steps
    preview_steps = (1 if steps > 1 else 0) if preview_steps is None else preview_steps
    paced = keystroke_stats(generator, sessions, KEYSTROKE_RATE, steps, preview_steps,
                            preview_above_ms)
    burst = keystroke_stats(generator, sessions, None, steps, preview_steps, preview_above_ms)
    result.update({
        "keystroke_steps": steps,
        "keystroke_preview_steps": preview_steps,
        "keystroke_preview_above_ms": preview_above_ms,
        "keystroke_settle_ms": paced["settle_ms"],
        "keystroke_p50_ms": paced["p50_ms"], "keystroke_p95_ms": paced["p95_ms"],
        "keystroke_burst_p50_ms": burst["p50_ms"], "keystroke_burst_p95_ms": burst["p95_ms"],
        "keystroke": {"prompt_chars": len(PROMPT), "paced": paced, "burst": burst},
        "peak_rss_mb": peak_rss_mb(),
        "machine": machine_info(),
    })
    return result


def bench_in_subprocess(model: str, backend: str, device: str, repeats: int,
                        threads: int | None, label: str, steps: int | None,
                        preview_steps: int | None, preview_above_ms: float,
                        options: ModelOptions | None = None) -> dict:
    """One backend in a fresh interpreter, so that peak_rss_mb is that backend's alone."""
    command = [sys.executable, "-m", "engine", "bench", "--model", model, "--backend", backend,
               "--device", device, "--repeats", str(repeats), "--json",
               "--preview-above-ms", str(preview_above_ms)]
    if threads:
        command += ["--threads", str(threads)]
    if label:
        command += ["--label", label]
    if steps:
        command += ["--steps", str(steps)]
    if preview_steps is not None:
        command += ["--preview-steps", str(preview_steps)]
    if options is not None:
        command += options.cli_flags()
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        lines = (completed.stderr.strip() or "no output").splitlines()
        raise EngineError(f"The {backend} benchmark failed: {lines[-1]}")
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])["results"][0]


def bench(model: str, backends: list[str], device: str = "auto", repeats: int = 10,
          threads: int | None = None, label: str = "", steps: int | None = None,
          preview_steps: int | None = None, preview_above_ms: float = DIRECT_FRAME_MS,
          options: ModelOptions | None = None) -> dict:
    """The report: the fastest backend's keys at the top level, every backend under results;
    options: how the model loads (engine.api.ModelOptions)."""
    if len(backends) == 1:
        results = [bench_backend(model, backends[0], device, repeats, threads, label, steps,
                                 preview_steps, preview_above_ms, options)]
    else:
        results = [bench_in_subprocess(model, name, device, repeats, threads, label, steps,
                                       preview_steps, preview_above_ms, options)
                   for name in backends]
    best = min(results, key=lambda item: item["keystroke_p50_ms"])
    summary = {key: value for key, value in best.items() if key != "keystroke"}
    return {**summary, "date": time.strftime("%Y-%m-%d"), "results": results}
