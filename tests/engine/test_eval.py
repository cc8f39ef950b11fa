"""Evaluator: Frechet distance, alignment/top-5, contrastive training, the eval CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.__main__ import main
from engine.embedded.dataset import write_dataset
from engine.eval.evaluator import EvaluatorConfig, load_evaluator, save_evaluator, train_evaluator
from engine.eval.metrics import alignment_scores, frechet_distance, image_features, score_images

SMALL = EvaluatorConfig(widths=(8, 16), feature_dim=16, embed_dim=16, image_size=32)
COLOURS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 220, 20), (150, 20, 200),
           (20, 200, 220)]


def colour_images(size: int = 64) -> np.ndarray:
    images = np.full((len(COLOURS), size, size, 3), 255, np.uint8)
    for index, colour in enumerate(COLOURS):
        images[index, size // 4:3 * size // 4, size // 4:3 * size // 4] = colour
    return images


def test_frechet_distance_zero_for_same_set_and_grows_with_shift():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((400, 4))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(features, features + 2.0)
    assert shifted == pytest.approx(4 * 4.0, rel=1e-3)  # ||mu shift||^2, same covariance
    scaled = frechet_distance(features, features * 2.0)
    assert scaled > 1.0


def test_alignment_and_top5_on_known_embeddings():
    text = torch.eye(8)
    perfect = alignment_scores(text.clone(), text)
    assert perfect["alignment"] == pytest.approx(1.0) and perfect["top5"] == 1.0
    assert perfect["top1"] == 1.0
    wrong = alignment_scores(text.roll(1, dims=0), text)  # each image matches another caption
    assert wrong["alignment"] == pytest.approx(0.0)
    assert wrong["top1"] == 0.0


def test_evaluator_learns_colour_captions_and_round_trips(tmp_path):
    images = colour_images()
    text = torch.nn.functional.normalize(torch.randn(len(COLOURS), 384,
                                                     generator=torch.Generator().manual_seed(1)),
                                         dim=-1)
    model, losses = train_evaluator(images, text, steps=60, batch=6, lr=5e-3, config=SMALL)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    scores = score_images(model, images, text, images)
    assert scores["fd"] == pytest.approx(0.0, abs=1e-3)
    assert scores["top1"] >= 0.8 and scores["alignment"] > 0.5
    save_evaluator(model, tmp_path / "ev", {"steps": 60})
    loaded = load_evaluator(tmp_path / "ev")
    assert np.allclose(image_features(loaded, images)[0], image_features(model, images)[0])


def test_eval_cli_real_prints_one_json_object(tmp_path, capsys):
    images = colour_images(128)
    heldout = np.ones(len(COLOURS), bool)
    captions = ["red square", "green square", "blue square", "yellow square", "purple square",
                "cyan square"]
    write_dataset(tmp_path / "data", {"images": images, "sketches": images[..., 0],
                                      "heldout": heldout, "variant": ~heldout},
                  captions, {"count": len(captions)})
    model, _ = train_evaluator(images, torch.randn(len(captions), 384), steps=2, batch=6,
                               config=SMALL)
    save_evaluator(model, tmp_path / "ev")
    code = main(["eval", "--real", "--json", "--data", str(tmp_path / "data"),
                 "--evaluator", str(tmp_path / "ev")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert {"fd", "alignment", "top5", "seconds_per_image"} <= result.keys()
    assert result["fd"] == pytest.approx(0.0, abs=1e-3) and result["images"] == 6
    assert result["sharpness"] == pytest.approx(1.0)  # the real images against themselves
    assert result["top5"] >= 5 / 6 - 1e-6  # 6 captions: top-5 misses at most one


def test_eval_cli_without_evaluator_is_an_error(tmp_path, capsys):
    assert main(["eval", "--real", "--evaluator", str(tmp_path / "none")]) == 2
    assert "train-evaluator" in capsys.readouterr().err


def test_eval_cli_scores_generated_images_with_timing(tmp_path, capsys, monkeypatch):
    import engine.eval.metrics as metrics

    images = colour_images(128)
    captions = ["red", "green", "blue", "yellow", "purple", "cyan"]
    write_dataset(tmp_path / "data", {"images": images, "sketches": images[..., 0],
                                      "heldout": np.ones(6, bool), "variant": np.zeros(6, bool)},
                  captions, {"count": 6})
    model, _ = train_evaluator(images, torch.randn(6, 384), steps=2, batch=6, config=SMALL)
    save_evaluator(model, tmp_path / "ev")
    asked = {}

    def fake_pipeline_generator(model, steps, teacher_steps, guidance, device, size, backend,
                                timesteps, sketches, match_prompt):
        asked.update(model=model, steps=steps, teacher_steps=teacher_steps, guidance=guidance,
                     match_prompt=match_prompt)
        blank = lambda caption, seed: np.full((size, size, 3), 255, np.uint8)  # noqa: E731
        return blank, steps or 4  # as a four-step student would

    monkeypatch.setattr(metrics, "pipeline_generator", fake_pipeline_generator)
    code = main(["eval", "--model", str(tmp_path), "--teacher-steps", "3", "--guidance", "2.5",
                 "--json", "--data", str(tmp_path / "data"), "--evaluator", str(tmp_path / "ev")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert asked == {"model": str(tmp_path), "steps": None, "teacher_steps": 3, "guidance": 2.5,
                     "match_prompt": True}
    assert result["prompt_matching"] is False  # the fake model has no vocabulary
    assert result["steps"] is None and result["teacher_steps"] == 3  # a teacher run
    assert result["fd"] > 1e-3  # blank images are far from the real ones
    assert result["seconds_per_image"] > 0 and result["images"] == 6  # timed, not the real 0
    # recall: 500 names and every hand-written prompt, all drawn blank, so almost none hit
    assert result["recall_count"] == 500 and result["phrase_count"] >= 300
    assert result["recall_top1"] < 0.05 and result["phrase_top5"] < 0.1
    assert sum(g["count"] for g in result["recall_by_group"].values()) == 500
    assert "flags" in result["phrase_by_group"]


KNOWN = ["red apple", "rocket", "penguin", "soccer ball", "ghost", "guitar", "cat face",
         "red heart", "pizza", "hot beverage", "Japan", "sun"]


def test_eval_recall_only_needs_no_dataset_and_real_renders_score_high(tmp_path, capsys,
                                                                      monkeypatch):
    import engine.eval.metrics as metrics
    from engine.embedded.dataset import DEFAULT_FONT, list_emoji, load_font, render_emoji

    if not DEFAULT_FONT.is_file():
        pytest.skip("needs the Noto Color Emoji font (fonts-noto-color-emoji)")
    font, char_of = load_font(None), {caption: char for char, caption in list_emoji()}

    def fake_pipeline_generator(model, steps, teacher_steps, guidance, device, size, backend,
                                timesteps, sketches, match_prompt):
        def draw(prompt, seed):
            if prompt in KNOWN:
                return render_emoji(char_of[prompt], font)
            return np.full((size, size, 3), 255, np.uint8)
        return draw, 2

    monkeypatch.setattr(metrics, "pipeline_generator", fake_pipeline_generator)
    code = main(["eval", "--model", str(tmp_path), "--recall-only", "--recall-names", "1904",
                 "--phrases", "0", "--json", "--data", str(tmp_path / "no-data")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert "fd" not in result and "phrase_top1" not in result
    assert result["recall_count"] == 1904
    # the twelve rendered names are recognised (a blank image may hit by chance once or twice)
    assert len(KNOWN) - 1 <= result["recall_top1"] * 1904 <= len(KNOWN) + 2


def test_timesteps_replace_the_students_schedule(tiny_student_dir):
    from engine.api import GenerateRequest
    from engine.eval.metrics import pipeline_generator
    from engine.pipeline.generator import Generator
    from engine.runtime import create_backend

    generator = Generator(create_backend(str(tiny_student_dir), "torch", "cpu"))
    assert generator.timesteps_for(2) == [999, 499]
    reference, _ = generator.generate(GenerateRequest("red", seed=0, steps=2))
    size = reference.shape[0]
    same, steps = pipeline_generator(str(tiny_student_dir), size=size, timesteps=[999, 499])
    later, _ = pipeline_generator(str(tiny_student_dir), size=size, timesteps=[999, 299])
    assert steps == 2
    assert np.array_equal(same("red", 0), reference)
    assert not np.array_equal(later("red", 0), reference)


@pytest.mark.parametrize("flags", [["--timesteps", "999,abc"], ["--timesteps", "299,999"],
                                   ["--timesteps", "999,1000"],
                                   ["--timesteps", "999,299", "--steps", "4"]])
def test_bad_timesteps_exit_2_with_one_line(flags, capsys):
    assert main(["eval", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--" in err


def shape_image(kind: str, size: int = 64) -> np.ndarray:
    """A red disc or a blue square on white."""
    rows, cols = np.mgrid[:size, :size]
    image = np.full((size, size, 3), 255, np.uint8)
    if kind == "disc":
        image[(rows - 32) ** 2 + (cols - 30) ** 2 < 18 ** 2] = (220, 30, 30)
    else:
        image[8:30, 36:60] = (30, 30, 220)
    return image


def test_stroke_f1_rewards_following_the_sketch():
    from engine.embedded.dataset import extract_sketch
    from engine.eval.sketch_metrics import edge_map, mean_stroke_f1, stroke_f1

    disc, square = shape_image("disc"), shape_image("square")
    blank = np.full_like(disc, 255)
    disc_sketches = [extract_sketch(disc, seed) for seed in range(4)]
    own = [stroke_f1(sketch, disc) for sketch in disc_sketches]
    other = [stroke_f1(sketch, square) for sketch in disc_sketches]
    assert min(own) > 0.8 and max(other) < 0.3, (own, other)
    assert edge_map(blank).sum() == 0 and edge_map(disc).sum() > 50
    assert stroke_f1(blank[..., 0], blank) == 1.0  # nothing asked, nothing drawn
    assert stroke_f1(disc_sketches[0], blank) == 0.0
    # images are resized to the sketches; an RGB sketch reads like a grey one
    big = np.asarray(Image.fromarray(disc).resize((128, 128), Image.LANCZOS))
    rgb_sketch = np.repeat(disc_sketches[0][..., None], 3, axis=-1)
    assert mean_stroke_f1(np.stack([rgb_sketch]), big[None]) == pytest.approx(
        mean_stroke_f1(np.stack([disc_sketches[0]]), disc[None]), abs=0.15)


def test_eval_sketch_needs_a_sketch_model(tiny_model_dir, tmp_path, capsys):
    images = colour_images(32)
    write_dataset(tmp_path / "data", {"images": images, "sketches": images[..., 0],
                                      "heldout": np.ones(6, bool), "variant": np.zeros(6, bool)},
                  ["red", "green", "blue", "yellow", "purple", "cyan"], {"count": 6})
    model, _ = train_evaluator(images, torch.randn(6, 384), steps=2, batch=6, config=SMALL)
    save_evaluator(model, tmp_path / "ev")
    assert main(["eval", "--model", str(tiny_model_dir), "--sketch", "--data",
                 str(tmp_path / "data"), "--evaluator", str(tmp_path / "ev")]) == 2
    assert "no sketch channels" in capsys.readouterr().err


def test_eval_sketch_draws_each_caption_over_its_sketch(tiny_sketch_model_dir):
    from engine.eval.metrics import generate_images, pipeline_generator

    generate_one, _ = pipeline_generator(str(tiny_sketch_model_dir), size=32, sketches=True)
    sketches = np.full((2, 32, 32), 255, np.uint8)
    sketches[1, 8:24, 15:17] = 0
    with_sketch, _ = generate_images(generate_one, ["cat", "cat"], seed=0, sketches=sketches)
    without, _ = generate_images(generate_one, ["cat", "cat"], seed=0)
    assert with_sketch.shape == (2, 32, 32, 3)
    assert not np.array_equal(with_sketch[1], without[1])  # the stroke changed the image
