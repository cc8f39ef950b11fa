"""Exponential moving average of the student's weights (Polyak averaging, as in EDM's EMA).

One-step DMD students wander from checkpoint to checkpoint: on the embedded model the
one-step fd of successive checkpoints 100 steps apart moved by up to 0.17, and the plain
average of three checkpoints scored 0.274 where each alone scored 0.30-0.33. The EMA is saved
with every checkpoint (accelerate's custom state), so --resume continues it exactly, and
student/ and the sample grids show the averaged weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class StudentEma:
    """shadow <- shadow + (1 - d) * (weights - shadow) after every generator update, with
    d = min(decay, (1 + n) / (10 + n)) after n updates so that short runs are not held at
    the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.decay = decay
        self.updates = 0
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.parameters(model)]

    def parameters(self, model: nn.Module) -> list[torch.Tensor]:
        by_name = dict(model.named_parameters())
        return [by_name[name] for name in self.names]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weights = [p.detach().float() for p in self.parameters(model)]
        torch._foreach_lerp_(self.shadow, weights, 1.0 - self.current_decay())

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block, its own ones after."""
        parameters = self.parameters(model)
        saved = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for parameter, average in zip(parameters, self.shadow, strict=True):
                parameter.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, own in zip(parameters, saved, strict=True):
                    parameter.copy_(own)

    # accelerate's register_for_checkpointing saves and restores these
    def state_dict(self) -> dict:
        return {"updates": self.updates,
                "shadow": {name: t.cpu() for name, t in zip(self.names, self.shadow, strict=True)}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        device = self.shadow[0].device if self.shadow else "cpu"
        self.shadow = [state["shadow"][name].to(device, torch.float32) for name in self.names]
