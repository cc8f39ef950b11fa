"""Phrasings, the evaluation prompts, the emoji recognizer and the recall scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.embedded.dataset import base_caption, list_emoji
from engine.embedded.latents import LatentCache
from engine.embedded.phrases import (
    GROUPS,
    PHRASINGS_PER_IMAGE,
    excluded_prompts,
    load_eval_phrases,
    load_phrase_table,
    phrasings,
    training_phrasings,
)
from engine.embedded.teacher import TeacherConfig, TeacherTrainer
from engine.eval.recall import RecallSet, name_set, phrase_set, recall_scores
from engine.eval.recognizer import (
    Recognizer,
    RecognizerConfig,
    augmented_accuracy,
    class_logits,
    hit_rates,
    load_recognizer,
    save_recognizer,
    train_recognizer,
)

COLOURS = [(230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 220, 20)]


def test_phrasings_start_with_the_caption_and_keep_skin_tones():
    table = load_phrase_table()
    plain = phrasings("penguin", table, set())
    assert plain[0] == "penguin" and len(plain) == PHRASINGS_PER_IMAGE
    assert len(set(plain)) == len(plain)
    assert {"a penguin", "penguin emoji", "penguins"} & set(plain)
    toned = phrasings("thumbs up medium skin tone", table, set())
    assert toned[0] == "thumbs up medium skin tone"
    assert all(p.endswith(", medium skin tone") for p in toned[1:])
    flag = phrasings("Japan", table, set(), count=40)
    assert {"flag of Japan", "Japan flag"} <= set(flag) and "a Japan" not in flag


def test_excluded_prompts_are_never_training_phrasings():
    table = load_phrase_table()
    every = phrasings("penguin", table, set(), count=100)
    excluded = {every[3].lower()}
    assert every[3] not in phrasings("penguin", table, excluded, count=100)


def test_phrase_table_covers_every_emoji_in_a_known_group():
    table = load_phrase_table()
    bases = {base_caption(caption) for _, caption in list_emoji()}
    assert len(table) >= 1900 and set(table) <= bases
    assert {entry.group for entry in table.values()} == set(GROUPS)
    soccer = table["soccer ball"]
    assert soccer.group == "activities" and "football" in soccer.keywords


def test_evaluation_prompts_cover_every_group_and_are_unseen_in_training():
    phrases = load_eval_phrases()
    table = load_phrase_table()
    assert len(phrases) >= 300
    assert {p["group"] for p in phrases} == set(GROUPS)
    assert all(p["accept"] and set(p["accept"]) <= set(table) for p in phrases)
    captions = [caption for _, caption in list_emoji()]
    trained = {text.lower() for texts in training_phrasings(captions) for text in texts}
    assert not trained & excluded_prompts()
    assert len(excluded_prompts()) == len(phrases)  # every prompt distinct


def test_hit_rates_and_recall_by_group():
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [0, 5, 4, 3, 2, 1], [0, 1, 2, 3, 4, 5]])
    top1, top5 = hit_rates(logits, [[0], [2, 3], [0]])
    assert top1.tolist() == [True, False, False] and top5.tolist() == [True, True, False]

    class Fixed(torch.nn.Module):
        def forward(self, images):
            return logits

    recall_set = RecallSet(["a", "b", "c"], [[0], [2, 3], [0]], ["x", "y", "y"])
    scores = recall_scores(Fixed(), np.zeros((3, 8, 8, 3), np.uint8), recall_set)
    assert scores["top1"] == pytest.approx(1 / 3) and scores["top5"] == pytest.approx(2 / 3)
    assert scores["by_group"] == {"x": {"top1": 1.0, "top5": 1.0, "count": 1},
                                  "y": {"top1": 0.0, "top5": 0.5, "count": 2}}


def test_name_and_phrase_sets_are_fixed_samples_of_known_classes():
    classes = [f"emoji {i}" for i in range(50)]
    first, again = name_set(classes, {}, 20), name_set(classes, {}, 20)
    assert first == again and len(set(first.prompts)) == 20
    assert all(classes[ok[0]] == prompt for prompt, ok in zip(first.prompts, first.accepted,
                                                              strict=True))
    assert len(name_set(classes, {}, 500).prompts) == 50
    phrases = [{"prompt": "p", "accept": ["emoji 3", "unknown"], "group": "g"},
               {"prompt": "q", "accept": ["unknown"], "group": "g"}]
    chosen = phrase_set(phrases, classes)
    assert chosen.prompts == ["p"] and chosen.accepted == [[3]]


def colour_banks(size: int = 48) -> list[torch.Tensor]:
    images = np.full((len(COLOURS), size, size, 3), 255, np.uint8)
    for index, colour in enumerate(COLOURS):
        images[index, size // 4:3 * size // 4, size // 3:2 * size // 3] = colour
    clean = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    return [clean, clean.flip(-1)]


def test_recognizer_learns_degraded_colours_and_round_trips(tmp_path):
    banks = colour_banks()
    labels = torch.arange(len(COLOURS))
    classes = ["red", "green", "blue", "yellow"]
    model, losses = train_recognizer(banks, labels, classes, steps=250, batch=16, lr=5e-3)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    accuracy = augmented_accuracy(model, banks, labels, seed=7, rounds=4)
    assert accuracy["top1"] >= 0.9
    save_recognizer(model, tmp_path / "rec", {"steps": 250})
    loaded = load_recognizer(tmp_path / "rec")
    assert loaded.config.classes == classes
    images = ((banks[0].permute(0, 2, 3, 1) + 1) * 127.5).round().byte().numpy()
    assert torch.equal(class_logits(loaded, images).argmax(1), labels)


def test_shipped_recognizer_knows_the_real_renders():
    from engine.runtime.loading import ASSETS_DIR

    recognizer = load_recognizer(ASSETS_DIR / "recognizer")
    assert isinstance(recognizer, Recognizer)
    assert len(recognizer.config.classes) >= 1900
    assert isinstance(recognizer.config, RecognizerConfig)


def tiny_cache(counts: list[int]) -> LatentCache:
    n, rows = len(counts), sum(counts)
    count = torch.tensor(counts)
    return LatentCache(torch.randn(n, 4, 16, 16), torch.randn(n, 4, 16, 16),
                       torch.randn(rows, 4, 8).half(), torch.randn(rows, 8), torch.zeros(4, 8),
                       torch.zeros(8), torch.zeros(n, dtype=torch.bool),
                       torch.zeros(n, dtype=torch.bool), [f"c{i}" for i in range(n)],
                       torch.cumsum(count, 0) - count, count)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_teacher_draws_each_images_own_phrasings(share):
    cache = tiny_cache([1, 3, 5])
    config = TeacherConfig(batch=4000, caption_share=share, block_out_channels=(32, 32),
                           dedupe_steps=0)
    trainer = TeacherTrainer(cache, config)
    ids = trainer.sample_ids()
    rows = trainer.phrase_rows(ids)
    start, count = cache.phrase_start[ids], cache.phrase_count[ids]
    assert bool(((rows >= start) & (rows < start + count)).all())
    at_caption = float((rows == start)[count == 5].float().mean())
    assert at_caption == pytest.approx(share + (1 - share) / 5, abs=0.04)
    assert cache.caption_rows(torch.tensor([0, 1, 2])).tolist() == [0, 1, 4]


def test_suggestions_add_the_emojis_names_and_keywords():
    from engine.embedded.phrases import suggestions

    listed = suggestions(["red apple", "Japan", "hot beverage"])
    assert {"red apple", "apple", "flag of Japan", "Japan flag", "coffee"} <= set(listed)
    assert listed == sorted(set(listed))
    shipped = (Path(__file__).parents[2] / "assets/models/student/prompts.txt").read_text()
    assert {"coffee", "flag of Japan", "red apple"} <= set(shipped.splitlines())


def test_embedded_distillation_prompts_add_two_phrasings_per_caption(tmp_path):
    from engine.distill.data import DISTILL_PHRASINGS, embedded_prompts

    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "captions.json").write_text('["penguin", "red apple", "hot beverage"]')
    prompts = embedded_prompts(tmp_path)
    assert {"penguin", "red apple", "hot beverage"} <= set(prompts)
    assert len(prompts) == 3 * DISTILL_PHRASINGS
    assert any("penguin" in p and p != "penguin" for p in prompts)
    assert not set(prompts) & excluded_prompts()
