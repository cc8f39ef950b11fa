"""Sketch conditioning in distillation: a share of each batch carries the sketch latent of its
caption, and the student, the critic and the teacher all see that same conditioning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.api import EngineError
from engine.distill.config import DistillConfig
from engine.distill.data import (
    has_sketches,
    load_real_images,
    resolve_sketch_fraction,
    sketched_count,
)

CAPTIONS = ["red heart", "rocket", "green apple", "smiling cat", "yellow star", "blue car"]



@pytest.fixture(scope="module")
def sketch_dataset(tmp_path_factory) -> Path:
    """A tiny emoji-format dataset: 32-px images, distinct line sketches, unique captions."""
    folder = tmp_path_factory.mktemp("emoji")
    rng = np.random.default_rng(0)
    count = len(CAPTIONS)
    np.save(folder / "images.npy", rng.integers(0, 255, (count, 32, 32, 3), dtype=np.uint8))
    np.save(folder / "sketches.npy", rng.integers(0, 255, (count, 32, 32), dtype=np.uint8))
    np.save(folder / "heldout.npy", np.zeros(count, dtype=bool))
    np.save(folder / "variant.npy", np.zeros(count, dtype=bool))
    (folder / "captions.json").write_text(json.dumps(CAPTIONS))
    (folder / "manifest.json").write_text(json.dumps({"count": count}))
    return folder


def sketch_config(teacher: Path, out: Path, data: Path, **overrides) -> DistillConfig:
    values = dict(teacher=str(teacher), out=str(out), real_data=str(data), method="dmd2",
                  steps=2, batch=2, lr=1e-3, warmup_steps=1, student_steps=2, critic_ratio=2,
                  gan_weight=1e-2, regression_weight=0.25, regression_pairs=2,
                  regression_ddim_steps=2,
                  regression_batch=1, sample_every=0, device="cpu", progress="none",
                  checkpoint_every=100)
    values.update(overrides)
    return DistillConfig(**values)


def new_trainer(config: DistillConfig):
    from accelerate.state import AcceleratorState

    from engine.distill.trainer import DistillTrainer

    AcceleratorState._reset_state(reset_partial_state=True)
    return DistillTrainer(config)


def spy_on_networks(trainer) -> dict[str, list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """(token_states, conditioning) of every student, critic and teacher call in train steps."""
    calls: dict[str, list] = {"student": [], "critic": [], "teacher": []}
    recording = {"on": False}
    for name in calls:
        def hook(module, args, kwargs, name=name):
            if recording["on"]:
                conditioning = args[4] if len(args) > 4 else kwargs.get("conditioning")
                calls[name].append((args[2].detach().clone(),
                                    None if conditioning is None else conditioning.clone()))
        getattr(trainer, name).register_forward_pre_hook(hook, with_kwargs=True)
    train_step = trainer.train_step

    def recorded_train_step(step: int):
        recording["on"] = True
        try:
            return train_step(step)
        finally:
            recording["on"] = False

    trainer.train_step = recorded_train_step
    return calls


def test_sketch_conditioning_reaches_student_critic_and_teacher(
        tiny_sketch_model_dir, sketch_dataset, tmp_path, one_thread):
    out = tmp_path / "straight"
    trainer = new_trainer(sketch_config(tiny_sketch_model_dir, out, sketch_dataset))
    assert trainer.sketch_fraction == 0.5  # the default when sketches are available
    calls = spy_on_networks(trainer)
    assert trainer.train() == 2
    saved = torch.load(out / "sketch_latents.pt", weights_only=True)
    sketches, captions = saved["latents"], saved["captions"]
    caption_states = trainer.encode(captions).token_states.cpu()

    def check_rows(token_states, conditioning) -> tuple[int, int]:
        """Every row is zeros or the sketch of its own caption; (zero rows, sketched rows)."""
        zero = sketched = 0
        for states, row in zip(token_states, conditioning, strict=True):
            if not row.any():
                zero += 1
                continue
            matches = [j for j in range(len(sketches)) if torch.equal(row.cpu(), sketches[j])]
            assert len(matches) == 1, "a conditioning row that is neither zeros nor a sketch"
            torch.testing.assert_close(states.cpu(), caption_states[matches[0]])
            sketched += 1
        return zero, sketched

    for name, records in calls.items():
        assert records, f"no {name} call was recorded"
        for token_states, conditioning in records:
            assert conditioning is not None and conditioning.shape[1] == 4, name
            if name == "teacher":  # CFG: [uncond | cond] with the same sketch in both halves
                uncond_half, conditioning = conditioning.chunk(2)
                assert torch.equal(uncond_half, conditioning)
                token_states = token_states.chunk(2)[1]
            zero, sketched = check_rows(token_states, conditioning)
            assert zero >= 1 and sketched >= 1, (name, zero, sketched)  # 0.5 of a batch of 2
    # The student's trained forward: 2 DM samples (1 sketched) + 1 text-only regression pair.
    token_states, conditioning = next(c for c in calls["student"] if len(c[1]) == 3)
    assert not conditioning[2].any() and check_rows(token_states, conditioning) == (2, 1)
    # GAN: the critic sees 2 student and 2 real samples, one of each with its own sketch.
    gan_calls = [c for c in calls["critic"] if len(c[1]) == 4]
    assert gan_calls and all(check_rows(*c) == (2, 2) for c in gan_calls)
    assert json.loads((out / "config.json").read_text())["sketch_fraction"] == 0.5
    assert (out / "student" / "unet").is_dir()

    # Exact resume with sketches: 1 + 1 steps give the weights of 2 straight steps (warm-up
    # 1, as the warm-up is clamped to --steps).
    resumed = tmp_path / "resumed"
    assert new_trainer(sketch_config(tiny_sketch_model_dir, resumed, sketch_dataset,
                                     steps=1)).train() == 1
    assert new_trainer(sketch_config(tiny_sketch_model_dir, resumed, sketch_dataset)).train() == 2
    for name in ("model.safetensors", "model_1.safetensors"):
        expected = load_file(out / "checkpoints" / "step-2" / name)
        actual = load_file(resumed / "checkpoints" / "step-2" / name)
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key


def test_sketch_fraction_defaults_and_errors(sketch_dataset, tmp_path):
    with_data = DistillConfig(teacher="some/teacher", real_data=str(sketch_dataset))
    assert resolve_sketch_fraction(with_data, 4, 4) == 0.5
    assert resolve_sketch_fraction(with_data, 0, 4) == 0.0  # no sketch channels
    assert resolve_sketch_fraction(DistillConfig(teacher="some/teacher"), 4, 4) == 0.0
    with_data.sketch_fraction = 0.0
    assert resolve_sketch_fraction(with_data, 4, 4) == 0.0
    with_data.sketch_fraction = 0.25
    assert resolve_sketch_fraction(with_data, 4, 4) == 0.25
    with pytest.raises(EngineError, match="sketch latent"):
        resolve_sketch_fraction(with_data, 0, 4)
    with pytest.raises(EngineError, match="needs sketches"):
        resolve_sketch_fraction(DistillConfig(teacher="t", sketch_fraction=0.5), 4, 4)
    with pytest.raises(EngineError, match="between 0 and 1"):
        DistillConfig(sketch_fraction=1.5).resolve()
    # Exact share over consecutive batches, also for a batch of 1.
    assert [sketched_count(0.5, 1, p) for p in range(4)] == [0, 1, 0, 1]
    assert [sketched_count(0.5, 2, p) for p in range(3)] == [1, 1, 1]
    assert sum(sketched_count(0.3, 16, p) for p in range(10)) == 48
    assert sketched_count(1.0, 4, 7) == 4 and sketched_count(0.0, 4, 7) == 0


def test_image_folder_sketches_pair_by_file_name(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    (tmp_path / "sketches").mkdir()
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            tmp_path / f"image{index}.png")
        (tmp_path / f"image{index}.txt").write_text(f"caption {index}")
    Image.fromarray(np.zeros((24, 24), dtype=np.uint8)).save(tmp_path / "sketches" / "image1.png")
    assert has_sketches(tmp_path)
    data = load_real_images(tmp_path)
    assert data.captions == ["caption 0", "caption 1", "caption 2"]
    assert data.has_sketch.tolist() == [False, True, False]
    assert data.sketches.shape == (3, 16, 16, 3)
    assert (data.sketches[1] == 0).all() and (data.sketches[0] == 255).all()


def test_sample_grids_add_a_sketch_row_when_the_run_has_sketches(
        tiny_sketch_model_dir, sketch_dataset, tmp_path, one_thread):
    from PIL import Image

    def grid_heights(out: Path, **overrides) -> tuple[int, int]:
        config = sketch_config(tiny_sketch_model_dir, out, sketch_dataset, steps=1,
                               sample_every=1, student_steps=1, gan_weight=0.0, **overrides)
        assert new_trainer(config).train() == 1
        with Image.open(out / "samples" / "step-1.png") as grid, \
                Image.open(out / "samples" / "teacher.png") as teacher:
            return grid.height, teacher.height

    # 8 fixed prompts in one row at 32 px (2-px gutter), plus a row of 8 (caption, sketch)
    assert grid_heights(tmp_path / "sketched") == (2 * 34 - 2, 2 * 34 - 2)
    assert grid_heights(tmp_path / "text", sketch_fraction=0.0) == (32, 32)
