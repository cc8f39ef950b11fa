"""scripts/demo_gif.py: one real frame per keystroke and per piece of sketch, in a looping GIF."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_gif.py"


def load_script():
    spec = importlib.util.spec_from_file_location("demo_gif", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gif_shows_each_keystroke_then_the_sketch_growing(tiny_sketch_model_dir, tmp_path,
                                                              one_thread):
    script = load_script()
    out = tmp_path / "demo.gif"
    assert script.main(["--out", str(out), "--model", str(tiny_sketch_model_dir),
                        "--backend", "torch", "--prompt", "cat", "--sketch-prompt", "dog",
                        "--size", "64"]) == 0
    sketches = script.sketch_steps(64, width=2)
    assert len(sketches) > 6 and (sketches[0] < 255).any()
    assert all((sketches[i + 1] <= sketches[i]).all() for i in range(len(sketches) - 1))
    with Image.open(out) as gif:
        assert gif.n_frames == 3 + len(sketches) and gif.info["loop"] == 0
        durations = []
        frames = []
        for index in range(gif.n_frames):
            gif.seek(index)
            durations.append(gif.info["duration"])
            frames.append(np.asarray(gif.convert("RGB")))
    assert durations[2] == script.HOLD_MS and durations[-1] == script.HOLD_MS
    assert durations[0] == script.KEY_MS and durations[3] == script.STROKE_MS
    left = slice(4, 68), slice(4, 68)  # the sketch panel: white while typing, then strokes
    assert (frames[0][left] > 240).all() and (frames[-1][left] < 100).any()


def test_a_model_without_sketch_channels_gets_the_typing_part_only(tiny_student_dir, tmp_path,
                                                                    one_thread):
    script = load_script()
    out = tmp_path / "demo.gif"
    assert script.main(["--out", str(out), "--model", str(tiny_student_dir), "--backend",
                        "torch", "--prompt", "ab", "--size", "32"]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == 2
