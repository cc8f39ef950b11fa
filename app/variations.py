"""Variations: the live inputs drawn at a few random seeds, one frame after another, into
the history strip rather than onto the canvas. No Qt: the Live tab submits and shows."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from engine.api import GenerateRequest

VARIATIONS = 4  # seeds per click of Variations
MAX_SEED = 2**31 - 1  # the app's seeds lie in 0 ... MAX_SEED


class VariationRound:
    """The requests of one click of Variations still to submit, and the ids of those sent."""

    def __init__(self, count: int = VARIATIONS,
                 draw_seed: Callable[[int, int], int] = random.randint):
        self.count = count
        self.draw_seed = draw_seed  # (low, high) -> a seed, both ends included
        self.waiting: list[GenerateRequest] = []
        self.submitted: set[int] = set()

    def start(self, base: GenerateRequest) -> None:
        """Queue `count` copies of base at random seeds, full frames without a preview."""
        self.waiting = [replace(base, seed=self.draw_seed(0, MAX_SEED), preview_steps=0)
                        for _ in range(self.count)]

    def stop(self) -> None:
        """A new input ends the round: nothing more is submitted (frames in flight still
        arrive and are kept)."""
        self.waiting.clear()

    def next_request(self) -> GenerateRequest | None:
        """The next variation to submit, or None when the round is over."""
        return self.waiting.pop(0) if self.waiting else None

    def sent(self, request_id: int | None) -> None:
        """Remember a submitted variation's id (None: the service took nothing)."""
        if request_id is not None:
            self.submitted.add(request_id)

    def take(self, request_id: int) -> bool:
        """True (once) when a result belongs to this round rather than to the canvas."""
        if request_id in self.submitted:
            self.submitted.discard(request_id)
            return True
        return False
