"""Recipes: saved with every PNG, read back exactly, and drawn again by `generate --recipe`."""

import json

import numpy as np
import pytest
from PIL import Image

from engine.api import EngineError, GenerateRequest
from engine.recipe import RECIPE_KEY, Recipe, png_info, read_recipe
from tests.engine.test_cli import assert_clean_error, run_in_process


def sketch_image() -> np.ndarray:
    sketch = np.full((24, 24, 3), 255, np.uint8)
    sketch[4:20, 11:13] = (10, 20, 200)  # a blue stroke
    return sketch


def test_a_recipe_survives_a_png_round_trip_with_its_sketch_exactly(tmp_path):
    request = GenerateRequest(prompt="smiling cat ünïcode 🐱", seed=123, steps=2,
                              sketch=sketch_image(), strength=0.7)
    recipe = Recipe.from_request(request, model="embedded student", backend="onnx")
    path = tmp_path / "frame.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, pnginfo=png_info(recipe))
    back = read_recipe(path)
    assert (back.prompt, back.seed, back.steps, back.mode, back.strength) == \
        ("smiling cat ünïcode 🐱", 123, 2, "sketch", 0.7)
    assert (back.model, back.backend, back.init_image) == ("embedded student", "onnx", None)
    assert np.array_equal(back.sketch, request.sketch)
    again = back.request()
    assert (again.prompt, again.seed, again.steps, again.strength) == \
        (request.prompt, request.seed, request.steps, request.strength)
    assert back.describe() == '"smiling cat ünïcode 🐱", seed 123, 2 steps, sketch, ' \
                              'made with embedded student'


def test_modes_and_the_teacher_sampler_are_recorded():
    edit = Recipe.from_request(GenerateRequest(prompt="a", init_image=sketch_image(),
                                               strength=0.4))
    teacher = Recipe.from_request(GenerateRequest(prompt="b", teacher_steps=20, guidance=3.5))
    assert edit.mode == "edit" and edit.describe() == '"a", seed 0, 1 step, edit 0.40'
    assert teacher.mode == "text"
    assert teacher.describe() == '"b", seed 0, teacher 20 steps, guidance 3.5'
    assert Recipe.from_text(teacher.to_text()).request().teacher_steps == 20


def test_an_image_without_a_recipe_reads_none_and_damage_is_one_clear_error(tmp_path):
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    assert read_recipe(plain) is None
    for text in ("not json", json.dumps({"version": 99, "prompt": "x", "mode": "text"}),
                 json.dumps({"version": 1, "prompt": "x", "mode": "collage"}),
                 json.dumps({"version": 1, "prompt": "x", "mode": "text", "seed": "many"}),
                 json.dumps({"version": 1, "prompt": "x", "mode": "sketch", "sketch": "@@"}),
                 '{"version": 1, "prompt": "x", "mode": "text", "seed": 1e400}',
                 '{"version": 1, "prompt": "x", "mode": "text", "strength": NaN}',
                 json.dumps({"version": 1, "prompt": "x", "mode": "text", "steps": 0})):
        with pytest.raises(EngineError, match="recipe is damaged"):
            Recipe.from_text(text)
    (tmp_path / "text.png").write_text("no image")
    with pytest.raises(EngineError, match="not a readable image"):
        read_recipe(tmp_path / "text.png")


def test_generate_saves_its_recipe_and_draws_the_same_frame_again(tiny_model_dir, tmp_path,
                                                                   capsys):
    sketch = tmp_path / "sketch.png"
    Image.fromarray(sketch_image()).save(sketch)
    first = tmp_path / "first.png"
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "cat",
                            "--seed", 9, "--steps", 2, "--sketch", sketch, "--out", first)
    assert result.returncode == 0, result.stderr
    with Image.open(first) as image:
        recorded = json.loads(image.text[RECIPE_KEY])
    assert (recorded["prompt"], recorded["seed"], recorded["steps"], recorded["mode"]) == \
        ("cat", 9, 2, "sketch")
    again, other_seed = tmp_path / "again.png", tmp_path / "seed.png"
    for out, extra in ((again, []), (other_seed, ["--seed", 10])):
        result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--recipe", first,
                                "--out", out, *extra)
        assert result.returncode == 0, result.stderr
    pixels = {path: np.asarray(Image.open(path)) for path in (first, again, other_seed)}
    assert np.array_equal(pixels[first], pixels[again])
    assert not np.array_equal(pixels[first], pixels[other_seed])
    assert read_recipe(other_seed).seed == 10 and read_recipe(other_seed).mode == "sketch"


def test_generate_recipe_from_a_plain_image_exits_2(tiny_model_dir, tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--recipe", plain,
                            "--out", tmp_path / "o.png")
    assert_clean_error(result, "has no DMD Studio recipe")


def test_generate_stores_conditioning_images_at_the_models_size_and_edits_at_0_6(
        tiny_model_dir, tmp_path, capsys):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), np.uint8)).save(big)
    text = tmp_path / "text.png"
    assert run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "cat",
                          "--out", text).returncode == 0
    assert read_recipe(text).strength == 1.0 and read_recipe(text).mode == "text"
    edit = tmp_path / "edit.png"
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--recipe", text,
                            "--init", big, "--out", edit)
    assert result.returncode == 0, result.stderr
    recipe = read_recipe(edit)
    assert (recipe.mode, recipe.strength, recipe.init_image.shape) == ("edit", 0.6, (32, 32, 3))
    again = tmp_path / "again.png"
    assert run_in_process(capsys, "generate", "--model", tiny_model_dir, "--recipe", edit,
                          "--out", again).returncode == 0
    assert np.array_equal(np.asarray(Image.open(edit)), np.asarray(Image.open(again)))


def test_info_image_prints_the_recipe_without_its_pixels(tiny_model_dir, tmp_path, capsys):
    sketch = tmp_path / "sketch.png"
    Image.fromarray(sketch_image()).save(sketch)
    out = tmp_path / "cat.png"
    assert run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "cat",
                          "--seed", 4, "--sketch", sketch, "--out", out).returncode == 0
    line = run_in_process(capsys, "info", "--image", out)
    assert line.returncode == 0 and line.stdout.startswith('"cat", seed 4, ')
    summary = json.loads(run_in_process(capsys, "info", "--image", out, "--json").stdout)
    assert summary["sketch"] == "32x32 RGB" and summary["init_image"] is None
    assert (summary["prompt"], summary["seed"], summary["mode"]) == ("cat", 4, "sketch")
    plain = tmp_path / "plain.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(plain)
    assert_clean_error(run_in_process(capsys, "info", "--image", plain), "no DMD Studio recipe")


def test_prompt_matching_is_recorded_and_older_recipes_were_drawn_as_typed():
    matched = Recipe.from_request(GenerateRequest(prompt="a crunchy taco"))
    assert Recipe.from_text(matched.to_text()).request().match_prompt is True
    as_typed = Recipe.from_request(GenerateRequest(prompt="taco", match_prompt=False))
    assert Recipe.from_text(as_typed.to_text()).match_prompt is False
    older = Recipe.from_text(json.dumps({"version": 1, "prompt": "x", "mode": "text"}))
    assert older.request().match_prompt is False
    with pytest.raises(EngineError, match="match_prompt is not true or false"):
        Recipe.from_text(json.dumps({"version": 1, "prompt": "x", "mode": "text",
                                     "match_prompt": "yes"}))
