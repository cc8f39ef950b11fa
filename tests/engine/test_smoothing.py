"""`python -m engine smoothing`: the one-step blur is chosen on training captions only, by the
lowest fd of real one-step frames, and written into student.json without touching the rest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from engine.__main__ import main
from engine.cli.smoothing import parse_sigmas, training_ids, write_smoothing
from engine.embedded.dataset import write_dataset
from engine.eval.evaluator import EvaluatorConfig, save_evaluator, train_evaluator

SMALL = EvaluatorConfig(widths=(8, 16), feature_dim=16, embed_dim=16, image_size=32)


def test_training_ids_skip_the_heldout_split_and_spread_evenly():
    heldout = np.zeros(100, bool)
    heldout[::10] = True
    ids = training_ids(heldout, 9)
    assert len(ids) == 9 and not heldout[ids].any()
    assert ids == sorted(ids) and ids[0] == 1 and ids[-1] == 99
    assert training_ids(heldout, 1000) == list(np.flatnonzero(~heldout))
    assert training_ids(np.ones(5, bool), 3) == []


def test_write_smoothing_keeps_the_rest_of_student_json(tmp_path):
    (tmp_path / "student.json").write_text(json.dumps({"timesteps": [999, 299], "teacher": "t"}))
    write_smoothing(tmp_path, 0.6)
    assert json.loads((tmp_path / "student.json").read_text()) == {
        "timesteps": [999, 299], "teacher": "t", "one_step_smoothing": 0.6}
    assert [path.name for path in tmp_path.iterdir()] == ["student.json"]


@pytest.mark.parametrize("text", ["a,b", "0,-0.5", "nan", "0,inf"])
def test_bad_sigmas_are_refused(text):
    from engine.api import EngineError

    with pytest.raises(EngineError, match="--sigmas"):
        parse_sigmas(text)


def emoji_like_dataset(folder, count: int = 12):
    """Coloured squares on white with colour-name captions; every third one held out."""
    rng = np.random.default_rng(0)
    images = np.full((count, 32, 32, 3), 255, np.uint8)
    for index in range(count):
        images[index, 8:24, 8:24] = rng.integers(0, 255, 3)
    heldout = np.arange(count) % 3 == 0
    captions = [f"square {index}" for index in range(count)]
    write_dataset(folder, {"images": images, "sketches": images[..., 0], "heldout": heldout,
                           "variant": np.zeros(count, bool)}, captions, {"count": count})
    return images, heldout


def test_smoothing_command_scores_training_captions_and_writes_the_best(
        tiny_student_dir, tmp_path, capsys, monkeypatch, one_thread):
    import engine.embedded.latents as latents

    images, heldout = emoji_like_dataset(tmp_path / "data")
    model, _ = train_evaluator(images, torch.randn(len(images), 384), steps=2, batch=6,
                               config=SMALL)
    save_evaluator(model, tmp_path / "ev")
    student = tmp_path / "student"
    shutil.copytree(tiny_student_dir, student)
    before = json.loads((student / "student.json").read_text())
    encoded = []
    real_encode = latents.encode_captions

    def spy(text_encoder, captions, *rest, **kwargs):
        encoded.extend(captions)
        return real_encode(text_encoder, captions, *rest, **kwargs)

    monkeypatch.setattr(latents, "encode_captions", spy)
    code = main(["smoothing", "--student", str(student), "--data", str(tmp_path / "data"),
                 "--evaluator", str(tmp_path / "ev"), "--sigmas", "0,3", "--count", "5",
                 "--backend", "torch", "--write"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines[:2]]
    assert [row["sigma"] for row in rows] == [0, 3]
    assert rows[0]["fd"] != rows[1]["fd"]  # the blur changes the one-step frames
    best = min(rows, key=lambda row: row["fd"])["sigma"]
    assert lines[2] == f"lowest fd on 5 training captions: sigma {float(best)}"
    held_captions = {f"square {index}" for index in np.flatnonzero(heldout)}
    assert len(encoded) == 5 and not held_captions & set(encoded)
    after = json.loads((student / "student.json").read_text())
    assert after == {**before, "one_step_smoothing": best}


def test_smoothing_command_needs_a_student(tiny_model_dir, capsys):
    assert main(["smoothing", "--student", str(tiny_model_dir)]) == 2
    assert "student.json" in capsys.readouterr().err
