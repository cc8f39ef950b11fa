"""`generate --lora FILE[:WEIGHT]`: frames, recipes that record the LoRAs, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.api import LoraChoice
from engine.cli.common import parse_lora
from engine.pipeline.tiny import build_tiny_pipeline
from engine.recipe import Recipe, read_recipe
from engine.runtime.lora import lora_components
from engine.runtime.lora_files import read_lora_file
from engine.runtime.torch_backend import TorchBackend
from tests.engine.adapter_files import random_layers, write_kohya, write_peft
from tests.engine.test_cli import assert_clean_error, run_in_process


@pytest.fixture(scope="module")
def lora_path(tiny_student_dir, tmp_path_factory):
    components = lora_components(TorchBackend.load(str(tiny_student_dir), "cpu").parts)
    return write_peft(tmp_path_factory.mktemp("lora") / "style.safetensors",
                      random_layers(components, seed=11), alpha=2.0)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_parse_lora_weights_and_paths_with_colons():
    assert parse_lora("style.safetensors:0.5") == LoraChoice("style.safetensors", 0.5)
    assert parse_lora("style.safetensors") == LoraChoice("style.safetensors", 1.0)
    assert parse_lora(r"C:\loras\style.safetensors") == LoraChoice(r"C:\loras\style.safetensors")


def test_generate_with_a_lora_records_it_and_draws_again_identically(
        tiny_student_dir, lora_path, tmp_path, capsys):
    plain, styled, again = tmp_path / "plain.png", tmp_path / "styled.png", tmp_path / "again.png"
    common = ["generate", "--model", tiny_student_dir, "--backend", "torch", "--device", "cpu"]
    assert run_in_process(capsys, *common, "--prompt", "cat", "--out", plain).returncode == 0
    result = run_in_process(capsys, *common, "--prompt", "cat", "--lora", f"{lora_path}:0.8",
                            "--out", styled)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(plain) - pixels(styled)).max() > 0
    recipe = read_recipe(styled)
    assert recipe.loras == (LoraChoice(str(lora_path), 0.8, read_lora_file(lora_path).sha256),)
    assert "LoRA style.safetensors at 0.8" in recipe.describe()
    result = run_in_process(capsys, *common, "--recipe", styled, "--out", again)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(again) - pixels(styled)).max() == 0
    assert read_recipe(again).loras == recipe.loras


def test_a_recipe_whose_lora_file_changed_exits_2(tiny_student_dir, lora_path, tmp_path, capsys):
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(lora_path.read_bytes())
    common = ["generate", "--model", tiny_student_dir, "--backend", "torch", "--device", "cpu"]
    saved = tmp_path / "saved.png"
    assert run_in_process(capsys, *common, "--prompt", "cat", "--lora", copy,
                          "--out", saved).returncode == 0
    components = lora_components(TorchBackend.load(str(tiny_student_dir), "cpu").parts)
    write_kohya(copy, random_layers(components, seed=12), alpha=1.0)
    result = run_in_process(capsys, *common, "--recipe", saved, "--out", tmp_path / "x.png")
    assert_clean_error(result, "SHA-256 differs")


def test_a_lora_for_another_architecture_exits_2(tiny_student_dir, tmp_path, capsys):
    other_dir = build_tiny_pipeline(tmp_path / "other", pooled_text=True, seed=1)
    components = lora_components(TorchBackend.load(str(other_dir), "cpu").parts)
    layers = random_layers(components, text=False)
    layers[("unet", "class_embedding.linear_1")] = random_layers(components)[
        ("text_encoder", "text_model.encoder.layers.0.self_attn.q_proj")]
    path = write_peft(tmp_path / "other.safetensors", layers, 1.0)
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--device", "cpu",
                            "--prompt", "cat", "--lora", path, "--out", tmp_path / "x.png")
    assert_clean_error(result, "made for another architecture")


def test_a_missing_lora_file_exits_2(tiny_student_dir, tmp_path, capsys):
    result = run_in_process(capsys, "generate", "--model", tiny_student_dir, "--device", "cpu",
                            "--prompt", "cat", "--lora", tmp_path / "none.safetensors",
                            "--out", tmp_path / "x.png")
    assert_clean_error(result, "none.safetensors")


def test_old_recipes_without_loras_still_read():
    text = Recipe(prompt="cat").to_text().replace(', "loras": []', "")
    assert Recipe.from_text(text).loras == ()
