"""Classifier-free guidance and the timestep helper (engine.diffusion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.api import GenerateRequest
from engine.diffusion.guidance import cfg_x0, guided_eps
from engine.diffusion.schedule import NoiseSchedule, timestep_tensor

SCHEDULE = NoiseSchedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                                      "beta_end": 0.012, "num_train_timesteps": 1000})


class FakeUnet:
    """An eps model whose unconditional half predicts 0.5 x + 1 and conditional half 2 x - 1."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in: torch.Tensor, t_in: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x_in.shape), t_in.tolist()))
        uncond, cond = x_in.chunk(2)
        return torch.cat([0.5 * uncond + 1, 2 * cond - 1])


def test_guided_eps_is_uncond_plus_scale_times_the_difference():
    eps_uncond, eps_cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    assert guided_eps(eps_uncond, eps_cond, 4.0).tolist() == [9.0, 8.0]
    assert guided_eps(eps_uncond, eps_cond, 1.0).tolist() == [3.0, 0.5]
    assert guided_eps(eps_uncond, eps_cond, 0.0).tolist() == [1.0, -2.0]


@pytest.mark.parametrize("scale", [0.0, 1.0, 4.0])
def test_cfg_x0_runs_the_model_once_on_the_doubled_batch(scale):
    unet = FakeUnet()
    x_t = torch.tensor([0.2, -0.4, 1.0, 0.0]).reshape(2, 1, 1, 2)
    x0 = cfg_x0(unet, SCHEDULE, x_t, timestep_tensor(499, 2), scale)
    assert unet.calls == [((4, 1, 1, 2), [499] * 4)]
    abar = float(SCHEDULE.alphas_cumprod[499])
    x = x_t.double().numpy()
    eps = (0.5 * x + 1) + scale * ((2 * x - 1) - (0.5 * x + 1))  # Ho & Salimans 2022, eq. 6
    expected = (x - np.sqrt(1 - abar) * eps) / np.sqrt(abar)
    np.testing.assert_allclose(x0.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert x0.dtype == torch.float32


def test_timestep_tensor_repeats_t_for_the_batch():
    t = timestep_tensor(749, 3)
    assert t.dtype == torch.long and t.tolist() == [749, 749, 749]


def test_a_sketch_is_edited_as_an_image_only_on_a_model_without_sketch_channels():
    sketch, photo = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 9, np.uint8)
    assert GenerateRequest("a", sketch=sketch).image_to_edit(sketch_channels=True) is None
    assert GenerateRequest("a", sketch=sketch).image_to_edit(sketch_channels=False) is sketch
    both = GenerateRequest("a", sketch=sketch, init_image=photo)
    assert both.image_to_edit(sketch_channels=False) is photo
    assert both.image_to_edit(sketch_channels=True) is photo
