"""Masked edits ("painted area only"): redraw where the mask is white, keep the image elsewhere."""

from dataclasses import replace

import numpy as np
import pytest

from engine.api import GenerateRequest, InvalidRequestError
from engine.pipeline.generator import Generator
from engine.pipeline.masking import composite, resized_weights
from engine.recipe import Recipe
from engine.runtime.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    return Generator(TorchBackend.load(str(tiny_model_dir), "cpu"))


def right_half_mask(size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2:] = 255
    return mask


def photo(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_the_kept_half_is_the_image_and_the_redrawn_half_is_new(generator, strength):
    init = photo()
    request = GenerateRequest("x", seed=1, init_image=init, mask=right_half_mask(),
                              strength=strength)
    image, _ = generator.generate(request)
    np.testing.assert_array_equal(image[:, :13], init[:, :13])  # beyond the 2-px feather
    assert np.abs(image[:, 19:].astype(int) - init[:, 19:]).mean() > 10
    other_kept_half = init.copy()
    other_kept_half[:, :16] = 255 - init[:, :16]
    other, _ = generator.generate(replace(request, init_image=other_kept_half))
    assert np.abs(other[:, 19:].astype(int) - image[:, 19:]).max() > 0  # drawn around the kept half


def test_a_black_mask_keeps_everything_and_the_teacher_honours_the_mask(generator):
    init = photo(1)
    kept, _ = generator.generate(GenerateRequest("x", init_image=init, strength=1.0,
                                                 mask=np.zeros((50, 50), np.uint8)))
    np.testing.assert_array_equal(kept, init)
    teacher, _ = generator.generate(GenerateRequest("x", init_image=init, teacher_steps=3,
                                                    mask=right_half_mask(64)))
    np.testing.assert_array_equal(teacher[:, :13], init[:, :13])


def test_a_masked_edit_is_reproducible_and_has_no_preview(generator):
    request = GenerateRequest("x", seed=4, steps=2, preview_steps=1, init_image=photo(2),
                              mask=right_half_mask(), strength=1.0)
    first, _ = generator.generate(request)
    again, _ = generator.generate(request)
    np.testing.assert_array_equal(first, again)
    assert request.preview() is None  # an edit's steps follow its strength


@pytest.mark.parametrize("kwargs, message", [
    ({"mask": right_half_mask()}, "needs an image to edit"),
    ({"mask": np.zeros((8, 8, 3), np.uint8), "init_image": photo()}, "HxW grey"),
    ({"mask": np.zeros((8, 8), np.float32), "init_image": photo()}, "HxW grey"),
])
def test_bad_masks_are_clear_errors(generator, kwargs, message):
    with pytest.raises(InvalidRequestError, match=message):
        generator.generate(GenerateRequest("x", **kwargs))


def test_mask_files_read_as_8_bit_grey_with_clear_pixels_kept():
    from PIL import Image

    from engine.cli.generate import mask_grey

    sixteen = np.zeros((2, 2), np.uint16)
    sixteen[0] = (65535, 300)  # white, and a near-black grey
    np.testing.assert_array_equal(mask_grey(Image.fromarray(sixteen)), [[255, 1], [0, 0]])
    layer = np.zeros((2, 2, 4), np.uint8)
    layer[..., :3] = 255  # white everywhere, opaque only at the top left
    layer[0, 0, 3] = 255
    np.testing.assert_array_equal(mask_grey(Image.fromarray(layer)), [[255, 0], [0, 0]])


def test_weights_shrink_by_area_and_the_composite_feathers_only_the_edge():
    mask = right_half_mask(64).astype(np.float32) / 255
    latent = resized_weights(mask, 4)[0, 0]
    assert latent[:, :2].max() == 0 and latent[:, 2:].min() == 1
    frame = np.full((32, 32, 3), 200, np.uint8)
    kept = np.zeros((32, 32, 3), np.uint8)
    mixed = composite(frame, kept, mask)
    assert mixed[:, :13].max() == 0 and mixed[:, 19:].min() == 200
    assert 0 < mixed[0, 15, 0] < 200  # the seam is blended


def test_the_recipe_keeps_the_mask_exactly():
    mask = np.random.default_rng(3).integers(0, 256, (24, 24), dtype=np.uint8)
    request = GenerateRequest("x", init_image=photo(), mask=mask, strength=0.5)
    recipe = Recipe.from_text(Recipe.from_request(request).to_text())
    np.testing.assert_array_equal(recipe.request().mask, mask)
    assert "edit 0.50, masked" in recipe.describe()
    assert Recipe.from_text(Recipe.from_request(GenerateRequest("x")).to_text()).mask is None


def test_generate_mask_keeps_the_black_part_and_draws_the_same_frame_again(
        tiny_model_dir, tmp_path, capsys):
    from PIL import Image

    from engine.recipe import read_recipe
    from tests.engine.test_cli import assert_clean_error, run_in_process

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)).save(init)
    Image.fromarray(np.dstack([right_half_mask(64)] * 3)).save(mask)  # RGB is read as grey
    out, again = tmp_path / "out.png", tmp_path / "again.png"
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "cat",
                            "--init", init, "--mask", mask, "--strength", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    recipe = read_recipe(out)
    assert recipe.mode == "edit" and recipe.mask.shape == (32, 32) and recipe.strength == 1.0
    kept = np.asarray(Image.open(init).resize((32, 32), Image.LANCZOS))
    np.testing.assert_array_equal(np.asarray(Image.open(out))[:, :13], kept[:, :13])
    assert run_in_process(capsys, "generate", "--model", tiny_model_dir, "--recipe", out,
                          "--out", again).returncode == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    summary = run_in_process(capsys, "info", "--image", out, "--json").stdout
    assert '"mask": "32x32 L"' in summary
    result = run_in_process(capsys, "generate", "--model", tiny_model_dir, "--prompt", "cat",
                            "--mask", mask, "--out", tmp_path / "no.png")
    assert_clean_error(result, "--mask needs an image to edit")
