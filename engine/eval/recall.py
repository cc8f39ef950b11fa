"""Recall: does an image made from a prompt show the emoji the prompt names?

Images are judged by the emoji recognizer (engine/eval/recognizer.py): top-1 when an
accepted emoji is its first guess, top-5 when one is among its five. Plain names are a fixed
sample of the recognizer's classes; phrases are the hand-written evaluation prompts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from engine.eval.recognizer import Recognizer, class_logits, hit_rates

RECALL_SAMPLE_SEED = 0


@dataclass(frozen=True)
class RecallSet:
    """Prompts, the classes each may show (recognizer indices) and each prompt's group."""

    prompts: list[str]
    accepted: list[list[int]]
    groups: list[str]


def name_set(classes: list[str], group_of: dict[str, str], count: int) -> RecallSet:
    """A fixed, seeded sample of count class names (all when count >= the classes)."""
    picked = sorted(random.Random(RECALL_SAMPLE_SEED).sample(range(len(classes)),
                                                             min(count, len(classes))))
    return RecallSet([classes[i] for i in picked], [[i] for i in picked],
                     [group_of.get(classes[i], "") for i in picked])


def phrase_set(phrases: list[dict], classes: list[str], limit: int = 0) -> RecallSet:
    """The evaluation prompts whose accepted emoji the recognizer knows (first limit; 0: all)."""
    index = {name: i for i, name in enumerate(classes)}
    chosen = [p for p in phrases if any(a in index for a in p["accept"])]
    chosen = chosen[:limit] if limit else chosen
    return RecallSet([p["prompt"] for p in chosen],
                     [[index[a] for a in p["accept"] if a in index] for p in chosen],
                     [p["group"] for p in chosen])


def recall_scores(recognizer: Recognizer, images_uint8: np.ndarray, recall_set: RecallSet
                  ) -> dict:
    """top1, top5 and the same per group ({group: {top1, top5, count}})."""
    top1, top5 = hit_rates(class_logits(recognizer, images_uint8), recall_set.accepted)
    groups = np.array(recall_set.groups)
    by_group = {}
    for group in dict.fromkeys(recall_set.groups):
        members = torch.from_numpy(groups == group)
        by_group[group] = {"top1": float(top1[members].float().mean()),
                           "top5": float(top5[members].float().mean()),
                           "count": int(members.sum())}
    return {"top1": float(top1.float().mean()), "top5": float(top5.float().mean()),
            "by_group": by_group}
