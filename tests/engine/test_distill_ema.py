"""StudentEma: the averaging rule, the swap in and out, and its saved state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.distill.ema import StudentEma


def test_the_average_follows_the_warmed_up_decay_and_swaps_in_and_out():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)  # frozen weights are not averaged
    start = model.weight.detach().clone()
    ema = StudentEma(model, decay=0.9)
    expected = start.clone()
    for n in range(1, 201):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
        decay = min(0.9, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model.weight.detach()
    assert ema.names == ["weight"]
    torch.testing.assert_close(ema.shadow[0], expected)
    own = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight.detach(), expected)
    assert torch.equal(model.weight.detach(), own)
    # after 200 steps of +1 the average trails the weights by decay / (1 - decay) = 9
    assert abs((own - ema.shadow[0]).mean().item() - 9.0) < 0.01


def test_saved_state_restores_the_average():
    model = nn.Linear(2, 2)
    ema = StudentEma(model, decay=0.99)
    with torch.no_grad():
        model.weight.mul_(3.0)
    ema.update(model)
    again = StudentEma(model, decay=0.99)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 1
    assert all(torch.equal(a, b) for a, b in zip(again.shadow, ema.shadow, strict=True))


def test_a_decay_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="decay"):
        StudentEma(nn.Linear(1, 1), decay=1.0)
