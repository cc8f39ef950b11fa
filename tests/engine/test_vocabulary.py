"""A model's vocabulary: prompts in other words are drawn as the nearest training prompt,
exactly as if that prompt had been typed; without a vocabulary, or with match_prompt off,
prompts are drawn as typed."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest
from engine.embedded.phrases import EmojiEntry
from engine.pipeline.generator import Generator
from engine.pipeline.vocabulary import (
    MIN_SIMILARITY,
    VOCABULARY_FILE,
    PromptVocabulary,
    load_vocabulary,
    vocabulary_pairs,
    write_vocabulary,
)
from engine.runtime import create_backend
from tests.engine.test_cli import assert_clean_error, run_in_process
from tests.engine.test_smoothing import emoji_like_dataset


def small_vocabulary() -> PromptVocabulary:
    vectors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.9, 0.1]])
    return PromptVocabulary(vectors, ["penguin", "soccer ball", "football"],
                            ["penguin", "soccer ball", "soccer ball"])


def test_match_finds_the_nearest_entry_and_what_it_stands_for():
    vocabulary = small_vocabulary()
    near_football = vocabulary.match("a football on grass", torch.tensor([0.0, 0.8, 0.15]))
    assert near_football.entry == "football" and near_football.prompt == "soccer ball"
    assert near_football.similarity == pytest.approx(0.998, abs=1e-3)
    near_penguin = vocabulary.match("a cute penguin", torch.tensor([[0.9, 0.3, 0.0]]))
    assert near_penguin.prompt == "penguin" and near_penguin.similarity > MIN_SIMILARITY
    # an entry stands for its prompt whatever its vector; a training prompt is drawn as typed
    assert vocabulary.match("football", torch.tensor([1.0, 0.0, 0.0])).prompt == "soccer ball"
    assert vocabulary.match("penguin", torch.tensor([0.0, 1.0, 0.0])) is None
    assert vocabulary.match("a house", torch.tensor([0.0, 0.0, 1.0])) is None  # nothing close
    assert vocabulary.match("  ", torch.tensor([1.0, 0.0, 0.0])) is None
    assert vocabulary.match("a penguin", torch.ones(5)) is None  # another encoder's width


def test_vocabulary_pairs_keep_captions_and_drop_ambiguous_keywords():
    table = {
        "thumbs up": EmojiEntry("thumbs up", "", "people-body", ("thumbs up",), ("like", "yes")),
        "check mark": EmojiEntry("check mark", "", "symbols", ("check mark",), ("yes", "tick")),
    }
    captions = ["thumbs up: dark skin tone", "thumbs up", "check mark"]
    pairs = dict(vocabulary_pairs(captions, table))
    assert pairs == {"thumbs up: dark skin tone": "thumbs up: dark skin tone",
                     "thumbs up": "thumbs up", "check mark": "check mark",
                     "like": "thumbs up: dark skin tone", "tick": "check mark"}


@pytest.fixture
def model_with_vocabulary(tiny_model_dir, tmp_path):
    """The tiny model with a vocabulary in which "zebra" sits where "horse" does."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    backend = create_backend(str(folder), "torch", "cpu")

    def encode(texts):
        swapped = ["zebra" if text == "horse" else text for text in texts]
        return backend.encode_text(swapped).pooled

    write_vocabulary(folder / VOCABULARY_FILE, [("horse", "horse"), ("apple", "red apple")],
                     encode)
    return folder


def test_a_prompt_is_drawn_as_its_match_exactly(model_with_vocabulary, one_thread):
    generator = Generator(create_backend(str(model_with_vocabulary), "torch", "cpu"))
    assert generator.vocabulary.entries == ["horse", "apple"]

    def draw(prompt, match=True):
        return generator.generate(GenerateRequest(prompt, seed=3, match_prompt=match))[0]

    assert generator.drawn_as(GenerateRequest("zebra")).prompt == "horse"
    assert generator.drawn_as(GenerateRequest("horse")) is None  # a training prompt itself
    assert np.array_equal(draw("zebra"), draw("horse"))  # the nearest entry's prompt
    # an entry's own prompt, as if it had been typed (random text vectors are all alike, so
    # "red apple" itself would be matched too: compare with it drawn as typed)
    assert np.array_equal(draw("apple"), draw("red apple", match=False))
    assert not np.array_equal(draw("zebra", match=False), draw("horse"))
    assert generator.drawn_as(GenerateRequest("zebra", match_prompt=False)) is None


def test_models_without_a_vocabulary_draw_as_typed(tiny_model_dir, tmp_path, one_thread):
    generator = Generator(create_backend(str(tiny_model_dir), "torch", "cpu"))
    assert generator.vocabulary is None
    assert generator.drawn_as(GenerateRequest("zebra")) is None
    broken = tmp_path / VOCABULARY_FILE
    broken.write_bytes(b"not safetensors")
    assert load_vocabulary(tmp_path) is None  # a damaged file only turns matching off


def test_the_service_reports_what_a_frame_was_drawn_as(model_with_vocabulary, one_thread):
    from engine.service import GenerationService

    results, arrived = [], threading.Event()

    def collect(result):
        results.append(result)
        arrived.set()

    service = GenerationService(
        Generator(create_backend(str(model_with_vocabulary), "torch", "cpu")), collect)
    try:
        for prompt in ("zebra", "horse", "apple"):
            arrived.clear()
            service.submit(GenerateRequest(prompt, seed=1))
            assert arrived.wait(60)
    finally:
        service.close()
    assert [result.drawn_as for result in results] == ["horse", "", "red apple"]
    assert results[0].request.prompt == "zebra"  # the result names what was typed


def test_data_vocabulary_writes_the_captions_as_sentence_vectors(
        tiny_model_dir, tmp_path, capsys, one_thread):
    emoji_like_dataset(tmp_path / "data", count=6)
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    result = run_in_process(capsys, "data", "vocabulary", "--out", folder,
                            "--data", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    vocabulary = load_vocabulary(folder)
    assert vocabulary.entries == [f"square {index}" for index in range(6)]
    norms = vocabulary.vectors.norm(dim=-1)
    assert torch.allclose(norms, torch.ones(6), atol=1e-3)
    refused = run_in_process(capsys, "data", "vocabulary", "--out", tmp_path / "data",
                             "--data", tmp_path / "data")
    assert_clean_error(refused, "is not a model folder")
    assert vocabulary.prompts == vocabulary.entries  # captions stand for themselves


def test_the_shipped_vocabulary_is_the_shipped_text_encoders(one_thread):
    from engine.runtime.loading import ASSETS_DIR

    generator = Generator(create_backend(str(ASSETS_DIR / "student"), "torch", "cpu"))
    vocabulary = generator.vocabulary
    assert len(vocabulary.entries) > 6000 and "taco" in vocabulary.entries
    picks = [0, len(vocabulary.entries) // 2, len(vocabulary.entries) - 1]
    texts = [vocabulary.entries[index] for index in picks]
    pooled = torch.nn.functional.normalize(generator.backend.encode_text(texts).pooled.float(),
                                           dim=-1)
    cosines = (pooled * vocabulary.vectors[picks]).sum(dim=-1)
    assert cosines.min() > 0.999  # rebuilt with `data vocabulary` when the encoder changes
    teacher = load_vocabulary(ASSETS_DIR / "teacher")
    assert teacher.entries == vocabulary.entries


def test_generate_says_what_the_embedded_student_drew(tmp_path, capsys, one_thread):
    from engine.recipe import read_recipe

    matched, typed = tmp_path / "matched.png", tmp_path / "typed.png"
    result = run_in_process(capsys, "generate", "--prompt", "a crunchy beef taco",
                            "--backend", "torch", "--out", matched)
    assert result.returncode == 0, result.stderr
    assert 'drawn as "taco"' in result.stdout and read_recipe(matched).match_prompt
    result = run_in_process(capsys, "generate", "--prompt", "a crunchy beef taco", "--as-typed",
                            "--backend", "torch", "--out", typed)
    assert result.returncode == 0 and "drawn as" not in result.stdout
    assert read_recipe(typed).match_prompt is False
