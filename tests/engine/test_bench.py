"""The bench command: documented JSON keys, helpers, teacher lookup, the SD-1.5 CPU guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.api import EngineError, StageTimings
from engine.bench.timing import median_ms, peak_rss_mb, percentile
from engine.service import DIRECT_FRAME_MS

ROOT = Path(__file__).resolve().parents[2]
NUMBER_KEYS = ("threads", "keystroke_p50_ms", "keystroke_p95_ms", "student_ms", "teacher_ms",
               "speedup_vs_teacher", "peak_rss_mb", "text_ms", "unet_ms", "decode_ms",
               "student_2step_ms", "student_4step_ms", "speedup_2step_vs_teacher",
               "keystroke_burst_p50_ms", "keystroke_burst_p95_ms",
               "encode_image_ms", "load_s", "image_size", "latent_size", "keystroke_steps",
               "keystroke_settle_ms")


def test_bench_json_has_every_documented_key(tiny_student_dir, tmp_path):
    model = tmp_path / "student"
    import shutil

    shutil.copytree(tiny_student_dir, model)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    completed = subprocess.run(
        [sys.executable, "-m", "engine", "bench", "--model", str(model), "--json",
         "--repeats", "2"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert [r["backend"] for r in report["results"]] == ["torch", "onnx", "onnx-int8"]
    for item in (report, *report["results"]):
        assert item["backend"] in ("torch", "onnx", "onnx-int8") and item["device"]
        for key in NUMBER_KEYS:
            assert isinstance(item[key], (int, float)) and item[key] > 0, key
        assert "same UNet" in item["teacher_label"]
        assert item["keystroke_preview_steps"] == 0  # a one-step student has no preview
        assert item["keystroke_preview_above_ms"] == DIRECT_FRAME_MS  # the live tab's Auto
        assert item["machine"]["cpu"] and item["machine"]["cpu_sgemm_gflops"] > 0
    for item in report["results"]:
        paced = item["keystroke"]["paced"]
        assert paced["keystrokes"] == 40 * paced["sessions"]
        assert paced["frames_delivered"] + paced["requests_dropped"] == paced["keystrokes"]
        assert paced["frames_delivered"] > 0
        assert paced["previews_delivered"] == 0


def test_percentile_and_median():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(np.percentile(values, 50))
    assert percentile(values, 0.95) == pytest.approx(np.percentile(values, 95))
    assert percentile([], 0.5) == 0.0
    assert median_ms(lambda: time.sleep(0.002), 3) >= 2.0
    assert peak_rss_mb() > 10


class FakeBackend:
    name, device = "fake", "cpu"


class FakeGenerator:
    """Takes 5 ms a step plus 15 ms, like a real model; the bench needs generate and
    clear_caches."""

    def __init__(self):
        self.backend = FakeBackend()
        self.steps_seen: set[int] = set()

    def clear_caches(self):
        pass

    def generate(self, request, interrupt=None):
        self.steps_seen.add(request.steps)
        time.sleep(0.005 * request.steps + 0.015)
        return np.zeros((8, 8, 3), np.uint8), StageTimings()


def test_keystroke_burst_drops_stale_requests(no_thread_leak):
    from engine.bench.keystroke import keystroke_stats

    generator = FakeGenerator()
    stats = keystroke_stats(generator, sessions=1, rate=None, steps=4)
    assert stats["keystrokes"] == 40 and stats["frames_delivered"] >= 1
    assert stats["requests_dropped"] >= 35  # 40 keys at once: nearly all superseded
    assert 20 <= stats["p50_ms"] < 1000
    assert generator.steps_seen == {4}  # every typed frame asked for the given steps


def test_keystrokes_with_a_preview_answer_at_one_step_and_settle_at_four(no_thread_leak):
    from engine.bench.keystroke import keystroke_stats

    generator = FakeGenerator()
    stats = keystroke_stats(generator, sessions=1, rate=50.0, steps=4, preview_steps=1)
    assert generator.steps_seen == {1, 4}
    # Keys 20 ms apart and 20 ms previews: most keys get a frame, every one a preview.
    assert stats["frames_delivered"] >= 20
    assert 20 <= stats["p50_ms"] < 150
    # The last key's full frame comes after its preview, the 100 ms pause and 35 ms of work.
    assert stats["settle_ms"] >= 20 + 100 + 35


def test_find_teacher_only_takes_local_folders(tiny_model_dir, tmp_path):
    from engine.bench.stages import find_teacher

    assert find_teacher({"teacher": str(tiny_model_dir)}, tmp_path) == tiny_model_dir
    assert find_teacher({"teacher": "someone/hub-model"}, tmp_path) is None
    assert find_teacher({"teacher": "tiny"}, tmp_path) is None
    assert find_teacher({}, tmp_path) is None


def test_sd15_on_cpu_is_refused_without_force(capsys):
    from engine.__main__ import main

    assert main(["bench", "--arch", "sd15", "--device", "cpu"]) == 2
    assert "needs CUDA" in capsys.readouterr().err


def test_tiny_sd_arch_runs_every_cpu_variant():
    from engine.bench.gpu import bench_arch
    from engine.bench.report import gpu_report

    report = bench_arch("tiny-sd", "cpu", repeats=1, backends=("torch", "onnx"))
    names = [v["variant"] for v in report["variants"]]
    assert names == ["torch eager", "onnxruntime CPUExecutionProvider"]
    assert all(v["fps"] > 0 for v in report["variants"]), report["variants"]
    assert "frames/s" in gpu_report(report)


def test_no_model_gives_a_clear_error(monkeypatch):
    from engine.cli import bench

    monkeypatch.setattr("engine.runtime.loading.default_model", lambda: None)
    args = bench_args(model=None)
    with pytest.raises(EngineError, match="--model"):
        bench.run(args)


def bench_args(**overrides):
    import argparse

    defaults = {"model": None, "backend": "onnx", "device": "cpu", "repeats": 1, "threads": None,
                "json": True, "label": "", "arch": None, "compile": "none", "force": False,
                "interleave": False, "preview_above_ms": DIRECT_FRAME_MS}
    return argparse.Namespace(**{**defaults, **overrides})


@pytest.mark.parametrize("text_inside", [False, True])
@pytest.mark.parametrize(("arch", "size"), [("tiny-sd", None), ("tiny-sdxl", 64)])
def test_the_graph_frame_draws_what_the_generator_draws(tmp_path, arch, size, text_inside):
    """The frame captured in CUDA graphs (the text encoders, SDXL's two included, inside it
    or their states copied in), run eagerly on the CPU: the same image as the engine's
    one-step path for the same noise, and set_prompt switches prompts in place."""
    import torch

    from engine.api import ModelOptions
    from engine.bench.gpu import build_arch_folder, static_frame
    from engine.pipeline.generator import Generator
    from engine.runtime.torch_backend import TorchBackend

    options = ModelOptions(size=size) if size else None
    backend = TorchBackend.load(str(build_arch_folder(arch, tmp_path / "tiny")), "cpu",
                                options=options)
    generator = Generator(backend)
    x_t = generator.noise_source(3)((1, backend.latent_channels, backend.latent_size,
                                     backend.latent_size))

    def expected(prompt):
        x0 = generator.x0_function(generator.encode_prompt(prompt), None)(x_t, 999)
        return backend.decode(x0)

    frame, set_prompt = static_frame(backend, "red apple", x_t, text_inside)
    with torch.inference_mode():
        first = frame()
        set_prompt("blue car")
        second = frame()
    assert torch.allclose(first, expected("red apple"), atol=1e-5)
    assert torch.allclose(second, expected("blue car"), atol=1e-5)
    assert (first - second).abs().max() > 1e-3


def test_interleaved_bench_alternates_backends_and_keeps_their_thread_settings(
        tiny_student_dir, tmp_path):
    import shutil

    import torch

    from engine.bench.interleave import CASES, interleaved_bench, interleaved_report

    model = shutil.copytree(tiny_student_dir, tmp_path / "student")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        report = interleaved_bench(str(model), ["torch", "onnx", "onnx-int8"], "cpu", rounds=3)
    finally:
        torch.set_num_threads(before)
    assert report["backends"] == ["torch", "onnx", "onnx-int8"]
    assert report["torch_threads"] == {"torch": 2, "onnx": 1, "onnx-int8": 1}
    for name in report["backends"]:
        assert set(report["ms"][name]) == set(CASES)
        assert all(value > 0 for value in report["ms"][name].values())
    assert all(ratio == 1.0 for ratio in report["ratio_to_first"]["torch"].values())
    assert report["ratio_to_first"]["onnx"]["unet_ms"] == pytest.approx(
        report["ms"]["onnx"]["unet_ms"] / report["ms"]["torch"]["unet_ms"])
    assert "onnx-int8" in interleaved_report(report)


def test_interleave_needs_every_backend(capsys):
    from engine.__main__ import main

    assert main(["bench", "--interleave", "--backend", "onnx"]) == 2
    assert "--backend all" in capsys.readouterr().err
